"""A nearest-neighbour graph of the stored full vectors: the view a ``graph`` stage expands hits with.

A funnel's prefix stages lose a few true neighbours whose short prefix ranks them too low, or whose
inverted list was not probed. Those are usually near a hit the funnel did find, so a last ``graph``
stage adds each surviving hit's nearest neighbours (by the full vectors) to the candidates and
re-scores them all on the full vectors. On ``benchmarks/funnel.py``'s 1M vectors it lifted dev
recall@10 of ``64:ivfpq:8000:640,128:int8:400,full:float32:10`` from 0.9902 to 0.9946, for 0.12-0.15
ms a query, and let a shortlist half that size reach 0.99 (``benchmarks/results/funnel.md``).

The graph is built approximately, the way an inverted file searches: spherical k-means splits the
vectors into ``2·sqrt(count)`` lists, and each vector's :data:`GRAPH_DEGREE` neighbours are the best
of the vectors in the lists nearest its own list's centroid (:data:`GRAPH_PROBE` at 1M, enough for
about :data:`GRAPH_CANDIDATES` vectors), scored as one matrix product per list. At 1M × 384 it
took 56 s on 2 cores, where the exact neighbours of 10,052 vectors alone took 210 s (an exact graph
would take hours). For those 10,052, the top 20 of 500 dev queries (64-dim shortlists re-ranked at
full size), its first 4 links held 91% of their exact 4 nearest; searching 10 or 14 lists instead
of 6 did not raise the funnel's recall.

Example:
    >>> graph = NeighbourGraph.build(vectors)
    >>> graph.neighbours(np.array([0, 17]))  # (2, GRAPH_DEGREE) row numbers, -1 where there are none
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from matryoshka.indexes.faiss.prefixes import finite_unit_rows

#: Neighbours stored per vector (int32 each: 64 bytes a vector).
GRAPH_DEGREE = 16
#: Lists whose vectors are candidates for the neighbours of the vectors of one list (its own first),
#: at least; more where lists are small, so that about :data:`GRAPH_CANDIDATES` vectors are scored.
GRAPH_PROBE = 6
#: Vectors scored, on average, for the neighbours of each vector (6 lists at 1M vectors).
GRAPH_CANDIDATES = 3_000
#: Vectors per list at least (small indexes get fewer lists, down to one: an exact graph).
_MIN_LIST = 64
#: Training points per list for the k-means, and its iterations.
_TRAIN_PER_LIST = 64
_KMEANS_ITERATIONS = 10
#: Rows assigned to their list per matrix product.
_ASSIGN_ROWS = 65_536
#: Rows appended after the graph was built have no neighbours of their own and are nobody's
#: neighbour; once they exceed this share of the graph, :meth:`NeighbourGraph.extended` asks for a rebuild.
_STALE_SHARE = 0.25


class NeighbourGraph:
    """``GRAPH_DEGREE`` approximate nearest neighbours (by inner product of the full vectors) of each of
    the first ``built`` rows, for ``count`` rows in all. Immutable: appends return a new graph."""

    def __init__(self, links: np.ndarray, count: int) -> None:
        self.links, self.count = links, count

    @property
    def built(self) -> int:
        return len(self.links)

    @classmethod
    def build(cls, vectors: np.ndarray, degree: int = GRAPH_DEGREE, probe: int = GRAPH_PROBE, seed: int = 1) -> NeighbourGraph:
        """The graph of ``vectors`` (``(count, dim)``, any float dtype; unit length is assumed); ``probe``
        is the least number of lists searched for each vector's neighbours."""
        count = len(vectors)
        links = np.full((count, degree), -1, dtype=np.int32)
        if count < 2:
            return cls(links, count)
        lists = max(1, min(int(2 * np.sqrt(count)), count // _MIN_LIST))
        probe = min(lists, max(probe, int(np.ceil(GRAPH_CANDIDATES * lists / count))))
        assign, centroids = _lists(vectors, lists, seed)
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(lists + 1))
        closeness = centroids @ centroids.T
        np.fill_diagonal(closeness, np.inf)  # a list's own vectors always come first
        nearest = np.argsort(-closeness, axis=1, kind="stable")[:, :probe]

        def fill(own: int) -> None:
            members = order[bounds[own] : bounds[own + 1]]
            if not len(members):
                return
            candidates = np.concatenate([order[bounds[n] : bounds[n + 1]] for n in nearest[own]])
            scores = np.asarray(vectors[members], dtype=np.float32) @ np.asarray(vectors[candidates], dtype=np.float32).T
            scores[np.arange(len(members)), np.arange(len(members))] = -np.inf  # a vector is not its own neighbour
            best = min(degree, len(candidates) - 1)
            if best:
                links[members, :best] = candidates[_top_columns(scores, best)]

        # one list per task on a 1-thread BLAS: OpenBLAS's own threads, woken for every product and idle
        # during the selection between them, ran the same loop 2x slower on the 2-core development machine
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, faiss.omp_get_max_threads())) as pool:
            list(pool.map(fill, range(lists)))
        return cls(links, count)

    def extended(self, added: int) -> NeighbourGraph | None:
        """The graph after ``added`` rows were appended (they get no neighbours), or ``None`` when rows
        without neighbours would exceed a quarter of the graph: the caller then builds a new one."""
        count = self.count + added
        if count - self.built > _STALE_SHARE * self.built:
            return None
        return NeighbourGraph(self.links, count)

    def neighbours(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), degree)`` neighbour row numbers of ``rows``, best first; -1 pads rows without."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and rows.max() < self.built:
            return self.links[rows].astype(np.int64)
        out = np.full((len(rows), self.links.shape[1]), -1, dtype=np.int64)
        inside = rows < self.built
        out[inside] = self.links[rows[inside]]
        return out

    @property
    def nbytes(self) -> int:
        return int(self.links.nbytes)


def _lists(vectors: np.ndarray, lists: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means list of every row, and the centroids (one list: everything in it)."""
    count, dim = vectors.shape
    if lists == 1:
        return np.zeros(count, dtype=np.int64), np.zeros((1, dim), dtype=np.float32)
    sample = np.linspace(0, count - 1, min(count, lists * _TRAIN_PER_LIST)).astype(np.int64)
    kmeans = faiss.Kmeans(dim, lists, niter=_KMEANS_ITERATIONS, spherical=True, seed=seed, verbose=False)
    kmeans.train(finite_unit_rows(vectors[sample], "float32"))
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    assign = np.empty(count, dtype=np.int64)
    for start in range(0, count, _ASSIGN_ROWS):
        block = np.asarray(vectors[start : start + _ASSIGN_ROWS], dtype=np.float32)
        assign[start : start + len(block)] = np.argmax(block @ centroids.T, axis=1)
    return assign, centroids


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column numbers of each row's ``k`` largest scores, best first (``k`` >= 1).

    FAISS's heap over each row, not ``np.argpartition``: selecting 16 of 3,000 scores took 4-6 us a
    row against numpy's 31 on the 2-core development machine, which would have made selection most
    of a 1M build.
    """
    rows, columns = scores.shape
    values = np.empty((rows, k), dtype=np.float32)
    found = np.empty((rows, k), dtype=np.int64)
    heap = faiss.float_minheap_array_t()  # a min-heap of the k largest so far
    heap.nh, heap.k, heap.val, heap.ids = rows, k, faiss.swig_ptr(values), faiss.swig_ptr(found)
    heap.heapify()
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    heap.addn(columns, faiss.swig_ptr(scores), 0, 0, rows)  # type: ignore[call-arg]  # the stub lists 2 of its 5 parameters
    heap.reorder()
    return found
