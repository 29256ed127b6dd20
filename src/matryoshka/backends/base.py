"""What every vector backend offers: the funnel search of :mod:`matryoshka.retrieval` on some engine.

A backend stores, per document, an id (string), the full unit-length vector, an optional text and
optional flat metadata (a JSON object of strings, numbers and booleans), and answers funnel
searches with the same :class:`~matryoshka.retrieval.Stage` lists as the embedded index. The
same data and the same exact configuration give the same ids in the same order on every backend
(``tests/test_backend_conformance.py`` checks it).

A metadata filter is a mapping ``{key: value}``; a document matches when every key equals the value
(a list value matches any of its items). Filters restrict both the shortlist and the final ranking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from matryoshka.retrieval.filters import (
    Filter,
    Metadata,
    check_filter,
    check_metadata,
    matches,
)
from matryoshka.retrieval.index import Hit
from matryoshka.retrieval.stages import FULL, Stage

__all__ = ["BackendError", "Filter", "Hit", "Metadata", "VectorBackend", "check_batch", "check_filter", "check_metadata",
           "funnel_shape", "matches", "timed_search"]


class BackendError(RuntimeError):
    """The engine behind a backend refused or failed an operation (with the engine's own message)."""


@runtime_checkable
class VectorBackend(Protocol):
    """A store of unit vectors searched through a funnel.

    Attributes:
        dim: full vector dimension.
        model_name: the model that produced the vectors ("" when unknown).
        url: the backend URL it was opened with (secrets masked).
    """

    dim: int
    model_name: str
    url: str

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id; vectors of any norm are stored at unit length."""

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many existed."""

    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored (what a resumed load skips)."""

    def search(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Top ``k`` hits per query row (full-size query vectors) through ``stages`` (default: exact)."""

    def __len__(self) -> int:
        """Number of stored documents."""

    def close(self) -> None:
        """Release connections and files; the data stays."""


def check_batch(
    ids: Sequence[str],
    vectors: np.ndarray,
    dim: int,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[Metadata | None] | None = None,
) -> tuple[list[str], np.ndarray, list[str | None], list[dict[str, Any] | None]]:
    """Validate one write at the boundary; returns ids, unit float32 rows, texts and metadata.

    Raises:
        ValueError: shapes or lengths differ, an id is empty or repeats, a vector is zero or not
            finite, or metadata is not a flat JSON object.
    """
    ids = [str(i) for i in ids]
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must have shape (count, {dim}), got {array.shape}")
    if len(ids) != len(array):
        raise ValueError(f"{len(ids)} ids for {len(array)} vectors")
    if any(not i for i in ids):
        raise ValueError("ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        raise ValueError("ids repeat within one batch")
    if not np.isfinite(array).all():
        raise ValueError("vectors hold NaN or inf")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a zero vector has no direction to store")
    texts_out = [None] * len(ids) if texts is None else list(texts)
    meta_out = [None] * len(ids) if metadata is None else [check_metadata(m) for m in metadata]
    if len(texts_out) != len(ids) or len(meta_out) != len(ids):
        raise ValueError("texts and metadata need one entry per id")
    return ids, np.ascontiguousarray(array / norms, dtype=np.float32), texts_out, meta_out


def funnel_shape(stages: Sequence[Stage], full_dim: int) -> tuple[Stage | None, Stage]:
    """Split a funnel into (shortlist stage or ``None``, final stage) for engines that run two passes.

    Engines that run the funnel as one query support exact search and one shortlist stage followed by
    a full-size float re-rank.

    Raises:
        ValueError: the funnel has more than two stages or its last stage is not the full float vector.
    """
    stages = list(stages)
    last = stages[-1]
    if last.dim not in (FULL, full_dim) or last.codec not in ("float32", "float16"):
        raise ValueError(f"the last stage must re-rank with the full float vector, got {last}")
    if len(stages) == 1:
        return None, last
    if len(stages) > 2:
        raise ValueError(f"this backend runs one shortlist stage and a re-rank, got {len(stages)} stages")
    return stages[0], last


def timed_search(
    index: Any, queries: np.ndarray, k: int, stages: Sequence[Stage] | None, filter: Filter | None = None
) -> tuple[list[list[Hit]], list[dict[str, Any]]]:
    """Search a :class:`~matryoshka.retrieval.FunnelIndex` or a backend; hits and one timing per stage.

    The embedded index times each stage. A database backend runs the whole funnel as one request, so
    its time is reported on the last stage and earlier stages show 0 seconds.
    """
    import time

    from matryoshka.retrieval.stages import resolve_stages

    if hasattr(index, "search_with_timings"):
        return index.search_with_timings(queries, k=k, stages=stages, filter=filter)
    started = time.perf_counter()
    hits = index.search(queries, k=k, stages=stages, filter=filter)
    seconds = time.perf_counter() - started
    plan = resolve_stages(stages or [Stage(FULL, "float32", k)], index.dim, k, max(len(index), 1))
    timings = [
        {"dim": s.dim or index.dim, "codec": s.codec, "keep": s.keep, "candidates": len(index) if i == 0 else plan[i - 1].keep,
         "seconds": seconds if i == len(plan) - 1 else 0.0}
        for i, s in enumerate(plan)
    ]
    return hits, timings
