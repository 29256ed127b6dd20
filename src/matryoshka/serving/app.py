"""The FastAPI application: OpenAI-compatible embeddings, funnel search and the demo page.

This module is the wiring: the server's state, the routers of :mod:`.routes`, the error handlers,
the middleware and the lifespan. Handlers are thin: they validate (:mod:`.checks`), hand texts to a
:class:`~matryoshka.serving.batching.MicroBatcher` (:mod:`.state`, which calls
:func:`matryoshka.embeddings.vectors.encode` in a worker thread), cut vectors to the requested dimension, and
search the :class:`~matryoshka.retrieval.protocol.VectorIndex` with ``search_with_timings`` (any engine:
the embedded index, PostgreSQL, Qdrant); answers are rendered by :mod:`.demo.render`.

Errors are answered in OpenAI's shape and only the exception tree is mapped: an
:class:`~matryoshka.errors.InputError` is a 400, an :class:`~matryoshka.errors.IndexStoreError` a 503, an
:class:`~matryoshka.errors.UpstreamError` (the embeddings API behind the server failed) its own 502, 503
or 504, the batcher's refusals 429/503; anything else is a 500 with its traceback in the log.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from matryoshka.errors import BatcherClosed, ClientGone, IndexStoreError, InputError, QueueFull, UpstreamError
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.serving.checks import validation_message
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.demo.index import NEUTRAL_CORPUS, WORDNET_CORPUS, DemoCorpus
from matryoshka.serving.http.errors import APIError
from matryoshka.serving.http.middleware import (
    CLIENT_CLOSED,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    JsonBodyMiddleware,
    RequestLogMiddleware,
)
from matryoshka.serving.routes import ROUTERS
from matryoshka.serving.routes.demo import STATIC_DIR
from matryoshka.serving.state import ServerState

if TYPE_CHECKING:
    from matryoshka.serving.served import Served

__all__ = ["DEMO_EXAMPLES", "STATIC_DIR", "APIError", "create_app"]

logger = logging.getLogger("matryoshka.serving")

#: Queries the demo page offers for the WordNet gloss corpus ("describe a word, find it").
DEMO_EXAMPLES = list(WORDNET_CORPUS.examples)


def create_app(
    config: ServeConfig,
    models: Mapping[str, Served] | None = None,
    index: VectorIndex | None = None,
    quality: dict[str, Any] | None = None,
    demo_indexes: Mapping[str, VectorIndex] | None = None,
    demo_corpus: DemoCorpus = NEUTRAL_CORPUS,
) -> FastAPI:
    """Build the server.

    Args:
        config: limits, batching and, when ``models``/``index``/``quality`` are not given, what to load.
        models: served name -> loaded model (a local one, an upstream API, either with an adaptor);
            default: what ``config`` names (``models``, or ``upstream``; then its ``adaptor``).
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
        from matryoshka.serving.served import load_config_models

        models = load_config_models(config)
    if not models:
        raise InputError("serve at least one model")

    app = FastAPI(title="matryoshka", version="0.1.0", lifespan=_lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = ServerState(config, models, index, quality, demo_indexes, demo_corpus)
    for kind, handler in _ERROR_HANDLERS:
        app.add_exception_handler(kind, handler)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added innermost first: the log sees everything, then the key is checked, then the body size.
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout_s=config.timeout_body_s)
    app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(RequestLogMiddleware, enabled=config.log_requests)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Warm the default model up before the first request, and drain the batchers on shutdown."""
    state: ServerState = app.state.serving
    await state.default.batcher.submit(["warm up"])  # first call initialises torch; keep it off a request
    index_size = len(state.index) if state.index else 0
    logger.info("ready", extra={"event": "ready", "models": list(state.models), "index_size": index_size})
    yield
    await state.close()
    for name, upstream in state.upstreams().items():  # what the upstream API cost while serving
        logger.info("upstream", extra={"event": "upstream", "model": name, **dataclasses.asdict(upstream.stats),
                                       "cache_hit_rate": upstream.stats.hit_rate})
    logger.info("stopped", extra={"event": "stopped"})


# -- errors: always OpenAI's shape --


async def _api_error(_: Request, exc: APIError) -> Response:
    return exc.response()


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    message, param = validation_message(exc)
    return APIError(400, message, param, "invalid_request").response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own refusals (unknown URL, wrong method, undecodable body) in OpenAI's shape."""
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


async def _bad_input(_: Request, exc: InputError) -> Response:
    """An :class:`InputError` no route turned into its own answer: a 400 with its message."""
    return APIError(400, str(exc), None, "invalid_request").response()


async def _closing(_: Request, exc: BatcherClosed) -> Response:
    return APIError(503, "The server is shutting down.", None, "shutting_down", "server_error").response()


async def _index_down(request: Request, exc: IndexStoreError) -> Response:
    """The engine failed or the index cannot be read: a 503, logged."""
    logger.error("index error", extra={"event": "index_error", "path": request.url.path, "error": str(exc)})
    return APIError(503, f"The index is unavailable: {exc}", None, "index_unavailable", "server_error").response()


#: An upstream failure's status -> the error code its answer carries.
_UPSTREAM_CODES = {502: "upstream_error", 503: "upstream_unavailable", 504: "upstream_timeout"}


async def _upstream_failed(request: Request, exc: UpstreamError) -> Response:
    """The embeddings API behind the server failed after its retries: its 502, 503 or 504, logged. The
    message names the upstream and what went wrong; a key that slipped into it is masked all the same."""
    state: ServerState = request.app.state.serving
    message = state.redact(str(exc))
    status = exc.status if exc.status in _UPSTREAM_CODES else 502
    logger.error("upstream error", extra={"event": "upstream_error", "path": request.url.path, "status": status,
                                          "error": message})
    return APIError(status, f"The upstream embeddings API failed: {message}", None, _UPSTREAM_CODES[status],
                    "server_error").response()


async def _client_gone(_: Request, exc: ClientGone) -> Response:
    return Response(status_code=CLIENT_CLOSED)  # never reaches the client; the log line says 499


async def _queue_full(_: Request, exc: QueueFull) -> Response:
    response = APIError(429, f"{exc} Retry after {exc.retry_after} s.", None, "queue_full", "rate_limit_error").response()
    response.headers["retry-after"] = str(exc.retry_after)
    return response


async def _crash(request: Request, exc: Exception) -> Response:
    """Anything outside the tree is a bug: a 500, with its traceback in the log."""
    logger.exception("unhandled error", extra={"event": "error", "path": request.url.path})
    return APIError(500, "The server had an error while processing your request.", None, None, "server_error").response()


#: Exception class -> handler (each typed for its class); Starlette picks the nearest class in the exception's MRO.
_ERROR_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (APIError, _api_error),
    (RequestValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
    (InputError, _bad_input),
    (BatcherClosed, _closing),
    (IndexStoreError, _index_down),
    (UpstreamError, _upstream_failed),
    (ClientGone, _client_gone),
    (QueueFull, _queue_full),
    (Exception, _crash),
)
