"""Helpers the database backends share: write-batch validation, the two-pass funnel shape, timings.

The interface itself is :class:`~matryoshka.retrieval.protocol.VectorIndex`; the same data and the same
exact configuration give the same ids in the same order on every engine
(``tests/retrieval/test_engine_conformance.py`` checks it). Metadata filters follow
:mod:`matryoshka.retrieval.filters` everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from matryoshka.data.documents import Metadata, check_metadata
from matryoshka.embeddings import unit_rows
from matryoshka.errors import InputError
from matryoshka.retrieval.stages import FULL, Stage, as_float_scan, resolve_stages
from matryoshka.retrieval.types import StageTiming, stage_timing

__all__ = ["check_batch", "funnel_shape", "prefix_only", "whole_funnel_timings"]


def check_batch(
    ids: Sequence[str],
    vectors: np.ndarray,
    dim: int,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[Metadata | None] | None = None,
) -> tuple[list[str], np.ndarray, list[str | None], list[dict[str, Any] | None]]:
    """Validate one write at the boundary; returns ids, unit float32 rows, texts and metadata.

    Raises:
        InputError: shapes or lengths differ, an id is empty or repeats, a vector is zero or not
            finite, or metadata is not a flat JSON object.
    """
    ids = [str(i) for i in ids]
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InputError(f"vectors must have shape (count, {dim}), got {array.shape}")
    if len(ids) != len(array):
        raise InputError(f"{len(ids)} ids for {len(array)} vectors")
    if any(not i for i in ids):
        raise InputError("ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        raise InputError("ids repeat within one batch")
    if not np.isfinite(array).all():
        raise InputError("vectors hold NaN or inf")
    if (np.linalg.norm(array, axis=1) == 0).any():
        raise InputError("a zero vector has no direction to store")
    texts_out: list[str | None] = [None] * len(ids) if texts is None else list(texts)
    meta_out: list[dict[str, Any] | None] = (
        [None] * len(ids) if metadata is None else [check_metadata(m) for m in metadata]
    )
    if len(texts_out) != len(ids) or len(meta_out) != len(ids):
        raise InputError("texts and metadata need one entry per id")
    return ids, unit_rows(array), texts_out, meta_out


def prefix_only(stages: Sequence[Stage], full_dim: int) -> Stage | None:
    """The stage of a one-stage search that ranks by a prefix view alone (a shorter dim or a non-float
    codec, as the demo's chosen side runs), else ``None``."""
    if len(stages) != 1:
        return None
    stage = as_float_scan(stages[0])
    if stage.dim in (FULL, full_dim) and stage.codec in ("float32", "float16"):
        return None
    return stage


def funnel_shape(stages: Sequence[Stage], full_dim: int) -> tuple[Stage | None, Stage]:
    """Split a funnel into (shortlist stage or ``None``, final stage) for engines that run two passes.

    Engines that run the funnel as one query support exact search and one shortlist stage followed by
    a full-size float re-rank.

    Raises:
        InputError: the funnel has more than two stages or its last stage is not the full float vector.
    """
    stages = [as_float_scan(stage) for stage in stages]  # an engine's float shortlist is its own HNSW search
    last = stages[-1]
    if last.dim not in (FULL, full_dim) or last.codec not in ("float32", "float16"):
        raise InputError(f"the last stage must re-rank with the full float vector, got {last}")
    if len(stages) == 1:
        return None, last
    if len(stages) > 2:
        raise InputError(f"this backend runs one shortlist stage and a re-rank, got {len(stages)} stages")
    return stages[0], last


def whole_funnel_timings(stages: Sequence[Stage], dim: int, k: int, count: int, seconds: float) -> list[StageTiming]:
    """Timings of a funnel an engine ran as one request: ``seconds`` on the last stage, 0 on earlier ones."""
    plan = resolve_stages(stages, dim, k, max(count, 1))
    return [
        stage_timing(s, count if i == 0 else plan[i - 1].keep, seconds if i == len(plan) - 1 else 0.0, dim)
        for i, s in enumerate(plan)
    ]
