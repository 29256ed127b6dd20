"""The demo's index: WordNet glosses encoded once per model and cached on disk, so later starts take seconds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matryoshka.errors import MatryoshkaError
from matryoshka.models.identity import model_fingerprint, model_label, short_name

if TYPE_CHECKING:
    from matryoshka.indexes.faiss.index import FunnelIndex
    from matryoshka.serving.served import Served

__all__ = ["DEMO_CACHE", "DEMO_LIMIT", "NEUTRAL_CORPUS", "WORDNET_CORPUS", "DemoCorpus", "build_demo_index",
           "demo_cache_path"]

#: Where ``matryoshka demo`` keeps the index it built, so the next start takes seconds.
DEMO_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "matryoshka" / "demo-index"
DEMO_LIMIT = 20_000


@dataclass(frozen=True)
class DemoCorpus:
    """What the demo page says about the corpus it searches: the search box's title, its placeholder and
    the example queries offered as buttons."""

    title: str
    placeholder: str
    examples: tuple[str, ...] = ()


#: The corpus of ``matryoshka demo``: WordNet glosses ("describe a word, find it").
WORDNET_CORPUS = DemoCorpus(
    "Describe a word, find it",
    "e.g. a large animal with a long trunk",
    (
        "a large animal with a long trunk",
        "a building where books are kept",
        "feeling of great happiness",
        "to move quickly on foot",
        "a tool for cutting wood",
        "the study of the stars and planets",
    ),
)
#: Any other index (``matryoshka serve --index``): nothing is known about its texts, so no examples.
NEUTRAL_CORPUS = DemoCorpus("Search the index", "Type a query")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def demo_cache_path(cache_dir: Path, model: str | None, limit: int | None) -> Path:
    """One cache directory per (model identity, corpus size): ``<cache>/<model slug>-wordnet-<limit>-<hash>``.

    The hash covers the model's full :func:`~matryoshka.models.identity.model_fingerprint` (its label and,
    for a directory, its files), so two directories of the same name, or a model retrained in place,
    never share a cache.
    """
    label = model_label(model)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", short_name(label))[:40]
    key = [model_fingerprint(label), limit, "wordnet30-glosses-v1"]
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
    return cache_dir / f"{slug}-wordnet-{limit or 'all'}-{digest}"


def build_demo_index(
    model: Served,
    model_name: str,
    limit: int | None = DEMO_LIMIT,
    cache_dir: Path = DEMO_CACHE,
    rebuild: bool = False,
    source: str | Path | None = None,
    log: Callable[[str], None] = _stderr,
    model_source: str | None = None,
) -> FunnelIndex:
    """Load the cached demo index, or encode ``limit`` WordNet glosses with ``model``, index and cache them.

    ``model_name`` is what the index records and the server serves it as; ``model_source`` (default:
    ``model_name``) is what ``model`` was loaded from, whose identity keys the cache.
    """
    from matryoshka.data.wordnet import find_source, load_glosses
    from matryoshka.embeddings.vectors import encode
    from matryoshka.indexes.faiss.index import FunnelIndex
    from matryoshka.retrieval.stages import PRESETS
    from matryoshka.serving.served import as_model

    path = demo_cache_path(cache_dir, model_source or model_name, limit)
    if path.exists() and not rebuild:
        try:
            index = FunnelIndex.load(path)
            log(f"loaded the demo index from {path} ({len(index)} glosses)")
            return index
        except (MatryoshkaError, OSError) as exc:  # a damaged cache (IndexCorruptError...) is rebuilt, not fatal
            log(f"cached index at {path} is unusable ({exc}); rebuilding")
    where = Path(source) if source is not None else find_source()
    ids, texts = load_glosses(limit, where)
    log(f"encoding {len(texts)} WordNet glosses from {where} (cached afterwards in {path})")
    started = time.perf_counter()
    vectors = encode(as_model(model), texts, show_progress_bar=True)  # any model: an upstream API's too
    index = FunnelIndex.from_vectors(vectors, ids, texts, model_name=model_name, stages=PRESETS["funnel"])
    log(f"indexed {len(index)} glosses in {time.perf_counter() - started:.0f} s")
    index.save(path)
    return index
