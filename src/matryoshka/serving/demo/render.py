"""Answers as JSON: embeddings rendered by hand (fast), hits and per-stage timings as response models."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from matryoshka.retrieval.stages import Stage, bytes_per_vector
from matryoshka.retrieval.types import Hit, StageTiming
from matryoshka.serving.schemas import SearchHit
from matryoshka.serving.schemas import StageTiming as StageTimingOut

__all__ = ["RENDER_ROWS", "hits_out", "render_embeddings", "stage_bytes", "timings_out"]


#: Rows of an embeddings answer rendered at a time (an answer this size or smaller goes out in one piece).
RENDER_ROWS = 128


def render_embeddings(rows: np.ndarray, first: int, encoding_format: str) -> bytes:
    """OpenAI's ``data`` items for ``rows`` (indexes from ``first``) as comma-separated JSON objects.

    Serialized by hand rather than through pydantic: 2,048 x 384 floats through a response model
    would take seconds.
    """
    if encoding_format == "base64":  # the rows' own type, little-endian: float32, float16, or packed bits
        little = rows.dtype.newbyteorder("<")
        data: list[Any] = [base64.b64encode(row.astype(little).tobytes()).decode("ascii") for row in rows]
    else:
        data = rows.tolist()
    items = [{"object": "embedding", "embedding": e, "index": first + i} for i, e in enumerate(data)]
    return json.dumps(items, separators=(",", ":"))[1:-1].encode()


def stage_bytes(dim: int, codec: str) -> int:
    """Storage of one vector of ``dim`` values in ``codec`` (binary packs 8 dimensions per byte)."""
    return bytes_per_vector(Stage(dim, codec, 1), dim)  # type: ignore[arg-type]


def hits_out(hits: Sequence[Hit]) -> list[SearchHit]:
    return [SearchHit(rank=i + 1, id=str(h.id), score=float(h.score), text=h.text) for i, h in enumerate(hits)]


def timings_out(timings: Sequence[StageTiming]) -> list[StageTimingOut]:
    return [
        StageTimingOut(
            dim=int(t["dim"]),
            codec=str(t["codec"]),
            keep=int(t["keep"]),
            candidates=int(t["candidates"]),
            ms=round(float(t["seconds"]) * 1000, 3),
            bytes_per_vector=stage_bytes(int(t["dim"]), str(t["codec"])),
        )
        for t in timings
    ]
