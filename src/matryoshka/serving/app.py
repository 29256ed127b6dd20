"""The FastAPI application: OpenAI-compatible embeddings, funnel search and the demo page.

Handlers are thin: they validate, hand texts to a :class:`~matryoshka.serving.batching.MicroBatcher`
(which calls :func:`matryoshka.embeddings.encode` in a worker thread), cut vectors to the requested
dimension with :func:`matryoshka.embeddings.truncate`, and search with ``FunnelIndex.search_with_timings``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from matryoshka.backends.base import timed_search
from matryoshka.embeddings import DimensionError, check_dim, encode, truncate
from matryoshka.models import model_dimension
from matryoshka.retrieval.filters import check_filter
from matryoshka.serving.batching import BatcherClosed, MicroBatcher, QueueFull
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.middleware import (
    CLIENT_CLOSED,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    JsonBodyMiddleware,
    RequestLogMiddleware,
)
from matryoshka.serving.schemas import (
    CompareRequest,
    CompareResponse,
    CompareSide,
    DemoInfo,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    SearchHit,
    SearchRequest,
    SearchResponse,
    StageTiming,
    Usage,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka.retrieval import FunnelIndex

logger = logging.getLogger("matryoshka.serving")

STATIC_DIR = Path(__file__).parent / "static"
CODEC_BITS = {"float32": 32, "float16": 16, "int8": 8, "binary": 1}
#: Queries the demo page offers for the WordNet gloss corpus ("describe a word, find it").
DEMO_EXAMPLES = [
    "a large animal with a long trunk",
    "a building where books are kept",
    "feeling of great happiness",
    "to move quickly on foot",
    "a tool for cutting wood",
    "the study of the stars and planets",
]


class ClientGone(Exception):
    """The client hung up while its request waited for the model; its texts were taken off the queue."""


async def submit_while_connected(request: Request, batcher: MicroBatcher, texts: list[str]) -> tuple[np.ndarray, ...]:
    """``batcher.submit(texts)``, cancelled (so its texts leave the queue) if the client disconnects meanwhile.

    The body has been read by then, so the next ``receive()`` only returns when the client goes away.
    """
    work = asyncio.ensure_future(batcher.submit(texts))

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ClientGone()
    return work.result()


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


#: Rows of an embeddings answer rendered at a time (an answer this size or smaller goes out in one piece).
RENDER_ROWS = 128


def render_embeddings(rows: np.ndarray, first: int, encoding_format: str) -> bytes:
    """OpenAI's ``data`` items for ``rows`` (indexes from ``first``) as comma-separated JSON objects.

    Serialized by hand rather than through pydantic: 2,048 x 384 floats through a response model
    would take seconds.
    """
    if encoding_format == "base64":
        data: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows]
    else:
        data = rows.tolist()
    items = [{"object": "embedding", "embedding": e, "index": first + i} for i, e in enumerate(data)]
    return json.dumps(items, separators=(",", ":"))[1:-1].encode()


def bytes_per_vector(dim: int, codec: str) -> int:
    """Storage of one vector of ``dim`` values in ``codec`` (binary packs 8 dimensions per byte)."""
    return math.ceil(dim * CODEC_BITS[codec] / 8)


def count_tokens(model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
    """Tokens the model reads per text: its own tokenizer, special tokens included, cut at ``max_seq_length``."""
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    try:
        if hasattr(tokenizer, "encode_batch"):  # a bare `tokenizers.Tokenizer`, as static models have
            lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
        else:
            kwargs = {"truncation": True, "max_length": limit} if limit else {}
            lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, **kwargs)["input_ids"]]
    except Exception:  # pragma: no cover - a model without a usable tokenizer: count words
        lengths = [len(t.split()) for t in texts]
    counts = np.asarray(lengths, dtype=np.int64)
    return np.minimum(counts, limit) if limit else counts


@dataclass
class ServedModel:
    """One model behind ``/v1/embeddings``, with its own batcher (and worker thread)."""

    name: str
    model: SentenceTransformer
    dim: int
    batcher: MicroBatcher
    created: int

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.name,
            created=self.created,
            dimensions=self.dim,
            max_input_tokens=getattr(self.model, "max_seq_length", None),
        )


def make_batch_function(model: SentenceTransformer, batch_size: int):
    """Full-size float32 vectors (not re-normalized: each request truncates and normalizes its own) and token counts."""

    def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = encode(model, texts, dim=None, normalize=False, batch_size=batch_size, show_progress_bar=False)
        return vectors, count_tokens(model, texts)

    return run


def load_quality(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Read evaluation results into ``{"models": {name: {task: {dim: value}}}}``.

    Each file is either that shape already or a ``matryoshka evaluate`` ``results.json``
    (``{model: {dim: value}, "task": ..., "metric": ...}``), whose task becomes ``"<task> <metric>"``.
    Several files (e.g. one per task) are merged.
    """
    merged: dict[str, dict[str, Any]] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        for model, tasks in quality_models(raw).items():
            merged.setdefault(model, {}).update(tasks)
    return {"models": merged}


def quality_models(raw: Any) -> dict[str, Any]:
    """The ``{name: {task: {dim: value}}}`` part of either results shape (see :func:`load_quality`)."""
    if not isinstance(raw, dict):
        return {}
    if isinstance(raw.get("models"), dict):
        return raw["models"]
    if "task" in raw and "metric" in raw:  # matryoshka.evaluation.Results JSON
        from matryoshka.evaluation.results import RESERVED_KEYS

        label = f"{raw['task']} {raw['metric']}"
        return {
            name: {label: by_dim}
            for name, by_dim in raw.items()
            if name not in RESERVED_KEYS and isinstance(by_dim, dict)
        }
    return {}


def clean_quality(raw: dict[str, Any] | None) -> dict[str, dict[str, dict[str, float]]] | None:
    """Keep the numeric ``{model: {task: {dim: value}}}`` entries; ``None`` when nothing usable is left."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, tasks in quality_models(raw).items():
        if not isinstance(tasks, dict):
            continue
        for task, by_dim in tasks.items():
            if not isinstance(by_dim, dict):
                continue
            points = {}
            for dim, value in by_dim.items():
                try:
                    d, v = int(dim), float(value)
                except (TypeError, ValueError):
                    continue
                if d > 0 and math.isfinite(v):
                    points[str(d)] = v
            if points:
                out.setdefault(str(model), {})[str(task)] = dict(sorted(points.items(), key=lambda kv: int(kv[0])))
    return out or None


def demo_dimensions(
    full_dim: int, quality_dims: Sequence[int] = (), configured: Sequence[int] | None = None
) -> list[int]:
    """Slider stops: configured ones, else the dimensions evaluated, else powers of two from 16; always the full size."""
    if configured:
        dims = {d for d in configured if 0 < d <= full_dim}
    elif quality_dims:
        dims = {d for d in quality_dims if 0 < d <= full_dim}
    else:
        dims = {2**p for p in range(4, 16) if 2**p < full_dim}
    return sorted(dims | {full_dim})


class ServerState:
    """What the handlers share: config, served models, the index and the demo's quality data."""

    def __init__(
        self,
        config: ServeConfig,
        models: dict[str, SentenceTransformer],
        index: FunnelIndex | None,
        quality: dict[str, Any] | None,
        demo_indexes: dict[str, FunnelIndex] | None = None,
    ) -> None:
        self.config = config
        created = int(time.time())
        self.models: dict[str, ServedModel] = {}
        for name, model in models.items():
            batcher = MicroBatcher(
                make_batch_function(model, config.encode_batch_size),
                max_texts=config.batch_max_texts,
                max_wait_ms=config.batch_max_wait_ms,
                max_queued_texts=config.max_queued_texts,
                name=f"encode-{name}"[:15],
            )
            self.models[name] = ServedModel(name, model, model_dimension(model), batcher, created)
        self.default = next(iter(self.models.values()))
        self.index = index
        self.search_model = self.default
        if index is not None:
            self.search_model = self._index_model(getattr(index, "model_name", ""))
            if index.dim > self.search_model.dim:
                raise ValueError(
                    f"index vectors have {index.dim} dims but model {self.search_model.name!r} gives {self.search_model.dim}"
                )
        self.quality = clean_quality(quality)
        self.quality_model = self._quality_model()
        self.started = time.time()
        # The demo's model selector: each choice is a served model and the index of its own vectors.
        self.demo_choices: dict[str, tuple[ServedModel, FunnelIndex]] = {}
        if index is not None:
            self.demo_choices[self.search_model.name] = (self.search_model, index)
        for name, extra in (demo_indexes or {}).items():
            if name not in self.models:
                raise ValueError(f"a demo index is given for {name!r}, which is not a served model")
            self.demo_choices[name] = (self.models[name], extra)

    def demo_choice(self, name: str | None) -> tuple[ServedModel, FunnelIndex]:
        """The demo's model ``name`` (default: the first) with its index, or a 404 naming the choices."""
        self.require_index()
        if name is None:
            return next(iter(self.demo_choices.values()))
        if name not in self.demo_choices:
            raise APIError(404, f"The demo has no model {name!r}; it has {', '.join(self.demo_choices)}.", "model",
                           "model_not_found")
        return self.demo_choices[name]

    def _index_model(self, recorded: str) -> ServedModel:
        """The served model that built the index (by name, source or directory); the default when it names none."""
        from matryoshka.serving.startup import index_model

        if not recorded:
            return self.default
        if recorded in self.models:
            return self.models[recorded]
        alias = index_model(recorded, self.config)  # raises StartupError when no served model matches
        if alias not in self.models:
            raise ValueError(f"the index was built with model {recorded!r}, which is not served")
        return self.models[alias]

    def _quality_model(self) -> str | None:
        if not self.quality:
            return None
        for name in (self.search_model.name, getattr(self.index, "model_name", None)):
            if name in self.quality:
                return name
        return None

    def get_model(self, name: str | None) -> ServedModel:
        if name is None:
            return self.default
        try:
            return self.models[name]
        except KeyError:
            raise APIError(
                404,
                f"The model `{name}` does not exist. Served models: {', '.join(self.models)}.",
                "model",
                "model_not_found",
            ) from None

    def require_index(self) -> FunnelIndex:
        if self.index is None:
            raise APIError(
                404, "No search index is loaded; start the server with --index PATH.", None, "index_not_loaded"
            )
        return self.index

    async def encode_query(
        self, query: str, served: ServedModel | None = None, dim: int | None = None
    ) -> tuple[np.ndarray, int, float]:
        """One query as a ``dim``-wide unit row (default: the search model and the index's width), its
        token count and the milliseconds it took."""
        if not query.strip():
            raise APIError(400, "query must not be empty.", "query", "empty_input")
        if len(query) > self.config.max_input_chars:
            raise APIError(
                400, f"query is longer than {self.config.max_input_chars} characters.", "query", "input_too_long"
            )
        started = time.perf_counter()
        vectors, tokens = await (served or self.search_model).batcher.submit([query])
        row = truncate(vectors, dim or self.require_index().dim)
        return row, int(tokens.sum()), (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        for served in self.models.values():
            await served.batcher.close()


# -- request checks --------------------------------------------------------------------------------


def check_inputs(raw: str | list[Any], config: ServeConfig) -> list[str]:
    """The texts of an embeddings request, or an :class:`APIError` saying what is wrong with them."""
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise APIError(400, "input must not be empty.", "input", "empty_input")

    def is_ids(item: Any) -> bool:
        return (
            isinstance(item, list) and bool(item) and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )

    if is_ids(texts) or all(is_ids(t) for t in texts):
        raise APIError(
            400,
            "Token-id arrays are not supported: this server tokenizes with its own model; send strings.",
            "input",
            "unsupported_input",
        )
    if len(texts) > config.max_inputs:
        raise APIError(
            400, f"input has {len(texts)} items; at most {config.max_inputs} are allowed.", "input", "too_many_inputs"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise APIError(400, f"input[{i}] must be a string, got {type(text).__name__}.", "input", "invalid_type")
        if not text:
            raise APIError(400, f"input[{i}] is an empty string.", "input", "empty_input")
        if len(text) > config.max_input_chars:
            raise APIError(
                400,
                f"input[{i}] has {len(text)} characters; at most {config.max_input_chars} are allowed.",
                "input",
                "input_too_long",
            )
    return texts


def check_dimensions(value: int | None, full_dim: int, param: str = "dimensions") -> int:
    """``value`` if it is a valid Matryoshka prefix length (``None``: full size), else a 400."""
    try:
        return check_dim(value, full_dim)
    except DimensionError:
        message = (
            f"Invalid value for '{param}': {value}; it must be an integer from 1 to {full_dim} (the model's size)."
        )
        raise APIError(400, message, param, "invalid_dimensions") from None


def request_stages(body: SearchRequest, index: FunnelIndex) -> list[Any] | None:
    """The funnel for one search: explicit stages, a preset, or the index's own (``None``); ``dimensions`` sets stage 1.

    A funnel that cannot give ``k`` hits as written (a shortlist keeping fewer than ``k``, keeps that
    grow) is refused with a 400 rather than having its keeps raised behind the caller's back.
    """
    from matryoshka.retrieval import FULL, PRESETS, Stage
    from matryoshka.retrieval.stages import check_keeps

    if body.stages is not None and body.preset is not None:
        raise APIError(400, "Give either stages or preset, not both.", "stages", "invalid_request")
    try:
        if body.stages is not None:
            stages = [Stage(dim=FULL if s.dim == "full" else s.dim, codec=s.codec, keep=s.keep) for s in body.stages]
        elif body.preset is not None:
            if body.preset not in PRESETS:
                message = f"Unknown preset {body.preset!r}; choose one of {', '.join(PRESETS)}."
                raise APIError(400, message, "preset", "invalid_preset")
            stages = list(PRESETS[body.preset])
        else:
            own = getattr(index, "stages", PRESETS["exact"])  # a database backend has no default funnel
            stages = list(own) if body.dimensions is not None else None
        if body.dimensions is not None:
            check_dimensions(body.dimensions, index.dim)
            stages = [dataclasses.replace(stages[0], dim=body.dimensions), *stages[1:]]  # type: ignore[index]
    except ValueError as exc:  # Stage() refuses e.g. a binary stage whose dim is not a multiple of 8
        raise APIError(400, f"Invalid stages: {exc}", "stages", "invalid_stages") from None
    for i, stage in enumerate(stages or []):
        if stage.dim > index.dim:
            message = f"stages[{i}].dim={stage.dim} exceeds the index's {index.dim} dimensions."
            raise APIError(400, message, "stages", "invalid_dimensions")
    effective = stages if stages is not None else getattr(index, "stages", PRESETS["exact"])
    try:
        check_keeps(effective, body.k)
    except ValueError as exc:
        raise APIError(400, f"Invalid stages: {exc}.", "stages", "invalid_stages") from None
    return stages


def check_search_filter(filter: dict[str, Any] | None, index: Any) -> None:
    """A 400 for a malformed filter, or one on a metadata key the (embedded) index never stored."""
    from matryoshka.retrieval.filters import check_filter_keys

    try:
        check_filter(filter)
        if filter and hasattr(index, "metadata_keys"):  # database backends cannot list their keys cheaply
            check_filter_keys(filter, index.metadata_keys())
    except ValueError as exc:
        raise APIError(400, f"Invalid filter: {exc}", "filter", "invalid_filter") from None


def hits_out(hits: Sequence[Any]) -> list[SearchHit]:
    return [SearchHit(rank=i + 1, id=str(h.id), score=float(h.score), text=h.text) for i, h in enumerate(hits)]


def timings_out(timings: Sequence[dict[str, Any]]) -> list[StageTiming]:
    return [
        StageTiming(
            dim=int(t["dim"]),
            codec=str(t["codec"]),
            keep=int(t["keep"]),
            candidates=int(t["candidates"]),
            ms=round(float(t["seconds"]) * 1000, 3),
            bytes_per_vector=bytes_per_vector(int(t["dim"]), str(t["codec"])),
        )
        for t in timings
    ]


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """Turn FastAPI's validation errors into one OpenAI-style message and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request. Send valid JSON with Content-Type: application/json.",
            None,
        )
    if first.get("type") == "model_attributes_type" or not loc:
        return "The request body must be a JSON object.", None
    param = loc[0]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{where}'.", param
    return f"Invalid value for '{where}': {message}.", param


# -- the app ---------------------------------------------------------------------------------------


def create_app(
    config: ServeConfig,
    models: dict[str, SentenceTransformer] | None = None,
    index: FunnelIndex | None = None,
    quality: dict[str, Any] | None = None,
    demo_indexes: dict[str, FunnelIndex] | None = None,
) -> FastAPI:
    """Build the server.

    Args:
        config: limits, batching and, when ``models``/``index``/``quality`` are not given, what to load.
        models: served name -> loaded model; default: load every entry of ``config.models``.
        index: the funnel index ``/v1/search`` and the demo search; default: ``config.index_path`` if set.
        quality: evaluation results ``{"models": {name: {task: {dim: value}}}}`` for the demo's chart;
            default: ``config.results_path`` if set.
        demo_indexes: more choices for the demo's model selector: served model name -> the index of
            that model's vectors of the same documents (``index`` is the first choice).
    """
    from matryoshka.serving.startup import index_model, load_results, open_index

    # What can fail without the model is tried first, so a bad index or results file costs no model load.
    if index is None and config.index_path:
        index = open_index(config.index_path)
    if index is not None and models is None:
        index_model(getattr(index, "model_name", ""), config)
    if quality is None and config.results_path:
        quality = load_results(config)
    if models is None:
        from matryoshka.models import load_model

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
            results, timings = await run_in_threadpool(timed_search, index, query, body.k, stages, body.filter)
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
            bytes_per_vector=stage_out[0].bytes_per_vector if stage_out else bytes_per_vector(index.dim, "float32"),
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
    @app.get("/demo/api/info", responses=errors)  # type: ignore[arg-type]
    async def demo_info() -> DemoInfo:
        index = state.require_index()
        quality_dims: list[int] = []
        if state.quality and state.quality_model:
            quality_dims = sorted({int(d) for task in state.quality[state.quality_model].values() for d in task})
        return DemoInfo(
            model=state.search_model.name,
            models=list(state.demo_choices),
            full_dim=index.dim,
            dims=demo_dimensions(index.dim, quality_dims, config.demo_dims),
            codecs=list(CODEC_BITS),
            index_size=len(index),
            index_dim=index.dim,
            quality=state.quality,
            quality_model=state.quality_model,
            examples=DEMO_EXAMPLES,
        )

    @app.post("/demo/api/compare", responses=errors)  # type: ignore[arg-type]
    async def demo_compare(body: CompareRequest) -> CompareResponse:
        """Top ``k`` at the chosen dimension next to top ``k`` at full size, for one query."""
        from matryoshka.retrieval import Stage

        served, index = state.demo_choice(body.model)
        dim = check_dimensions(body.dim, index.dim, "dim")
        query, _, encode_ms = await state.encode_query(body.query, served, index.dim)

        try:
            chosen_stage = Stage(dim=dim, codec=body.codec, keep=body.k)
        except ValueError as exc:  # e.g. binary at a dim that is not a multiple of 8
            raise APIError(400, str(exc), "dim", "invalid_stages") from None

        def side(stage: Stage) -> CompareSide:
            results, timings = index.search_with_timings(query, body.k, [stage])
            stage_dim, codec = int(timings[0]["dim"]), str(timings[0]["codec"])
            per_vector = bytes_per_vector(stage_dim, codec)
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
