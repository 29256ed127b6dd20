"""Retrieval quality per Matryoshka dimension: nDCG, recall and MRR on a BEIR-style data set.

The corpus and queries are encoded once at full size; each dimension is then a view of those
vectors (first ``dim`` values, re-normalized), searched exactly with FAISS and scored with ``ranx``.

Example:
    >>> scores = evaluate_retrieval(load_model(), load_beir("scifact"), dims=[384, 64])
    >>> sorted(scores)
    ['mrr@10', 'mrr@100', 'ndcg@10', 'ndcg@100', 'recall@10', 'recall@100']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.data.beir import BeirDataset
from matryoshka.embeddings.vectors import check_dim, encode, truncate
from matryoshka.errors import InputError

#: Metrics computed at every cut-off in ``k_values``, as ``ranx`` names them.
METRICS = ("ndcg", "recall", "mrr")

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel


def evaluate_retrieval(
    model: AnyModel,
    dataset: BeirDataset,
    dims: Sequence[int],
    k_values: Sequence[int] = (10, 100),
    batch_size: int = 64,
) -> dict[str, dict[int, float]]:
    """Score exact retrieval at each dimension in ``dims``.

    Args:
        model: the embedding model; corpus and queries are encoded once at its full dimension.
        dataset: corpus, queries and qrels, e.g. from :func:`matryoshka.data.beir.load_beir`.
        dims: dimensions to evaluate, each in ``1..model dimension``.
        k_values: cut-offs; every metric in :data:`METRICS` is computed at each of them.
        batch_size: texts per forward pass.

    Returns:
        ``{"ndcg@10": {384: ..., 64: ...}, "recall@10": {...}, "mrr@10": {...}, "ndcg@100": ...}``.
    """
    if not dims:
        raise InputError("dims must name at least one dimension")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise InputError(f"k_values must be positive cut-offs, got {list(k_values)}")
    doc_ids, docs, query_ids, queries = encode_dataset(model, dataset, batch_size=batch_size)
    return score_vectors(dataset.qrels, doc_ids, docs, query_ids, queries, dims, k_values)


def score_vectors(
    qrels: Mapping[str, Mapping[str, int]],
    doc_ids: Sequence[str],
    docs: np.ndarray,
    query_ids: Sequence[str],
    queries: np.ndarray,
    dims: Sequence[int],
    k_values: Sequence[int] = (10, 100),
) -> dict[str, dict[int, float]]:
    """Score exact search over full-size vectors already encoded, at each dimension in ``dims``.

    This is :func:`evaluate_retrieval` without the encoding, so that several views of one encoding
    (prefixes, adaptors applied to the same base vectors) are scored without a model call.
    """
    per_query = score_vectors_per_query(qrels, doc_ids, docs, query_ids, queries, dims, k_values)
    return {metric: {dim: float(np.mean(values)) for dim, values in by_dim.items()}
            for metric, by_dim in per_query.items()}


def score_vectors_per_query(
    qrels: Mapping[str, Mapping[str, int]],
    doc_ids: Sequence[str],
    docs: np.ndarray,
    query_ids: Sequence[str],
    queries: np.ndarray,
    dims: Sequence[int],
    k_values: Sequence[int] = (10, 100),
) -> dict[str, dict[int, np.ndarray]]:
    """:func:`score_vectors` before the mean: one score per judged query, in ``sorted(judged ids)`` order,
    so that two views of the same queries can be compared query by query."""
    import faiss

    if not dims:
        raise InputError("dims must name at least one dimension")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise InputError(f"k_values must be positive cut-offs, got {list(k_values)}")
    checked = [check_dim(d, docs.shape[1]) for d in dims]
    depth = min(max(int(k) for k in k_values), len(doc_ids))
    metrics = [f"{name}@{int(k)}" for k in k_values for name in METRICS]
    results: dict[str, dict[int, np.ndarray]] = {metric: {} for metric in metrics}
    for dim in checked:
        index = faiss.IndexFlatIP(dim)
        index.add(truncate(docs, dim))
        scores, rows = index.search(truncate(queries, dim), depth)
        run = run_from_rows(query_ids, doc_ids, scores, rows)
        for metric, values in ranx_per_query(qrels, run, metrics).items():
            results[metric][dim] = values
    return results


def encode_dataset(
    model: AnyModel, dataset: BeirDataset, batch_size: int = 64, show_progress_bar: bool | None = None
) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Encode corpus and queries at full size: ``(doc_ids, doc_vectors, query_ids, query_vectors)``."""
    if not dataset.corpus:
        raise InputError(f"data set {dataset.name!r} has an empty corpus")
    if not dataset.queries:
        raise InputError(f"data set {dataset.name!r} has no judged queries")
    doc_ids = list(dataset.corpus)
    query_ids = list(dataset.queries)
    docs = encode(
        model, [dataset.corpus[i] for i in doc_ids], batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    queries = encode(model, [dataset.queries[i] for i in query_ids], batch_size=batch_size, show_progress_bar=False)
    return doc_ids, docs, query_ids, queries


def run_from_rows(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray
) -> dict[str, dict[str, float]]:
    """A ranx-style run ``{query id: {doc id: score}}`` from FAISS result arrays (``-1`` rows are skipped)."""
    return {
        qid: {doc_ids[r]: float(s) for s, r in zip(score_row, row) if r >= 0}
        for qid, score_row, row in zip(query_ids, scores, rows)
    }


def ranx_scores(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], metrics: Sequence[str]
) -> dict[str, float]:
    """Mean of each ``ranx`` metric over the judged queries (a query missing from ``run`` scores 0)."""
    return {metric: float(np.mean(values)) for metric, values in ranx_per_query(qrels, run, metrics).items()}


def ranx_per_query(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], metrics: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each ``ranx`` metric per judged query, in ``sorted(judged ids)`` order (missing from ``run``: 0)."""
    from ranx import Qrels, Run, evaluate

    judged = {q: dict(docs) for q, docs in sorted(qrels.items()) if docs}
    ranked = {q: dict(run[q]) for q in judged if run.get(q)}
    if not ranked:
        return {metric: np.zeros(len(judged)) for metric in metrics}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba type-safety chatter from ranx internals
        values = evaluate(Qrels(judged), Run(ranked), list(metrics), return_mean=False, threads=1,
                          make_comparable=True)
    if not isinstance(values, dict):
        values = {metrics[0]: values}
    return {metric: np.asarray(values[metric], dtype=np.float64) for metric in metrics}
