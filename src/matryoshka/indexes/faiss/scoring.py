"""How a funnel scores: the first stage's scan, the re-ranks of its shortlist, and top-k selection.

:func:`run_funnel` runs a resolved plan over a :class:`Snapshot` (the stored vectors and the views the
plan reads, taken under the index's lock): the first stage scans every vector through its view, each
later stage re-scores the previous one's candidates (gathered float prefixes, int8 codes read in
place, or a graph stage's expanded neighbourhood). Ties go to the earlier row everywhere.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, NamedTuple

import faiss
import numpy as np

from matryoshka.indexes.faiss.exact import serial_when_small, top_k_inner_product
from matryoshka.indexes.faiss.neighbours import NeighbourGraph
from matryoshka.indexes.faiss.views import build_view
from matryoshka.retrieval.stages import APPROXIMATE, Stage
from matryoshka.retrieval.types import Hit, StageTiming, stage_timing

_RERANK_BYTES = 32 << 20  # gathered candidate vectors per re-rank chunk
#: :func:`_int8_decoding` of each int8 view in use (dropped with the view).
_INT8_DECODINGS: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


class Snapshot(NamedTuple):
    """What one search reads: the stored vectors, ids and texts, and the views of its plan."""

    vectors: np.ndarray
    ids: list[str]
    texts: list[str | None] | None
    views: dict[Any, Any]


def run_funnel(snap: Snapshot, query: np.ndarray, plan: list[Stage]) -> tuple[list[list[Hit]], list[StageTiming]]:
    """The best ``plan[-1].keep`` hits of a resolved ``plan`` for each of the unit float32 ``query`` rows,
    and one timing per stage (``seconds`` of the whole batch)."""
    if len(snap.ids) == 0 or len(query) == 0:
        return [[] for _ in range(len(query))], [stage_timing(s, 0, 0.0) for s in plan]
    timings = []
    start = time.perf_counter()
    scores, rows = scan(snap, query, plan[0], ordered=len(plan) == 1)
    timings.append(stage_timing(plan[0], len(snap.ids), time.perf_counter() - start))
    for position, stage in enumerate(plan[1:], start=2):
        candidates = rows.shape[1]
        start = time.perf_counter()
        scores, rows = rerank(snap, query, rows, stage, ordered=position == len(plan))
        timings.append(stage_timing(stage, candidates, time.perf_counter() - start))
    ids, texts = snap.ids, snap.texts
    hits = [
        [Hit(ids[r], s, texts[r] if texts is not None else None) for s, r in zip(srow, rrow)]
        for srow, rrow in zip(scores.tolist(), rows.tolist())
    ]
    return hits, timings


def scan(snap: Snapshot, query: np.ndarray, stage: Stage, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top ``stage.keep`` of every vector; sorted (score, then insertion order) only when ``ordered``."""
    dim, keep = stage.dim, stage.keep
    prefix = unit_prefix(query, dim)
    key = (stage.codec, dim)
    if stage.codec == "float32":
        # a prefix always has its view; the full size has one when it fits the view budget
        scores, rows = top_k_inner_product(prefix, snap.views.get(key, snap.vectors), keep)
    elif stage.codec in APPROXIMATE:
        scores, rows = snap.views[key].search(prefix, keep, stage.probe)
        lost = np.flatnonzero(rows[:, -1] < 0)  # the index found fewer than keep: scan those queries
        if len(lost):
            prefixes = build_view(("float32", dim), snap.vectors)
            scores[lost], rows[lost] = top_k_inner_product(prefix[lost], prefixes, keep)
    elif stage.codec == "binary":
        with serial_when_small(len(query) * len(snap.ids)):
            distances, rows = snap.views[key].search(np.packbits(prefix > 0, axis=1), keep)
        scores = np.cos(np.pi * distances / dim).astype(np.float32)
    else:
        with serial_when_small(len(query) * len(snap.ids)):
            scores, rows = snap.views[key].search(prefix, keep)
    return sort_hits(scores, rows) if ordered else (scores, rows)


def rerank(
    snap: Snapshot, query: np.ndarray, rows: np.ndarray, stage: Stage, ordered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``stage.keep`` of each query's candidate ``rows`` by ``stage``'s view; sorted only when
    ``ordered`` (a later stage re-scores them anyway)."""
    if stage.codec == "graph":
        return expand(snap, query, rows, stage, ordered)
    dim, keep = stage.dim, min(stage.keep, rows.shape[1])
    prefix = unit_prefix(query, dim)
    chunk = max(1, _RERANK_BYTES // max(1, rows.shape[1] * dim * 4))
    out_scores = np.empty((len(rows), keep), dtype=np.float32)
    out_rows = np.empty((len(rows), keep), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        cand = rows[start : start + chunk]
        queries = prefix[start : start + len(cand)]
        if stage.codec == "int8":  # scored on the stored codes: a quarter of the float prefix's reads
            scores = _int8_scores(snap.views[("int8", dim)], cand, queries)
        else:
            scores = _gathered_scores(snap.vectors, cand, queries, stage.codec)
        out_scores[start : start + len(cand)], out_rows[start : start + len(cand)] = top(scores, cand, keep, ordered)
    return out_scores, out_rows


def expand(
    snap: Snapshot, query: np.ndarray, rows: np.ndarray, stage: Stage, ordered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``stage.keep`` of each query's candidate ``rows`` and their graph neighbours, by the
    full vectors (a ``graph`` stage)."""
    dim = snap.vectors.shape[1]
    graph: NeighbourGraph = snap.views[("graph", dim)]
    keep = min(stage.keep, rows.shape[1])
    out_scores = np.empty((len(rows), keep), dtype=np.float32)
    out_rows = np.empty((len(rows), keep), dtype=np.int64)
    for i, (vector, candidates) in enumerate(zip(query, rows)):
        wide = np.unique(np.concatenate([candidates, graph.neighbours(candidates).ravel()]))
        if len(wide) and wide[0] < 0:  # -1 pads rows with fewer neighbours (sorted first)
            wide = wide[1:]
        scores = _gather_prefix(snap.vectors, wide, dim) @ vector
        top_scores, top_rows = top(scores[None], wide[None], keep, ordered)
        out_scores[i], out_rows[i] = top_scores[0], top_rows[0]
    return out_scores, out_rows


def _gathered_scores(vectors: np.ndarray, rows: np.ndarray, prefix: np.ndarray, codec: str) -> np.ndarray:
    """Scores of ``prefix`` (one row per query) against the stored vectors' prefixes of ``rows`` (its
    candidates) under ``codec`` (``float32``, ``float16`` or ``binary``)."""
    (n_q, n_c), dim = rows.shape, prefix.shape[1]
    gathered = _gather_prefix(vectors, rows.ravel(), dim)
    if codec == "float16":
        gathered = gathered.astype(np.float16).astype(np.float32)
    if codec == "binary":
        codes = np.packbits(gathered > 0, axis=1).reshape(n_q, n_c, -1)
        q_codes = np.packbits(prefix > 0, axis=1)
        distances = np.bitwise_count(codes ^ q_codes[:, None, :]).sum(axis=2, dtype=np.uint64)
        return np.cos(np.pi * distances / dim).astype(np.float32)
    if n_q == 1:  # a matrix-vector product; numpy's stacked matmul does not reach BLAS for it
        return (gathered @ prefix[0])[None]
    return np.matmul(gathered.reshape(n_q, n_c, dim), prefix[:, :, None])[..., 0]


def _int8_scores(view: Any, rows: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Inner products of ``prefix`` (one row per query) with the decoded int8 codes of ``rows`` (its candidates).

    FAISS's 8-bit scalar quantizer decodes code ``c`` of dimension ``i`` as ``vmin[i] + (c + 0.5) / 255 *
    vdiff[i]``, so a score is one product with the gathered codes plus a per-query constant; the codes
    are read in place, not decoded into a float copy (``sa_decode`` of every candidate cost more than
    the scan it saves).
    """
    codes, scale, shift = _int8_decoding(view)
    weights = prefix * scale
    offsets = prefix @ shift
    scores = np.empty(rows.shape, dtype=np.float32)
    for i, (candidates, weight) in enumerate(zip(rows, weights)):  # one matrix-vector product per query
        np.matmul(np.take(codes, candidates, axis=0).astype(np.float32), weight, out=scores[i])
    return scores + offsets[:, None]


def _int8_decoding(view: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An int8 view's codes (a read-only array over FAISS's own buffer) and its decoding ``scale`` and
    ``shift`` per dimension (value = shift + code · scale), read from FAISS once per view.

    Safe to keep because a view takes no rows once built (appends go to a copy, see
    :func:`~matryoshka.indexes.faiss.views.extend_view`), so the buffer never moves; reading them on
    every re-rank cost 0.03-0.05 ms a query. FAISS objects refuse new attributes, so they are kept in a
    weak map instead.
    """
    cached = _INT8_DECODINGS.get(view)
    if cached is None:
        dim = view.d
        trained = faiss.vector_to_array(view.sq.trained)
        vmin, vdiff = trained[:dim], trained[dim : 2 * dim]
        codes = faiss.rev_swig_ptr(view.codes.data(), view.ntotal * view.code_size).reshape(view.ntotal, view.code_size)
        codes.flags.writeable = False
        cached = (codes, (vdiff / 255.0).astype(np.float32), (vmin + 0.5 * vdiff / 255.0).astype(np.float32))
        _INT8_DECODINGS[view] = cached
    return cached


def unit_prefix(query: np.ndarray, dim: int) -> np.ndarray:
    """Unit-length ``dim``-prefixes of a search's ``query`` rows, which the search has already checked and
    normalized at full size (so the full size is the rows themselves); half the time of
    :func:`~matryoshka.indexes.faiss.prefixes.finite_unit_rows` for one query, which checks every value again."""
    if dim == query.shape[1]:
        return query
    return _scaled_to_unit(query[:, :dim].astype(np.float32))


def _gather_prefix(vectors: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
    """Unit-length ``dim``-prefixes of the stored rows ``rows`` (stored full rows are already unit)."""
    if dim == vectors.shape[1]:
        return np.take(vectors, rows, axis=0).astype(np.float32, copy=False)
    return _scaled_to_unit(vectors[rows, :dim].astype(np.float32, copy=False))  # the fancy index made a copy


def _scaled_to_unit(rows: np.ndarray) -> np.ndarray:
    """``rows`` (a float32 copy of finite values) divided in place by their lengths; zero rows stay zero.

    Every re-rank runs it on a copy it has just gathered, so it divides in place instead of making
    another copy as :func:`matryoshka.embeddings.unit_rows` does.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    rows /= np.where(norms == 0, 1.0, norms)[:, None]
    return rows


def top(scores: np.ndarray, rows: np.ndarray, keep: int, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best per query by score, ties at the cut-off to the earlier row; sorted (score, then
    row) only when ``ordered``. A partition of the scores' values, which is about twice as fast as an
    indirect ``argpartition``, then the rows above the cut-off value and as many tied ones as fit."""
    count = scores.shape[1]
    if keep < count:
        cutoffs = np.partition(scores, count - keep, axis=1)[:, count - keep]
        top_scores = np.empty((len(scores), keep), dtype=scores.dtype)
        top_rows = np.empty((len(scores), keep), dtype=rows.dtype)
        for i, (row_scores, cutoff) in enumerate(zip(scores, cutoffs)):
            above = np.flatnonzero(row_scores > cutoff)
            tied = np.flatnonzero(row_scores == cutoff)
            if len(above) + len(tied) > keep:
                tied = tied[np.argsort(rows[i][tied], kind="stable")[: keep - len(above)]]
            picked = np.concatenate([above, tied])
            top_scores[i], top_rows[i] = row_scores[picked], rows[i][picked]
        scores, rows = top_scores, top_rows
    return sort_hits(scores, rows) if ordered else (scores, rows)


def sort_hits(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score, descending, then by insertion order."""
    order = np.lexsort((rows, -scores), axis=1)
    queries = np.arange(len(scores))[:, None]  # np.take_along_axis took 7 us for ten hits, this 2
    return scores[queries, order], rows[queries, order]
