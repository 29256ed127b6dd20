"""The derived views a funnel reads, and which of them an index keeps: planning, building, eviction.

Every view is derived from the stored full vectors: a float32 prefix (:class:`ColumnBlocks`), FP16
or int8 codes, sign bits, an approximate index (:class:`ApproxView`) or the neighbour graph. A
search's plan names the views it reads (:func:`views_for`); an index builds them on first use, extends
them on append (:func:`extend_view`) and drops the least recently used ones beyond its budget
(:func:`evict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from matryoshka.indexes.faiss.approximate import ApproxView
from matryoshka.indexes.faiss.exact import ColumnBlocks
from matryoshka.indexes.faiss.neighbours import NeighbourGraph
from matryoshka.indexes.faiss.prefixes import finite_unit_rows, prefix_blocks, prefixes
from matryoshka.retrieval.stages import APPROXIMATE, Stage, resolve_stages

#: Default budget for cached first-stage views (prefixes, sign bits, int8 codes). Every distinct
#: ``(codec, dim)`` a first stage scans gets a view of ``count x dim`` values; a server whose clients ask
#: for many dimensions would otherwise cache one per dimension and grow without end. Exact full-size
#: scans use a dimension-major copy of the vectors when it takes at most half of it (raise
#: :attr:`FunnelIndex.view_cache_bytes` to give a large index that copy: batched exact search ran 1.6x at 1M x 384).
VIEW_CACHE_BYTES = 256 << 20
_PLANS = 64  # resolved search plans remembered per index
_INT8_TRAIN_ROWS = 262_144  # rows (evenly spaced) that set the int8 ranges

ViewKey = tuple[str, int]  # (codec, dim)


def views_for(plan: Sequence[Stage], full_dim: int, count: int, budget: int) -> set[ViewKey]:
    """Keys of the views a resolved plan reads: the first stage's scan view, int8 codes for re-ranks
    and the neighbour graph for a ``graph`` stage.

    A float32 scan of the full vectors reads a :class:`ColumnBlocks` copy of them when that takes at
    most half of ``budget`` (it is faster at every batch size, see :mod:`matryoshka.indexes.faiss.exact`;
    the other half leaves room for prefix views, so switching funnels does not rebuild views), else the
    stored vectors themselves.
    """
    first = plan[0]
    scans = {(first.codec, first.dim)}
    if first.codec == "float32" and first.dim == full_dim and 2 * count * full_dim * 4 > budget:
        scans = set()
    return {(s.codec, s.dim) for s in plan[1:] if s.codec in ("int8", "graph")} | scans


class PlanCache:
    """Resolved plans of recent searches and the views each reads (resolving and checking a funnel
    took about 7 us of every search); forgets them all once it holds :data:`_PLANS`."""

    def __init__(self) -> None:
        self._plans: dict[Any, tuple[list[Stage], set[ViewKey]]] = {}

    def plan(
        self, stages: Sequence[Stage], k: int, full_dim: int, count: int, budget: int
    ) -> tuple[list[Stage], set[ViewKey]]:
        """The resolved plan of a search of ``k`` hits over ``count`` vectors, and the views it reads.

        Raises:
            InputError: ``stages`` or ``k`` are not a valid funnel for these vectors.
        """
        key: Any = (tuple(stages), k, count, budget)
        try:
            known = self._plans.get(key)
        except TypeError:  # an unhashable stage: resolve_stages says what is wrong with it
            known, key = None, None
        if known is None:
            plan = resolve_stages(stages, full_dim, k, max(count, 1))
            known = (plan, views_for(plan, full_dim, count, budget))
            if key is not None:
                if len(self._plans) >= _PLANS:
                    self._plans.clear()
                self._plans[key] = known
        return list(known[0]), known[1]


def build_view(key: ViewKey, vectors: np.ndarray) -> Any:
    """The view ``key`` of the stored ``vectors``, built from scratch."""
    codec, dim = key
    if codec == "float32":
        columns = ColumnBlocks([], dim)
        for block in prefix_blocks(vectors, dim):
            columns = columns.extended(block)
        return columns
    if codec in APPROXIMATE:
        return ApproxView.build(codec, vectors, dim)
    if codec == "graph":
        return NeighbourGraph.build(vectors)
    view: Any
    if codec == "binary":
        view = faiss.IndexBinaryFlat(dim)
    else:
        qtype = faiss.ScalarQuantizer.QT_fp16 if codec == "float16" else faiss.ScalarQuantizer.QT_8bit
        view = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
        if codec == "int8":
            sample = np.linspace(0, max(len(vectors) - 1, 0), min(len(vectors), _INT8_TRAIN_ROWS)).astype(np.int64)
            view.train(
                finite_unit_rows(vectors[sample, :dim], "float32") if len(sample) else np.zeros((1, dim), "float32")
            )
    for block in prefix_blocks(vectors, dim):
        view.add(np.packbits(block > 0, axis=1) if codec == "binary" else block)
    return view


def extend_view(key: ViewKey, view: Any, rows: np.ndarray) -> Any:
    """A copy of ``view`` with ``rows`` appended (searches in flight keep the old one); ``None`` when the
    view should be built again on next use (a graph with too many rows outside it)."""
    codec, dim = key
    if codec == "graph":
        return view.extended(len(rows))
    prefix = prefixes(rows, dim)
    if codec == "float32" or codec in APPROXIMATE:
        return view.extended(prefix)
    extended: Any = faiss.clone_index(view) if codec != "binary" else faiss.clone_binary_index(view)  # type: ignore[attr-defined]
    extended.add(np.packbits(prefix > 0, axis=1) if codec == "binary" else prefix)
    return extended


def view_bytes(key: ViewKey, view: Any, count: int) -> int:
    """Bytes the view ``key`` of ``count`` vectors holds."""
    codec, dim = key
    if codec in ("float32", "graph"):
        return int(view.nbytes)
    if codec in APPROXIMATE:
        return int(view.nbytes())
    return count * {"float16": 2 * dim, "int8": dim, "binary": dim // 8}[codec]


def evict(views: dict[ViewKey, Any], count: int, budget: int, keep: set[ViewKey]) -> bool:
    """Drop least recently used ``views`` (the first in the dict) until they fit ``budget`` bytes;
    views in ``keep`` stay. Whether they fit now."""
    total = sum(view_bytes(key, view, count) for key, view in views.items())
    for key in list(views):
        if total <= budget:
            break
        if key in keep:
            continue
        total -= view_bytes(key, views.pop(key), count)
    return total <= budget


class ViewCache:
    """The views an index has built, least recently used first, kept within a budget of bytes.

    Not thread-safe on its own: the index calls it with its lock held. A search takes the views its
    plan reads (:meth:`take`) and keeps them even if they are evicted while it runs.
    """

    def __init__(self) -> None:
        self.views: dict[ViewKey, Any] = {}  # insertion order = least recently used first
        self._checked: tuple[int, int] | None = None  # (count, budget) at which the views last fit
        self._plans = PlanCache()

    def plan(
        self, stages: Sequence[Stage], k: int, full_dim: int, count: int, budget: int
    ) -> tuple[list[Stage], set[ViewKey]]:
        """The resolved plan of a search and the views it reads (see :meth:`PlanCache.plan`)."""
        return self._plans.plan(stages, k, full_dim, count, budget)

    def take(
        self, stages: Sequence[Stage], k: int, vectors: np.ndarray, budget: int
    ) -> tuple[list[Stage], dict[ViewKey, Any]]:
        """The plan of a search over the stored ``vectors`` and the views it reads, building missing ones;
        then the least recently used others go until the cache fits ``budget`` bytes."""
        count = len(vectors)
        plan, needed = self.plan(stages, k, vectors.shape[1], count, budget)
        built = False
        for key in needed:
            if key in self.views:
                view = self.views.pop(key)
            else:
                view, built = build_view(key, vectors), True
            self.views[key] = view  # most recently used last
        # views change only when one is built here or rows are added or removed, which changes the count
        if built or self._checked != (count, budget):
            fits = evict(self.views, count, budget, keep=needed)
            # within budget: nothing to check again until a view is built or the count or budget changes
            self._checked = (count, budget) if fits else None
        return plan, {key: self.views[key] for key in needed}

    def extended(self, rows: np.ndarray) -> dict[ViewKey, Any]:
        """Copies of the views with ``rows`` appended, leaving out those to build again on next use."""
        extended = {key: extend_view(key, view, rows) for key, view in self.views.items()}
        return {key: view for key, view in extended.items() if view is not None}

    def nbytes(self, count: int, keys: set[ViewKey] | None = None) -> int:
        """Bytes of the cached views of ``count`` vectors (only those in ``keys``, when given)."""
        views = dict(self.views)
        return sum(view_bytes(key, view, count) for key, view in views.items() if keys is None or key in keys)
