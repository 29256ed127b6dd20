"""Exact inner-product top-k at the machine's limits: blocked BLAS products, threshold-pruned selection.

This is the exact stage of every :class:`~matryoshka.indexes.faiss.index.FunnelIndex` scan that reads
float vectors (the full vectors, or a float32 prefix view). It reads the base once per batch of
queries, a block of rows at a time, from one of two layouts:

- :class:`ColumnBlocks`, the vectors stored dimension-major (what the index's float32 views are):
  ``queries @ block`` per block, for any batch size. BLAS takes that operand without packing it; on
  the 2-core development machine (1 thread, 1M x 384) a batch of 32 ran at ~44-54 GFLOP/s, against a
  4096² product's 74-77, and a single query as fast as FAISS's scan.
- ``(count, dim)`` rows as stored (a memory map works): fewer than :data:`FAISS_BELOW` queries go to
  ``faiss.knn``, whose SIMD scan streams the rows at memory bandwidth (it uses no BLAS below 20
  queries); a larger batch is ``rows @ queries.T`` per block (~31-38 GFLOP/s on the same machine).

Top-k selection keeps, per query, the ``k`` best so far and the ``k``-th score as a threshold; a
block hands over only the queries whose block maximum beats it, and of those only the scores above
it, so after the first blocks selection costs a few candidates per block instead of a partition of
every score.

Threads: a scan whose BLAS calls are small (:data:`SERIAL_BLAS_MACS`; every single-query scan of a
column-block index) runs numpy's BLAS on one thread (:func:`serial_blas_when_small`), as FAISS's small
scans run on one OpenMP thread (:func:`serial_when_small`); big batches keep every thread.

Why not ``faiss.knn`` for every batch: faiss-cpu's wheel links its own, older OpenBLAS. On this project's 2-core
machine its flat search reached 5.7–7.3 GFLOP/s at batch 32 where numpy's matrix product on the
same data reached ~44 (one thread; numpy's OpenBLAS is newer). ``benchmarks/funnel.py`` measures
faiss.knn and both layouts side by side.

Example:
    >>> scores, rows = top_k_inner_product(queries, vectors, k=10)
    >>> rows[0][:3]
    array([ 17, 402,   9])
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from matryoshka.errors import DimensionError, InputError

#: Rows per block when a batch of several queries is scored, and per :class:`ColumnBlocks` block (a
#: 2048 x 384 float32 block is 3 MB and its scores stay in cache; on the 2-core development machine,
#: 1 thread, batch 32, blocks of 1-4k rows ran OpenBLAS's product fastest, in either layout).
BLOCK_ROWS_BATCH = 2_048
#: Rows per block for a single query (a bandwidth-bound scan: larger blocks cut per-block overhead).
BLOCK_ROWS_SINGLE = 32_768
#: Batches smaller than this over float32 rows use FAISS's scan (FAISS switches to BLAS at 20 queries).
FAISS_BELOW = 20
_NO_ROW = np.iinfo(np.int64).max  # sorts after every real row in the tie-break


def top_k_inner_product(
    queries: np.ndarray, base: np.ndarray | ColumnBlocks, k: int, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` with the largest inner product with each query, exactly.

    Args:
        queries: ``(batch, dim)`` float32.
        base: ``(count, dim)`` float32 or float16 (a memory map works; float16 blocks are widened), or
            the same vectors as :class:`ColumnBlocks` (faster for batches).
        k: hits per query; more than ``count`` returns ``count``.
        block_rows: rows per block over stored rows (default: :data:`BLOCK_ROWS_SINGLE` for one
            query, else :data:`BLOCK_ROWS_BATCH`); :class:`ColumnBlocks` keep their own blocks.

    Returns:
        ``(scores, rows)``, both ``(batch, min(k, count))``, sorted by score descending and then by
        row ascending (ties go to the earlier row), like a full sort would.

    Raises:
        InputError: ``k`` is not positive, or the dims differ.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    shape = (len(base), base.dim) if isinstance(base, ColumnBlocks) else base.shape
    if queries.ndim != 2 or len(shape) != 2 or queries.shape[1] != shape[1]:
        raise DimensionError(f"queries {queries.shape} and base {shape} must be 2-d with the same dim")
    batch, count = len(queries), len(base)
    k = int(min(k, count))
    if batch == 0 or k == 0:
        return np.zeros((batch, k), np.float32), np.zeros((batch, k), np.int64)
    if isinstance(base, ColumnBlocks):
        with serial_blas_when_small(batch * min(BLOCK_ROWS_BATCH, count) * base.dim):
            return base.top_k(queries, k)
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
                with serial_blas_when_small(len(tied) * min(BLOCK_ROWS_BATCH, count) * shape[1]):
                    top_scores[tied], top_rows[tied] = _blocked(queries[tied], base, k, BLOCK_ROWS_BATCH)
        return top_scores, top_rows
    block = block_rows or (BLOCK_ROWS_SINGLE if batch == 1 else BLOCK_ROWS_BATCH)
    with serial_blas_when_small(batch * min(block, count) * shape[1]):
        return _blocked(queries, base, k, block)


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
        selection.offer(scores.T, start)
    return selection.result()


class ColumnBlocks:
    """Vectors stored dimension-major, one ``(dim, rows)`` block per :data:`BLOCK_ROWS_BATCH` rows.

    The same numbers as a ``(count, dim)`` array, laid out for batched scans: ``queries @ block`` reads
    each block as BLAS's favoured operand (no packing of the large matrix), which on the development
    machine ran a batch of 32 at ~46 GFLOP/s against ~35 for the row-major product (1 thread, 1M x 384,
    ``benchmarks/funnel.py``). The index's float32 prefix views are stored this way; for the full
    vectors it is a second copy, so the index makes one only within its view budget.

    Immutable: :meth:`extended` returns a new one that shares every full block with this one.

    Example:
        >>> columns = ColumnBlocks.from_rows(vectors)
        >>> scores, rows = top_k_inner_product(queries, columns, k=10)
    """

    def __init__(self, blocks: list[np.ndarray], dim: int) -> None:
        self.blocks, self.dim = blocks, dim
        self.count = sum(b.shape[1] for b in blocks)

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> ColumnBlocks:
        """Copy ``(count, dim)`` rows (float32 or float16; a memory map works) into column blocks."""
        step = BLOCK_ROWS_BATCH
        blocks = [np.ascontiguousarray(rows[s : s + step].T, dtype=np.float32) for s in range(0, len(rows), step)]
        return cls(blocks, int(rows.shape[1]))

    def extended(self, rows: np.ndarray) -> ColumnBlocks:
        """These vectors followed by ``rows``; only the last, partly filled block is copied again."""
        if not len(rows):
            return self
        kept = self.blocks
        if kept and kept[-1].shape[1] < BLOCK_ROWS_BATCH:
            kept, rows = kept[:-1], np.concatenate([kept[-1].T, np.asarray(rows, dtype=np.float32)])
        return ColumnBlocks(kept + ColumnBlocks.from_rows(rows).blocks, self.dim)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(int(b.nbytes) for b in self.blocks)

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` per query (see :func:`top_k_inner_product`)."""
        selection = _Selection(len(queries), k)
        out = np.empty((len(queries), BLOCK_ROWS_BATCH), dtype=np.float32)
        start = 0
        for block in self.blocks:
            scores = out[:, : block.shape[1]]
            np.matmul(queries, block, out=scores)  # (batch, rows)
            selection.offer(scores, start)
            start += block.shape[1]
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


#: Below this many multiply-adds per BLAS call (queries x rows per block x dims), a scan runs numpy's
#: BLAS on one thread. A threaded call hands half its work to the pool's other thread and waits for
#: it; on a busy host that wait is a scheduler time slice, not microseconds. On the 2-core development
#: machine with both cores busy, one query over 20,000 x 384 column blocks (ten calls of 0.8M) took a
#: median 13-160 ms on 2 BLAS threads against 1.7 ms on one; a batch of 32 at 384 dims (25M a call) is
#: where a second core pays on a quiet machine (``benchmarks/server_exact.py``).
SERIAL_BLAS_MACS = 1 << 23


def _numpy_blas() -> ThreadpoolController:
    """The BLAS numpy's products run on: the library inside numpy's own install (a wheel's
    ``numpy.libs``), else every loaded BLAS that does not thread through OpenMP. An OpenMP BLAS (the
    one faiss-cpu bundles) is left alone: setting its threads sets the calling thread's OpenMP threads,
    which FAISS reads too, and its pool is per thread anyway."""
    found = ThreadpoolController().select(user_api="blas")
    root = Path(np.__file__).resolve().parent
    homes = (root, root.parent / "numpy.libs", root / ".libs")
    own = [c.filepath for c in found.lib_controllers if any(Path(c.filepath).resolve().is_relative_to(h) for h in homes)]
    others = [c.filepath for c in found.lib_controllers if getattr(c, "threading_layer", None) != "openmp"]
    return found.select(filepath=own or others)


#: Found at import (numpy has loaded its BLAS by then; ~3 ms), so no scan's timing includes it.
_NUMPY_BLAS = _numpy_blas()
_BLAS_GATE = threading.RLock()


@contextlib.contextmanager
def serial_blas_when_small(macs: int) -> Iterator[None]:
    """Run the numpy products inside on one BLAS thread when each call does fewer than
    :data:`SERIAL_BLAS_MACS` multiply-adds.

    OpenBLAS's thread count is one setting for the whole process (not per thread, as OpenMP's is), and
    threadpoolctl lets one thread hold it at a time; so small scans take turns behind a lock, each
    setting one thread and restoring the previous count itself (a scan of 20,000 x 384 takes ~1.5 ms;
    a big batch elsewhere in the process runs on one thread meanwhile). If another thread holds the
    setting (an application's own ``threadpool_limits`` block), that setting is left as it is.
    """
    if macs >= SERIAL_BLAS_MACS:
        yield
        return
    with _BLAS_GATE, _NUMPY_BLAS.limit(limits=1):
        yield


class _Selection:
    """The running top-``k`` per query, fed one block of scores at a time (in row order)."""

    def __init__(self, batch: int, k: int) -> None:
        self.batch, self.k = batch, k
        self.scores = np.full((batch, k), -np.inf, dtype=np.float32)
        self.rows = np.full((batch, k), _NO_ROW, dtype=np.int64)
        self.threshold = np.full(batch, -np.inf, dtype=np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self._unset = True

    def offer(self, block_scores: np.ndarray, start: int) -> None:
        """Take the candidates of one ``(batch, rows)`` block of scores whose first row is ``start``."""
        unset = self._unset
        if unset and block_scores.shape[1] > self.k:
            # no threshold yet: cut the block to its own top k per query first
            cut = block_scores.shape[1] - self.k
            kth = np.partition(block_scores, cut, axis=1)[:, cut]
            mask = block_scores >= np.maximum(kth, self.threshold)[:, None]
            query, local = np.nonzero(mask)
        else:
            # only queries whose block maximum beats their threshold have candidates (after the first
            # blocks, few do); a max per row reads the scores far faster than nonzero over all of them
            hot = np.flatnonzero(block_scores.max(axis=1) > self.threshold)
            if len(hot) == 0:
                return
            hot_query, local = np.nonzero(block_scores[hot] > self.threshold[hot, None])
            query = hot[hot_query]
        if len(local):
            self._pending.append((query, block_scores[query, local], local + start))
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
        if len(query) > 2 * self.batch * self.k:
            query, scores, rows = self._above_kth(query, scores, rows)
        order = np.lexsort((rows, -scores, query))  # by query, then score descending, then row
        starts = np.concatenate([[0], np.cumsum(np.bincount(query, minlength=self.batch))[:-1]])
        picked = order[starts[:, None] + np.arange(self.k)]
        self.scores, self.rows = scores[picked], rows[picked]
        self.threshold = self.scores[:, -1].copy()
        self._unset = bool(np.isneginf(self.threshold).any())

    def _above_kth(
        self, query: np.ndarray, scores: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidates scoring at least their query's k-th best (ties at the cut kept for the sort):
        one partition of a padded ``(batch, most candidates)`` table instead of sorting them all."""
        counts = np.bincount(query, minlength=self.batch)  # at least k each: the running top k is included
        order = np.argsort(query, kind="stable")  # runs already sorted by query: cheap
        width = int(counts.max())
        table = np.full((self.batch, width), -np.inf, dtype=np.float32)
        table[query[order], np.arange(len(query)) - np.repeat(np.cumsum(counts) - counts, counts)] = scores[order]
        kth = np.partition(table, width - self.k, axis=1)[:, width - self.k]
        above = scores >= kth[query]
        return query[above], scores[above], rows[above]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.scores, self.rows
