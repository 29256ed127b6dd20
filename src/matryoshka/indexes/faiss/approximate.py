"""Approximate first stages: a FAISS index over the unit prefixes that visits a few thousand of them.

``hnsw`` walks an HNSW graph; ``ivf`` scans the inverted lists nearest the query; ``ivfpq`` does the
same over 4-bit fast-scan codes. Each view also holds the rows appended since it was built (its
tail), scanned exactly, and is copied to take them in once that tail has grown by a quarter.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from matryoshka.indexes.faiss.exact import serial_when_small, top_k_inner_product
from matryoshka.indexes.faiss.prefixes import finite_unit_rows, prefix_blocks, prefixes

#: Neighbours per node of the HNSW graph a ``hnsw`` stage searches (FAISS's ``M``; level 0 keeps 2M).
HNSW_M = 16
#: Candidate list while the graph is built (FAISS's ``efConstruction``; its default is 40).
HNSW_EF_CONSTRUCTION = 64
#: Training points per inverted list for an ``ivf`` stage's k-means (FAISS warns below 39).
IVF_TRAIN_PER_LIST = 40
#: Below this many rows an ``ivfpq`` view holds its rows in the exactly-scanned tail (its 16-level
#: codebooks and its lists need this much to train, and a scan of so few prefixes is quick anyway).
IVFPQ_MIN_ROWS = 4096
#: FAISS's fast-scan search variant for ``ivfpq`` (``IndexIVFFastScan.implem``; 0 lets FAISS choose).
#: 11 (SIMD scan, results kept in a heap) ran a 1M-vector, 8,000-hit search 10-20% faster than FAISS's
#: choice for so many hits on the development machine (1 thread, ``benchmarks/funnel.py``'s vectors).
IVFPQ_IMPLEM = 11
#: Rows appended after an approximate index was built are scanned exactly until they reach this share
#: of it (or :data:`_TAIL_MIN` rows); then a copy of the index takes them in.
_TAIL_SHARE = 0.25
_TAIL_MIN = 16_384


def ivf_lists(count: int) -> int:
    """Inverted lists for ``count`` vectors: 4·sqrt(count) (4,000 at 1M), at most count / 40, at least 1."""
    return max(1, min(int(4 * np.sqrt(count)), count // IVF_TRAIN_PER_LIST))


def hnsw_link_bytes(hnsw: Any) -> int:
    """Bytes of a FAISS HNSW graph's links (neighbour ids, per-node offsets and levels), vectors excluded."""
    return int(hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4)


class ApproxView:
    """An approximate FAISS index over unit prefixes (``hnsw``: ``IndexHNSWFlat``; ``ivf``:
    ``IndexIVFFlat``; ``ivfpq``: ``IndexIVFPQFastScan`` with one 4-bit code per dimension; inner
    product), plus a tail of rows added since it was built, scanned exactly.
    Immutable: appends return a new view, so searches in flight keep theirs, and the index is copied
    only when its tail has grown by a quarter (amortised constant work per appended row)."""

    def __init__(self, codec: str, index: Any, tail: np.ndarray) -> None:
        self.codec, self.index, self.tail = codec, index, tail  # index None: too few rows yet (ivfpq)
        self._params: dict[int, Any] = {}  # FAISS search parameters by probe width (read-only once made)

    @property
    def indexed(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    @classmethod
    def build(cls, codec: str, vectors: np.ndarray, dim: int) -> ApproxView:
        index: Any
        if codec == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        elif codec == "ivfpq" and len(vectors) < IVFPQ_MIN_ROWS:
            return cls(codec, None, prefixes(vectors, dim))
        else:
            lists = ivf_lists(len(vectors))
            if codec == "ivfpq":
                index = faiss.index_factory(dim, f"IVF{lists},PQ{dim}x4fs", faiss.METRIC_INNER_PRODUCT)
                index.implem = IVFPQ_IMPLEM
            else:
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.linspace(0, max(len(vectors) - 1, 0), min(len(vectors), lists * IVF_TRAIN_PER_LIST))
            index.train(finite_unit_rows(vectors[sample.astype(np.int64), :dim], "float32"))
        for block in prefix_blocks(vectors, dim):
            index.add(block)
        return cls(codec, index, np.zeros((0, dim), np.float32))

    def extended(self, prefix: np.ndarray) -> ApproxView:
        tail = np.concatenate([self.tail, prefix])
        if len(tail) < max(_TAIL_MIN, _TAIL_SHARE * self.indexed):
            return ApproxView(self.codec, self.index, tail)
        if self.index is None:
            return ApproxView.build(self.codec, tail, tail.shape[1])
        index = faiss.clone_index(self.index)
        index.add(tail)
        return ApproxView(self.codec, index, np.zeros((0, tail.shape[1]), np.float32))

    def search(self, prefix: np.ndarray, keep: int, probe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top ``keep`` by prefix cosine, merged with the tail's exact top ``keep``.

        A query for which the index finds fewer than ``keep`` (its probed lists hold fewer vectors, or
        the graph walk ran dry) is searched again with a 4× wider probe; rows stay ``-1`` only when
        even the widest probe falls short (the caller then scans that query exactly).
        """
        indexed = self.indexed
        keep = min(keep, indexed + len(self.tail))
        size = min(keep, indexed)
        scores = np.zeros((len(prefix), 0), np.float32)
        rows = np.zeros((len(prefix), 0), np.int64)
        if indexed:
            if self.codec == "hnsw":
                width, widest = max(probe or keep, keep), max(indexed, keep)
            else:
                width, widest = min(probe or max(1, self.index.nlist // 64), self.index.nlist), self.index.nlist
            scores, rows = self._search(prefix, size, width)
            short = np.flatnonzero(rows[:, -1] < 0)  # FAISS puts the -1 of missing hits last
            while len(short) and width < widest:
                width = min(widest, width * 4)
                scores[short], rows[short] = self._search(prefix[short], size, width)
                short = short[(rows[short] < 0).any(axis=1)]
        if len(self.tail):
            tail_scores, tail_rows = top_k_inner_product(prefix, self.tail, keep)
            scores = np.concatenate([scores, tail_scores], axis=1)
            rows = np.concatenate([rows, tail_rows + indexed], axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
            scores, rows = np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
        return scores, rows

    def _search(self, prefix: np.ndarray, size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        params = self._params.get(width)
        if params is None:  # made once per width (a new one took 2 us of every search)
            if self.codec == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=width)  # type: ignore[attr-defined]
            else:
                params = faiss.SearchParametersIVF()
                params.nprobe = width
            self._params[width] = params
        with serial_when_small(len(prefix) * self.index.ntotal):
            return self.index.search(prefix, size, params=params)

    def nbytes(self) -> int:
        if self.index is None:
            stored = 0
        elif self.codec == "hnsw":
            stored = self.index.ntotal * self.index.d * 4 + hnsw_link_bytes(self.index.hnsw)
        elif self.codec == "ivfpq":  # each listed code and its 8-byte id, the centroids and the codebooks
            pq = self.index.pq
            stored = self.index.ntotal * (self.index.code_size + 8) + self.index.nlist * self.index.d * 4
            stored += pq.M * pq.ksub * pq.dsub * 4
        else:  # each listed vector and its 8-byte id, plus the centroids
            stored = self.index.ntotal * (self.index.d * 4 + 8) + self.index.nlist * self.index.d * 4
        return int(stored + self.tail.nbytes)
