"""``POST /v1/search``: one query through the loaded index's funnel, with per-stage timings and storage."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from matryoshka.errors import InputError
from matryoshka.serving.checks import check_search_filter, request_stages
from matryoshka.serving.demo.render import hits_out, stage_bytes, timings_out
from matryoshka.serving.http.errors import APIError
from matryoshka.serving.schemas import ERROR_RESPONSES, SearchRequest, SearchResponse, Usage
from matryoshka.serving.state import State

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/search", responses=ERROR_RESPONSES)
async def search(body: SearchRequest, state: State) -> SearchResponse:
    """Search the loaded funnel index with one query; hits plus per-stage timings and storage; with
    ``--strict-dimensions`` only through stages at the model's ``matryoshka_dimensions``."""
    index = state.require_index()
    if body.model is not None and body.model != state.search_model.name:
        raise APIError(
            400, f"The index is searched with model `{state.search_model.name}`.", "model", "model_mismatch"
        )
    if body.k > state.config.search_max_k:
        raise APIError(400, f"k must be at most {state.config.search_max_k}.", "k", "invalid_k")
    stages = request_stages(body, index)
    if state.config.strict_dimensions:  # every prefix the funnel scores must be one the model serves
        for stage in stages if stages is not None else index.stages:
            state.search_model.check_safe(stage.dim or None)
    check_search_filter(body.filter, index)
    query, tokens, encode_ms = await state.encode_query(body.query)
    started = time.perf_counter()
    try:
        results, timings = await run_in_threadpool(index.search_with_timings, query, body.k, stages, body.filter)
    except InputError as exc:
        raise APIError(400, f"Invalid search: {exc}", "stages", "invalid_stages") from None
    search_ms = (time.perf_counter() - started) * 1000
    stage_out = timings_out(timings)
    return SearchResponse(
        model=state.search_model.name,
        query=body.query,
        k=body.k,
        hits=hits_out(results[0]),
        stages=stage_out,
        bytes_per_vector=stage_out[0].bytes_per_vector if stage_out else stage_bytes(index.dim, "float32"),
        encode_ms=round(encode_ms, 3),
        search_ms=round(search_ms, 3),
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
