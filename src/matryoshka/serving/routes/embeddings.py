"""``POST /v1/embeddings``: OpenAI's embeddings, with Matryoshka ``dimensions``."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from matryoshka.embeddings.vectors import quantize, truncate
from matryoshka.serving.checks import check_dimensions, check_inputs, check_precision
from matryoshka.serving.demo.render import RENDER_ROWS, render_embeddings
from matryoshka.serving.schemas import ERROR_RESPONSES, EmbeddingRequest, EmbeddingResponse
from matryoshka.serving.state import State

__all__ = ["router"]

router = APIRouter()

#: Answers of at most this many numbers are rendered on the event loop; larger ones in a worker thread.
INLINE_VALUES = 4096


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, request: Request, state: State) -> Response:
    """Embed strings with a served model, optionally cut to ``dimensions`` (re-normalized) and quantized to
    ``precision``; with ``--strict-dimensions`` only to one of the model's ``matryoshka_dimensions``."""
    served = state.get_model(body.model)
    texts = check_inputs(body.input, state.config)
    dim = check_dimensions(body.dimensions, served.dim)
    check_precision(body.precision, dim)
    if state.config.strict_dimensions:
        served.check_safe(body.dimensions)
    vectors, tokens = await served.vectors(texts, request)

    rows = quantize(truncate(vectors, dim), body.precision)
    total = int(tokens.sum())
    head = b'{"object":"list","data":['
    usage = {"model": served.name, "usage": {"prompt_tokens": total, "total_tokens": total}}
    tail = b"]," + json.dumps(usage, separators=(",", ":"))[1:].encode()
    if rows.size <= INLINE_VALUES:  # a few rows render in well under a millisecond: not worth a thread hop
        return Response(head + render_embeddings(rows, 0, body.encoding_format) + tail, media_type="application/json")
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
