"""The FastAPI application: OpenAI-compatible embeddings, funnel search and the demo page.

Handlers are thin: they validate (:mod:`.checks`), hand texts to a
:class:`~matryoshka.serving.batching.MicroBatcher` (:mod:`.state`, which calls
:func:`matryoshka.embeddings.vectors.encode` in a worker thread), cut vectors to the requested dimension, and
search the :class:`~matryoshka.retrieval.protocol.VectorIndex` with ``search_with_timings`` (any engine:
the embedded index, PostgreSQL, Qdrant); answers are rendered by :mod:`.render`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from matryoshka.embeddings.vectors import truncate
from matryoshka.errors import IndexStoreError
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import Stage
from matryoshka.serving.batching import BatcherClosed, QueueFull
from matryoshka.serving.checks import (
    check_dimensions,
    check_inputs,
    check_search_filter,
    request_stages,
    validation_message,
)
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.demo.index import NEUTRAL_CORPUS, WORDNET_CORPUS, DemoCorpus
from matryoshka.serving.demo.render import RENDER_ROWS, hits_out, render_embeddings, stage_bytes, timings_out
from matryoshka.serving.http.errors import APIError, ClientGone
from matryoshka.serving.http.middleware import (
    CLIENT_CLOSED,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    JsonBodyMiddleware,
    RequestLogMiddleware,
)
from matryoshka.serving.quality import demo_dimensions
from matryoshka.serving.schemas import (
    API_CODECS,
    CompareRequest,
    CompareResponse,
    CompareSide,
    DemoInfo,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
    Usage,
)
from matryoshka.serving.state import ServerState, submit_while_connected

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["DEMO_EXAMPLES", "STATIC_DIR", "APIError", "create_app"]

logger = logging.getLogger("matryoshka.serving")

STATIC_DIR = Path(__file__).parent / "static"
#: Queries the demo page offers for the WordNet gloss corpus ("describe a word, find it").
DEMO_EXAMPLES = list(WORDNET_CORPUS.examples)


def create_app(
    config: ServeConfig,
    models: dict[str, SentenceTransformer] | None = None,
    index: VectorIndex | None = None,
    quality: dict[str, Any] | None = None,
    demo_indexes: Mapping[str, VectorIndex] | None = None,
    demo_corpus: DemoCorpus = NEUTRAL_CORPUS,
) -> FastAPI:
    """Build the server.

    Args:
        config: limits, batching and, when ``models``/``index``/``quality`` are not given, what to load.
        models: served name -> loaded model; default: load every entry of ``config.models``.
        index: the index ``/v1/search`` and the demo search (any engine); default: ``config.index_path`` if set.
        quality: evaluation results ``{"models": {name: {task: {dim: value}}}}`` for the demo's chart;
            default: ``config.results_path`` if set.
        demo_indexes: more choices for the demo's model selector: served model name -> the index of
            that model's vectors of the same documents (``index`` is the first choice).
        demo_corpus: the demo page's title and example queries; the default is neutral (any index),
            ``matryoshka demo`` passes :data:`~matryoshka.serving.demo.index.WORDNET_CORPUS`.
    """
    from matryoshka.serving.startup import check_index_model, load_results, open_served_index, serve_index_model

    # What can fail without the model is tried first, so a bad index or results file costs no model load.
    if index is None and config.index_path:
        index = open_served_index(config.index_path)
    if index is not None and models is None:
        config = serve_index_model(config, index)  # no models named: the one the index records
        check_index_model(index, config)
    if quality is None and config.results_path:
        quality = load_results(config)
    if models is None:
        from matryoshka.models.loading import load_model

        models = {name: load_model(source) for name, source in config.model_specs()}
    if not models:
        raise ValueError("serve at least one model")
    state = ServerState(config, models, index, quality, demo_indexes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.default.batcher.submit(["warm up"])  # first call initialises torch; keep it off a request
        logger.info(
            "ready", extra={"event": "ready", "models": list(state.models), "index_size": len(index) if index else 0}
        )
        yield
        await state.close()
        logger.info("stopped", extra={"event": "stopped"})

    app = FastAPI(title="matryoshka", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = state

    # -- errors: always OpenAI's shape --
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return APIError(400, message, param, "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        elif exc.status_code == 400:  # Starlette could not decode the body: bad UTF-8, huge ints, deep nesting
            message = (
                "We could not parse the JSON body of your request (invalid UTF-8, a number too large or nesting "
                "too deep). Send valid JSON with Content-Type: application/json."
            )
            code = "invalid_request"
        else:
            message, code = str(exc.detail), None
        return APIError(exc.status_code, message, None, code).response()

    @app.exception_handler(BatcherClosed)
    async def _closing(_: Request, exc: BatcherClosed) -> JSONResponse:
        return APIError(503, "The server is shutting down.", None, "shutting_down", "server_error").response()

    @app.exception_handler(IndexStoreError)
    async def _index_down(request: Request, exc: IndexStoreError) -> JSONResponse:
        logger.error("index error", extra={"event": "index_error", "path": request.url.path, "error": str(exc)})
        return APIError(503, f"The index is unavailable: {exc}", None, "index_unavailable", "server_error").response()

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # never reaches the client; the log line says 499

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        response = APIError(429, f"{exc} Retry after {exc.retry_after} s.", None, "queue_full", "rate_limit_error").response()
        response.headers["retry-after"] = str(exc.retry_after)
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"event": "error", "path": request.url.path})
        return APIError(
            500, "The server had an error while processing your request.", None, None, "server_error"
        ).response()

    # -- OpenAI-compatible endpoints --
    errors = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 503)}

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=errors)  # type: ignore[arg-type]
    async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        """Embed strings with a served model, optionally cut to ``dimensions`` (re-normalized)."""
        served = state.get_model(body.model)
        texts = check_inputs(body.input, config)
        dim = check_dimensions(body.dimensions, served.dim)
        vectors, tokens = await submit_while_connected(request, served.batcher, texts)

        rows = truncate(vectors, dim)
        total = int(tokens.sum())
        head = b'{"object":"list","data":['
        usage = {"model": served.name, "usage": {"prompt_tokens": total, "total_tokens": total}}
        tail = b"]," + json.dumps(usage, separators=(",", ":"))[1:].encode()
        if len(rows) <= RENDER_ROWS:
            items = await run_in_threadpool(render_embeddings, rows, 0, body.encoding_format)
            return Response(head + items + tail, media_type="application/json")

        def parts() -> Iterator[bytes]:
            # Large answers go out in slices of RENDER_ROWS rows, each rendered in a worker thread: memory
            # stays at one slice (not 2,048 x 384 Python floats and their JSON at once) and the event loop,
            # which needs the GIL that json.dumps holds, gets a turn between slices.
            yield head
            for start in range(0, len(rows), RENDER_ROWS):
                data = render_embeddings(rows[start : start + RENDER_ROWS], start, body.encoding_format)
                yield (b"," if start else b"") + data
            yield tail

        return StreamingResponse(parts(), media_type="application/json")

    @app.get("/v1/models", responses=errors)  # type: ignore[arg-type]
    async def list_models() -> ModelList:
        return ModelList(data=[m.card() for m in state.models.values()])

    @app.get("/v1/models/{model_id:path}", responses=errors)  # type: ignore[arg-type]
    async def get_model(model_id: str) -> ModelCard:
        return state.get_model(model_id).card()

    # -- search --
    @app.post("/v1/search", responses=errors)  # type: ignore[arg-type]
    async def search(body: SearchRequest) -> SearchResponse:
        """Search the loaded funnel index with one query; hits plus per-stage timings and storage."""
        index = state.require_index()
        if body.model is not None and body.model != state.search_model.name:
            raise APIError(
                400, f"The index is searched with model `{state.search_model.name}`.", "model", "model_mismatch"
            )
        if body.k > config.search_max_k:
            raise APIError(400, f"k must be at most {config.search_max_k}.", "k", "invalid_k")
        stages = request_stages(body, index)
        check_search_filter(body.filter, index)
        query, tokens, encode_ms = await state.encode_query(body.query)
        started = time.perf_counter()
        try:
            results, timings = await run_in_threadpool(index.search_with_timings, query, body.k, stages, body.filter)
        except ValueError as exc:
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

    # -- operations --
    @app.get("/health", responses=errors)  # type: ignore[arg-type]
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": list(state.models),
            "index_size": len(index) if index is not None else None,
            "uptime_s": round(time.time() - state.started, 1),
            "batches": {
                name: {k: v for k, v in dataclasses.asdict(m.batcher.stats).items() if k != "sizes"}
                for name, m in state.models.items()
            },
        }

    # -- demo --
    def demo_codecs(dim: int) -> list[str]:
        """The codecs every demo choice's index can rank by at a ``dim``-value prefix, in the API's order."""
        supported = [set(choice_index.scan_codecs(dim)) for _, choice_index in state.demo_choices.values()]
        return [codec for codec in API_CODECS if all(codec in codecs for codecs in supported)]

    @app.get("/demo/api/info", responses=errors)  # type: ignore[arg-type]
    async def demo_info() -> DemoInfo:
        index = state.require_index()
        quality_dims: list[int] = []
        if state.quality and state.quality_model:
            quality_dims = sorted({int(d) for task in state.quality[state.quality_model].values() for d in task})
        dim_codecs = {d: demo_codecs(d) for d in demo_dimensions(index.dim, quality_dims, config.demo_dims)}
        dims = [d for d, codecs in dim_codecs.items() if codecs]  # e.g. Qdrant ranks only by the prefixes it stores
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
            examples=list(demo_corpus.examples),
            title=demo_corpus.title,
            placeholder=demo_corpus.placeholder,
            quality_models=state.quality_keys,
            dim_codecs={str(d): dim_codecs[d] for d in dims},
        )

    @app.post("/demo/api/compare", responses=errors)  # type: ignore[arg-type]
    async def demo_compare(body: CompareRequest) -> CompareResponse:
        """Top ``k`` at the chosen dimension next to top ``k`` at full size, for one query."""
        served, index = state.demo_choice(body.model)
        dim = check_dimensions(body.dim, index.dim, "dim")
        query, _, encode_ms = await state.encode_query(body.query, served, index.dim)

        try:
            chosen_stage = Stage(dim=dim, codec=body.codec, keep=body.k)
        except ValueError as exc:  # e.g. binary at a dim that is not a multiple of 8
            raise APIError(400, str(exc), "dim", "invalid_stages") from None
        if body.codec not in index.scan_codecs(dim):  # e.g. int8 on PostgreSQL: refused before the engine runs it
            offered = ", ".join(index.scan_codecs(dim)) or "none"
            raise APIError(400, f"This index cannot rank by {body.codec} at {dim} dimensions (it can: {offered}).",
                           "codec", "invalid_stages")

        def side(stage: Stage) -> CompareSide:
            try:
                results, timings = index.search_with_timings(query, body.k, [stage])
            except ValueError as exc:  # e.g. int8 on an engine that stores no int8 codes
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

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added innermost first: the log sees everything, then the key is checked, then the body size.
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout_s=config.timeout_body_s)
    app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(RequestLogMiddleware, enabled=config.log_requests)
    return app
