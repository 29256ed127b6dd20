"""Exact inner-product top-k at the machine's limits: blocked BLAS products, threshold-pruned selection.

This is the exact stage of every :class:`~matryoshka.retrieval.index.FunnelIndex` scan that reads
float vectors (the full vectors, or a float32 prefix view). It reads the base once per batch of
queries, a block of rows at a time:

- a few queries (fewer than :data:`FAISS_BELOW` of them, over float32 rows) go to ``faiss.knn``,
  whose SIMD scan streams the rows at memory bandwidth (it uses no BLAS below 20 queries);
- larger batches are a numpy matrix product per block (blocks small enough to stay in cache), which
  runs near the BLAS peak.

Top-k selection keeps, per query, the ``k`` best so far and the ``k``-th score as a threshold; a
block only hands over the scores above it (one vectorised comparison), so after the first blocks
selection costs a few candidates per block instead of a partition of every score.

Why not ``faiss.knn`` for every batch: faiss-cpu's wheel links its own, older OpenBLAS. On this project's 2-core
machine its flat search reached 5.7–7.3 GFLOP/s at batch 32 where numpy's matrix product on the
same data reached ~44 (one thread; numpy's OpenBLAS is newer). At batch 1 both are bound by memory
bandwidth. ``benchmarks/funnel.py`` measures both side by side.

Example:
    >>> scores, rows = top_k_inner_product(queries, vectors, k=10)
    >>> rows[0][:3]
    array([ 17, 402,   9])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss
import numpy as np

#: Rows per block when a batch of several queries is scored (a 2048 x 384 float32 block is 3 MB and
#: its scores stay in cache; on the 2-core development machine, 1 thread, batch 32, blocks of 1-2k rows
#: with a reused output buffer ran OpenBLAS's product fastest, ~34 GFLOP/s against ~28 at 16k rows).
BLOCK_ROWS_BATCH = 2_048
#: Rows per block for a single query (a bandwidth-bound scan: larger blocks cut per-block overhead).
BLOCK_ROWS_SINGLE = 32_768
#: Batches smaller than this over float32 rows use FAISS's scan (FAISS switches to BLAS at 20 queries).
FAISS_BELOW = 20
_NO_ROW = np.iinfo(np.int64).max  # sorts after every real row in the tie-break


def top_k_inner_product(
    queries: np.ndarray, base: np.ndarray, k: int, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` with the largest inner product with each query, exactly.

    Args:
        queries: ``(batch, dim)`` float32.
        base: ``(count, dim)`` float32 or float16 (a memory map works; float16 blocks are widened).
        k: hits per query; more than ``count`` returns ``count``.
        block_rows: rows per block (default: :data:`BLOCK_ROWS_SINGLE` for one query, else
            :data:`BLOCK_ROWS_BATCH`).

    Returns:
        ``(scores, rows)``, both ``(batch, min(k, count))``, sorted by score descending and then by
        row ascending (ties go to the earlier row), like a full sort would.

    Raises:
        ValueError: ``k`` is not positive, or the dims differ.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise ValueError(f"queries {queries.shape} and base {base.shape} must be 2-d with the same dim")
    batch, count = len(queries), len(base)
    k = int(min(k, count))
    if batch == 0 or k == 0:
        return np.zeros((batch, k), np.float32), np.zeros((batch, k), np.int64)
    if batch < FAISS_BELOW and block_rows is None and base.dtype == np.float32 and base.flags.c_contiguous:
        # one extra hit shows whether a tie straddles the cut (FAISS keeps an arbitrary one of those)
        with serial_when_small(batch * count):
            scores, rows = faiss.knn(queries, base, min(k + 1, count), faiss.METRIC_INNER_PRODUCT)
        order = np.lexsort((rows, -scores), axis=1)  # ties by row, as the blocked path orders them
        scores, rows = np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
        top_scores, top_rows = scores[:, :k].copy(), rows[:, :k].copy()
        if k < count:
            tied = np.flatnonzero(scores[:, k] == scores[:, k - 1])
            if len(tied):
                top_scores[tied], top_rows[tied] = _blocked(queries[tied], base, k, BLOCK_ROWS_BATCH)
        return top_scores, top_rows
    return _blocked(queries, base, k, block_rows or (BLOCK_ROWS_SINGLE if batch == 1 else BLOCK_ROWS_BATCH))


def _blocked(queries: np.ndarray, base: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked products of ``queries`` against ``base`` with the running top-``k`` selection."""
    selection = _Selection(len(queries), k)
    q_t = np.ascontiguousarray(queries.T)
    out = np.empty((min(block, len(base)), len(queries)), dtype=np.float32)  # reused: no page faults per block
    for start in range(0, len(base), block):
        rows = base[start : start + block]
        if rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        scores = out[: len(rows)]
        np.matmul(rows, q_t, out=scores)  # (rows, batch)
        selection.offer(scores, start)
    return selection.result()


#: Below this many (query, vector) pairs a FAISS index search runs on one thread. FAISS parallelises
#: binary and scalar-quantizer scans with OpenMP whatever their size; on a small index the threads'
#: start-up and hand-off cost far more than the scan (on a busy 2-core machine a 1-query, 500-vector
#: binary scan took ~24 ms with 2 threads against ~0.03 ms with one).
SERIAL_SEARCH_PAIRS = 1 << 20


@contextlib.contextmanager
def serial_when_small(pairs: int) -> Iterator[None]:
    """Run the FAISS call inside on one OpenMP thread when the work is small (the setting is per thread)."""
    if pairs >= SERIAL_SEARCH_PAIRS:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _Selection:
    """The running top-``k`` per query, fed one block of scores at a time (in row order)."""

    def __init__(self, batch: int, k: int) -> None:
        self.batch, self.k = batch, k
        self.scores = np.full((batch, k), -np.inf, dtype=np.float32)
        self.rows = np.full((batch, k), _NO_ROW, dtype=np.int64)
        self.threshold = np.full(batch, -np.inf, dtype=np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def offer(self, block_scores: np.ndarray, start: int) -> None:
        """Take the candidates of one ``(rows, batch)`` block whose first row is ``start``."""
        unset = bool(np.isneginf(self.threshold).any())
        if unset and len(block_scores) > self.k:
            # no threshold yet: cut the block to its own top k per query first
            cut = len(block_scores) - self.k
            kth = np.partition(block_scores, cut, axis=0)[cut]
            mask = block_scores >= np.maximum(kth, self.threshold)[None, :]
        else:
            mask = block_scores > self.threshold[None, :]
        local, query = np.nonzero(mask)
        if len(local):
            self._pending.append((query, block_scores[local, query], local + start))
            self._pending_size += len(local)
        if unset or self._pending_size > 4 * self.batch * self.k:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending candidates into the running top k and raise the thresholds."""
        if not self._pending:
            return
        query = np.concatenate([np.repeat(np.arange(self.batch), self.k), *(p[0] for p in self._pending)])
        scores = np.concatenate([self.scores.ravel(), *(p[1] for p in self._pending)])
        rows = np.concatenate([self.rows.ravel(), *(p[2] for p in self._pending)])
        self._pending, self._pending_size = [], 0
        order = np.lexsort((rows, -scores, query))  # by query, then score descending, then row
        starts = np.concatenate([[0], np.cumsum(np.bincount(query, minlength=self.batch))[:-1]])
        picked = order[starts[:, None] + np.arange(self.k)]
        self.scores, self.rows = scores[picked], rows[picked]
        self.threshold = self.scores[:, -1].copy()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.scores, self.rows
