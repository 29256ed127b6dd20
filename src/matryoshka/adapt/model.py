"""Adapt a sentence-transformers model from texts: encode, validate the candidates, save an ordinary model.

:func:`adapt` turns a corpus (and optional (query, relevant document) pairs) into the validated
adaptor of :func:`~matryoshka.adapt.choice.choose_adaptor`; :func:`adapted_model` appends it to the model
as a standard ``Dense`` module plus ``Normalize``, so ``SentenceTransformer(path)`` loads the result
without importing matryoshka.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.adapt.adaptor import ADAPTOR_FILE, METHODS, AdaptError, Adaptor, Method
from matryoshka.adapt.applied import adaptor_dimensions, dimension_list
from matryoshka.adapt.choice import Progress, choose_adaptor
from matryoshka.adapt.learned import LearnedConfig
from matryoshka.adapt.report import AdaptReport
from matryoshka.adapt.validation import Judgements, ValidationConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def adapted_model(model: SentenceTransformer, adaptor: Adaptor) -> SentenceTransformer:
    """A new model: ``model``'s modules, then the adaptor as a ``Dense`` module, then ``Normalize``.

    ``model`` itself is not changed. Its own output should be unit length (it is normalized before
    the map either way, so vectors equal :meth:`Adaptor.apply` of the model's vectors).
    """
    import copy

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from matryoshka.models.loading import model_dimension

    if model_dimension(model) != adaptor.dim:
        raise AdaptError(f"the adaptor maps {adaptor.dim}-d vectors, the model gives {model_dimension(model)}-d")
    modules = [copy.deepcopy(module) for module in model]
    if not isinstance(modules[-1], Normalize):
        modules.append(Normalize())
    dense = Dense(adaptor.dim, adaptor.dim, bias=False, activation_function=torch.nn.Identity(),
                  init_weight=torch.from_numpy(adaptor.weight.copy()))
    adapted = SentenceTransformer(modules=[*modules, dense, Normalize()], device=str(model.device))
    adapted.max_seq_length = model.max_seq_length
    return adapted


def save_adapted_model(
    model: SentenceTransformer, adaptor: Adaptor, output_dir: str | os.PathLike[str],
    report: AdaptReport | None = None,
) -> Path:
    """Save the adapted model (loadable by plain ``SentenceTransformer(output_dir)``) with its adaptor
    file and, when given, ``adapt-report.json``/``.md``; its safe dimensions (the report's, else those the
    adaptor's metadata holds) go into ``config.json`` as ``matryoshka_dimensions``."""
    from matryoshka.files import save_model_atomic

    adapted = adapted_model(model, adaptor)
    target = save_model_atomic(adapted, output_dir)
    adaptor.save(target / ADAPTOR_FILE)
    if report is not None:
        report.save(target)
    dims = report.matryoshka_dimensions if report is not None else adaptor_dimensions(adaptor)
    if dims is not None:
        write_matryoshka_dimensions(target, dims)
    return target


def write_matryoshka_dimensions(model_dir: str | os.PathLike[str], dims: Sequence[int]) -> Path:
    """Record ``dims`` as ``matryoshka_dimensions`` in the model's ``config.json`` (atomically; its other keys
    kept), the key inference servers such as vLLM read to accept a request's ``dimensions``."""
    from matryoshka.files import write_atomic

    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise AdaptError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdaptError(f"{path} does not hold a JSON object")
    config["matryoshka_dimensions"] = sorted(int(d) for d in dims)
    write_atomic(path, (json.dumps(config, indent=2) + "\n").encode())
    return path


def model_dimensions(model_dir: str | os.PathLike[str]) -> list[int] | None:
    """The ``matryoshka_dimensions`` a model directory's ``config.json`` states; ``None`` when it states none."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not ours to judge: the model loader reports a broken config
    dims = config.get("matryoshka_dimensions") if isinstance(config, dict) else None
    return None if dims is None else dimension_list(dims, str(path))


@dataclass
class AdaptResult:
    """What :func:`adapt` produced: the chosen adaptor, the adapted model, the report, and the costs."""

    adaptor: Adaptor
    model: SentenceTransformer
    report: AdaptReport
    encode_seconds: float
    fit_seconds: float
    corpus_texts: int
    pairs: int


def judgements_from_pairs(
    corpus: Sequence[str], pairs: Sequence[tuple[str, str]], counts: dict[str, int], warnings: list[str],
) -> tuple[list[str], list[list[int]]]:
    """Group (query, document) text pairs by query and find each document in ``corpus``.

    Returns the distinct queries and, for each, the corpus rows of its documents. Duplicate pairs and
    pairs whose document is not a corpus text are counted (in ``counts``) and reported (in ``warnings``),
    never dropped silently; empty texts are an error.
    """
    row_of: dict[str, int] = {}
    for row, text in enumerate(corpus):
        row_of.setdefault(text, row)
    relevant: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = missing = 0
    for number, pair in enumerate(pairs, start=1):
        if len(pair) < 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
            raise AdaptError(f"pair {number} is not a (query, document) pair of texts")
        query, document = pair[0], pair[1]
        if not query.strip() or not document.strip():
            raise AdaptError(f"pair {number} has an empty {'query' if not query.strip() else 'document'}")
        found = row_of.get(document, row_of.get(document.strip()))
        if found is None:
            missing += 1
            continue
        if (query, found) in seen:
            duplicates += 1
            continue
        seen.add((query, found))
        relevant.setdefault(query, []).append(found)
    counts.update({"pairs": len(pairs), "pairs_used": len(seen), "labelled_queries": len(relevant)})
    if duplicates:
        counts["duplicate_pairs"] = duplicates
        warnings.append(f"{duplicates:,} duplicate (query, document) pairs counted once")
    if missing:
        counts["pairs_not_in_corpus"] = missing
        warnings.append(f"{missing:,} of {len(pairs):,} pairs name a document that is not a corpus text; "
                        "they were left out (a pair's document must be one of the texts the map is fitted on)")
    if pairs and not relevant:
        raise AdaptError(f"none of the {len(pairs):,} pairs names a document of the corpus: "
                         "are the pairs from another corpus?")
    return list(relevant), list(relevant.values())


def adapt(
    model: SentenceTransformer,
    corpus: Sequence[str],
    method: Method = "auto",
    pairs: Sequence[tuple[str, str]] | None = None,
    config: LearnedConfig | None = None,
    corpus_vectors: np.ndarray | None = None,
    progress: Progress | None = None,
    show_progress_bar: bool = False,
    dims: Sequence[int] | None = None,
    validation: ValidationConfig | None = None,
) -> AdaptResult:
    """Fit, validate and choose an adaptor for ``model`` on ``corpus`` texts (and optional pairs).

    ``method="auto"`` (the default) saves the learned map only where held-out data says it beats the
    free rotation (see :mod:`matryoshka.adapt.choice`); ``corpus_vectors`` are the model's vectors of
    ``corpus`` if already encoded.

    Example:
        >>> result = adapt(load_model(), corpus_texts, pairs=train_pairs)   # doctest: +SKIP
        >>> result.report.chosen, result.report.reason                       # doctest: +SKIP
    """
    from matryoshka.embeddings.vectors import encode
    from matryoshka.models.loading import model_dimension

    if method not in METHODS:
        raise AdaptError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    texts = list(corpus)
    empty = [i for i, text in enumerate(texts, start=1) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise AdaptError(f"{len(empty):,} corpus texts are empty (the first is text {empty[0]:,})")
    if corpus_vectors is None and len(texts) < 2:
        raise AdaptError(f"a corpus of {len(texts)} texts cannot fit an adaptor; give at least 2")
    counts: dict[str, int] = {"corpus_texts": len(texts)}
    warnings: list[str] = []
    queries, relevant = judgements_from_pairs(texts, pairs, counts, warnings) if pairs else ([], [])
    started = time.perf_counter()
    if corpus_vectors is None:
        corpus_vectors = encode(model, texts, show_progress_bar=show_progress_bar)
    judgements = None
    if queries:
        judgements = Judgements(encode(model, queries), relevant, queries)
    encoded = time.perf_counter()
    if corpus_vectors.shape[1] != model_dimension(model):
        raise AdaptError(f"corpus vectors are {corpus_vectors.shape[1]}-d, the model gives {model_dimension(model)}-d")
    adaptor, report = choose_adaptor(corpus_vectors, judgements, method=method, dims=dims, config=config,
                                     validation=validation, progress=progress)
    report.counts.update(counts)
    report.warnings[:0] = warnings
    finished = time.perf_counter()
    report.seconds["encode"] = round(encoded - started, 3)
    adaptor.info.update({"fit_seconds": round(finished - encoded, 3), "encode_seconds": round(encoded - started, 3)})
    return AdaptResult(
        adaptor=adaptor, model=adapted_model(model, adaptor), report=report, encode_seconds=encoded - started,
        fit_seconds=finished - encoded, corpus_texts=len(texts), pairs=counts.get("pairs_used", 0),
    )

