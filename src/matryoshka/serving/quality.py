"""The demo's quality curve out of the box: measured on the demo's own WordNet index at first start.

Each sampled synset's first lemma is the query and its own gloss the answer ("describe a word, find
it" turned around), scored as recall@10 at each dimension with the index's own exact search at that
prefix. It needs no evaluation files and takes seconds (the lemmas are a few hundred short texts);
the result is cached next to the demo index, so later starts read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matryoshka.indexes.faiss import FunnelIndex
    from matryoshka.serving.served import Served

CACHE_SUFFIX = ".quality.json"


def lemma_of(doc_id: str) -> str | None:
    """The first lemma of a WordNet demo id such as ``"bank, depository (n08420278)"``; ``None`` otherwise."""
    head, sep, tail = doc_id.rpartition(" (")
    if not sep or not tail.endswith(")") or not head:
        return None
    return head.split(", ")[0].replace("_", " ")


def lemma_recall(
    model: Served,
    index: FunnelIndex,
    model_name: str,
    dims: Sequence[int] | None = None,
    sample: int = 400,
    k: int = 10,
) -> dict[str, Any] | None:
    """``{"models": {model_name: {task: {dim: recall@k}}}}`` over ``sample`` glosses of ``index``; ``None``
    when the index's ids are not WordNet demo ids."""
    from matryoshka.embeddings.vectors import encode
    from matryoshka.retrieval import Stage
    from matryoshka.serving.served import as_model

    ids = index.ids
    rows = np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(int) if ids else np.array([], dtype=int)
    found = [(int(r), lemma_of(ids[r])) for r in dict.fromkeys(rows.tolist())]
    pairs = [(r, lemma) for r, lemma in found if lemma]
    if len(pairs) < 10:
        return None
    queries = encode(as_model(model), [lemma for _, lemma in pairs], show_progress_bar=False)
    full = index.dim
    dims = sorted({d for d in (dims or [2**p for p in range(4, 16) if 2**p < full]) if 0 < d < full} | {full})
    curve = {}
    for dim in dims:
        hits = index.search(queries, k=min(k, len(ids)), stages=[Stage(dim, "float32", k)])
        recalled = [ids[r] in {h.id for h in row} for (r, _), row in zip(pairs, hits)]
        curve[str(dim)] = round(float(np.mean(recalled)), 4)
    task = f"WordNet lemma → own gloss, recall@{k} ({len(pairs)} of {len(ids):,} glosses)"
    return {"models": {model_name: {task: curve}}}


def quality_cache_path(index_path: Path, variant: str = "") -> Path:
    """Where a curve measured on the demo index at ``index_path`` is kept: ``<index>.quality.json``, or
    ``<index>.<variant>.quality.json`` for a model searched on vectors derived from that index (the rotation)."""
    return index_path.with_name(f"{index_path.name}{'.' + variant if variant else ''}{CACHE_SUFFIX}")


def cached_lemma_recall(
    model: Served, index: FunnelIndex, model_name: str, index_path: Path, variant: str = "",
    **kwargs: Any,
) -> dict[str, Any] | None:
    """:func:`lemma_recall`, computed once per demo index (and ``variant``, see :func:`quality_cache_path`)
    and kept beside it; a cache made for another model or an older build of the index is measured again."""
    from matryoshka.files import write_atomic

    cache = quality_cache_path(index_path, variant)
    manifest = index_path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else None
    if cache.exists():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("index_stamp") == stamp and stored.get("model") == model_name:
                return stored["quality"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # unreadable or stale: measure again
    quality = lemma_recall(model, index, model_name, **kwargs)
    if quality is not None:
        payload = {"model": model_name, "index_stamp": stamp, "quality": quality}
        write_atomic(cache, json.dumps(payload, ensure_ascii=False, indent=1).encode("utf-8"))
    return quality


def merge_quality(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One ``{"models": {...}}`` from several (``None`` entries skipped); ``None`` when all are."""
    merged: dict[str, Any] = {}
    for part in parts:
        for model, tasks in quality_models(part).items():
            merged.setdefault(model, {}).update(tasks)
    return {"models": merged} if merged else None


# -- evaluation results for the demo chart ------------------------------------------------------


def load_quality(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Read evaluation results into ``{"models": {name: {task: {dim: value}}}}``.

    Each file is either that shape already or a ``matryoshka evaluate`` ``results.json``
    (``{model: {dim: value}, "task": ..., "metric": ...}``), whose task becomes ``"<task> <metric>"``.
    Several files (e.g. one per task) are merged.
    """
    merged: dict[str, dict[str, Any]] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        for model, tasks in quality_models(raw).items():
            merged.setdefault(model, {}).update(tasks)
    return {"models": merged}


def quality_models(raw: Any) -> dict[str, Any]:
    """The ``{name: {task: {dim: value}}}`` part of either results shape (see :func:`load_quality`)."""
    if not isinstance(raw, dict):
        return {}
    if isinstance(raw.get("models"), dict):
        return raw["models"]
    if "task" in raw and "metric" in raw:  # matryoshka.evaluation.Results JSON
        from matryoshka.evaluation.results import RESERVED_KEYS

        label = f"{raw['task']} {raw['metric']}"
        return {
            name: {label: by_dim}
            for name, by_dim in raw.items()
            if name not in RESERVED_KEYS and isinstance(by_dim, dict)
        }
    return {}


def clean_quality(raw: dict[str, Any] | None) -> dict[str, dict[str, dict[str, float]]] | None:
    """Keep the numeric ``{model: {task: {dim: value}}}`` entries; ``None`` when nothing usable is left."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, tasks in quality_models(raw).items():
        if not isinstance(tasks, dict):
            continue
        for task, by_dim in tasks.items():
            if not isinstance(by_dim, dict):
                continue
            points = {}
            for dim, value in by_dim.items():
                try:
                    d, v = int(dim), float(value)
                except (TypeError, ValueError):
                    continue
                if d > 0 and math.isfinite(v):
                    points[str(d)] = v
            if points:
                out.setdefault(str(model), {})[str(task)] = dict(sorted(points.items(), key=lambda kv: int(kv[0])))
    return out or None


def demo_dimensions(
    full_dim: int, quality_dims: Sequence[int] = (), configured: Sequence[int] | None = None
) -> list[int]:
    """Slider stops: configured ones, else the dimensions evaluated, else powers of two from 16; always the full size."""
    if configured:
        dims = {d for d in configured if 0 < d <= full_dim}
    elif quality_dims:
        dims = {d for d in quality_dims if 0 < d <= full_dim}
    else:
        dims = {2**p for p in range(4, 16) if 2**p < full_dim}
    return sorted(dims | {full_dim})
