"""``GET /health``: liveness plus what an operator wants at a glance (models, index size, batch counters,
and per upstream API: calls made, texts sent, vector-cache hits and misses)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter

from matryoshka.serving.schemas import ERROR_RESPONSES
from matryoshka.serving.state import State

__all__ = ["router"]

router = APIRouter()


# No docstring: FastAPI would publish it as the operation's description.
@router.get("/health", responses=ERROR_RESPONSES)
async def health(state: State) -> dict[str, Any]:
    return {
        "status": "ok",
        "models": list(state.models),
        "index_size": len(state.index) if state.index is not None else None,
        "uptime_s": round(time.time() - state.started, 1),
        "batches": {
            name: {k: v for k, v in dataclasses.asdict(m.batcher.stats).items() if k != "sizes"}
            for name, m in state.models.items()
        },
        "upstream": {
            name: {**dataclasses.asdict(upstream.stats), "cache_hit_rate": upstream.stats.hit_rate}
            for name, upstream in state.upstreams().items()
        },
    }
