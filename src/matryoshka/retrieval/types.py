"""Result types shared by every index: a :class:`Hit`, one :class:`StageTiming` per funnel stage, :class:`IndexInfo`.

A small module with no engine imports, so the database backends use it without loading FAISS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from matryoshka.retrieval.stages import Stage, format_stages

__all__ = ["Hit", "IndexInfo", "StageTiming", "stage_timing"]


@dataclass
class Hit:
    """One search result: the document id, its score in the last stage, and its text if stored."""

    id: str
    score: float
    text: str | None = None


class StageTiming(TypedDict):
    """How one funnel stage ran: its ``dim``, ``codec`` and ``keep``, vectors scored per query, seconds."""

    dim: int
    codec: str
    keep: int
    candidates: int
    seconds: float


def stage_timing(stage: Stage, candidates: int, seconds: float, full_dim: int | None = None) -> StageTiming:
    """The timing record of one stage (``full_dim`` replaces the ``FULL`` marker ``0``)."""
    dim = stage.dim or (full_dim or 0)
    return {"dim": dim, "codec": stage.codec, "keep": stage.keep, "candidates": candidates, "seconds": seconds}


@dataclass(frozen=True)
class IndexInfo:
    """What an index says about itself, without reading its vectors.

    Attributes:
        url: where it lives (``faiss:///dir``, ``postgresql://...`` with the password masked, ...).
        model_name: the model label the vectors were made with (see :func:`matryoshka.models.identity.model_label`).
        dim: full vector dimension.
        stages: the default funnel a search without stages runs.
        count: stored documents.
        details: engine-specific facts (storage dtype, table, collection, prefix indexes...).
    """

    url: str
    model_name: str
    dim: int
    stages: list[Stage]
    count: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (stages as their spec string)."""
        return {
            "url": self.url,
            "model_name": self.model_name,
            "dim": self.dim,
            "stages": format_stages(self.stages),
            "count": self.count,
            **self.details,
        }
