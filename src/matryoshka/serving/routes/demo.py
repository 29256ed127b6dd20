"""The demo page and its API: what the page offers (``/demo/api/info``) and one query at a small
dimension next to the same query at full size (``/demo/api/compare``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from matryoshka.errors import InputError
from matryoshka.retrieval.stages import Stage
from matryoshka.serving.checks import check_dimensions
from matryoshka.serving.demo.render import hits_out, stage_bytes
from matryoshka.serving.http.errors import APIError
from matryoshka.serving.quality import demo_dimensions
from matryoshka.serving.schemas import (
    API_CODECS,
    ERROR_RESPONSES,
    CompareRequest,
    CompareResponse,
    CompareSide,
    DemoInfo,
)
from matryoshka.serving.state import ServerState, State

__all__ = ["STATIC_DIR", "demo_codecs", "router"]

#: The demo page and its assets (``/`` and ``/static``).
STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter()


def demo_codecs(state: ServerState, dim: int) -> list[str]:
    """The codecs every demo choice's index can rank by at a ``dim``-value prefix, in the API's order."""
    supported = [set(choice_index.scan_codecs(dim)) for _, choice_index in state.demo_choices.values()]
    return [codec for codec in API_CODECS if all(codec in codecs for codecs in supported)]


# No docstring: FastAPI would publish it as the operation's description.
@router.get("/demo/api/info", responses=ERROR_RESPONSES)
async def demo_info(state: State) -> DemoInfo:
    index = state.require_index()
    quality_dims: list[int] = []
    if state.quality and state.quality_model:
        quality_dims = sorted({int(d) for task in state.quality[state.quality_model].values() for d in task})
    dim_codecs = {d: demo_codecs(state, d) for d in demo_dimensions(index.dim, quality_dims, state.config.demo_dims)}
    dims = [d for d, codecs in dim_codecs.items() if codecs]  # e.g. Qdrant ranks only by the prefixes it stores
    if state.config.strict_dimensions:
        dims = [d for d in dims if state.search_model.is_safe(d)]
    corpus = state.demo_corpus
    return DemoInfo(
        model=state.search_model.name,
        models=list(state.demo_choices),
        full_dim=index.dim,
        dims=dims,
        codecs=[codec for codec in API_CODECS if any(codec in dim_codecs[d] for d in dims)],
        index_size=len(index),
        index_dim=index.dim,
        quality=state.quality,
        quality_model=state.quality_model,
        examples=list(corpus.examples),
        title=corpus.title,
        placeholder=corpus.placeholder,
        quality_models=state.quality_keys,
        dim_codecs={str(d): dim_codecs[d] for d in dims},
    )


@router.post("/demo/api/compare", responses=ERROR_RESPONSES)
async def demo_compare(body: CompareRequest, state: State) -> CompareResponse:
    """Top ``k`` at the chosen dimension next to top ``k`` at full size, for one query."""
    served, index = state.demo_choice(body.model)
    dim = check_dimensions(body.dim, index.dim, "dim")
    if state.config.strict_dimensions:
        served.check_safe(dim)
    query, _, encode_ms = await state.encode_query(body.query, served, index.dim)

    try:
        chosen_stage = Stage(dim=dim, codec=body.codec, keep=body.k)
    except InputError as exc:  # e.g. binary at a dim that is not a multiple of 8
        raise APIError(400, str(exc), "dim", "invalid_stages") from None
    if body.codec not in index.scan_codecs(dim):  # e.g. int8 on PostgreSQL: refused before the engine runs it
        offered = ", ".join(index.scan_codecs(dim)) or "none"
        raise APIError(400, f"This index cannot rank by {body.codec} at {dim} dimensions (it can: {offered}).",
                       "codec", "invalid_stages")

    def side(stage: Stage) -> CompareSide:
        try:
            results, timings = index.search_with_timings(query, body.k, [stage])
        except InputError as exc:  # e.g. int8 on an engine that stores no int8 codes
            raise APIError(400, f"This index cannot rank by {stage}: {exc}", "codec", "invalid_stages") from None
        stage_dim, codec = int(timings[0]["dim"]), str(timings[0]["codec"])
        per_vector = stage_bytes(stage_dim, codec)
        return CompareSide(
            dim=stage_dim,
            codec=codec,
            hits=hits_out(results[0]),
            ms=round(sum(float(t["seconds"]) for t in timings) * 1000, 3),
            bytes_per_vector=per_vector,
            index_bytes=per_vector * len(index),
        )

    chosen = await run_in_threadpool(side, chosen_stage)
    full = await run_in_threadpool(side, Stage(dim=index.dim, codec="float32", keep=body.k))
    overlap = len({h.id for h in chosen.hits} & {h.id for h in full.hits})
    return CompareResponse(
        model=served.name,
        query=body.query, k=body.k, chosen=chosen, full=full, overlap=overlap, encode_ms=round(encode_ms, 3)
    )


@router.get("/", include_in_schema=False)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
