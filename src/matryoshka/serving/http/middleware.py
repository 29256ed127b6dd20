"""Plain ASGI middleware: request log, API key, body-size limit and body-read deadline.

They are ASGI rather than FastAPI dependencies so that they act before the body is parsed: a request
with a wrong key gets 401 even if its JSON is broken, and a 2 GB body is refused without being read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("matryoshka.serving")


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error JSON as bytes."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response from middleware."""
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


#: Status logged for a request whose client hung up before an answer was sent (nginx's convention).
CLIENT_CLOSED = 499


class RequestLogMiddleware:
    """Log one JSON line per HTTP request: method, path, status, milliseconds, request id.

    A client that goes away before the answer (a partial body then a close, a body shorter than its
    ``Content-Length``) is logged as ``499`` with ``"client_closed": true``, not as a server error.
    """

    def __init__(self, app: ASGIApp, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        disconnected = False
        request_id = uuid.uuid4().hex[:16]

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive_watching, send_with_status)
        except Exception as exc:
            error = exc
        client_closed = (status is None and disconnected) or status == CLIENT_CLOSED
        if status is None:
            status = CLIENT_CLOSED if disconnected else 500  # 500: what the client sees if the app died
        extra: dict[str, Any] = {
            "event": "request",
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "request_id": request_id,
        }
        if client_closed:
            extra["client_closed"] = True
        logger.info("client closed" if client_closed else "request", extra=extra)
        if error is not None and not client_closed:
            raise error


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on paths under ``protected`` (when a key is configured)."""

    def __init__(self, app: ASGIApp, api_key: str | None, protected: tuple[str, ...] = ("/v1/", "/demo/api/")) -> None:
        self.app = app
        self.api_key = api_key
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key or not str(scope.get("path", "")).startswith(self.protected):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if not auth:
            message = "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        elif scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            message = "Incorrect API key provided."
        else:
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, error_body(message, code="invalid_api_key"), [(b"www-authenticate", b"Bearer")])


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``, by ``Content-Length`` or while reading a chunked body,
    and 408 (closing the connection) to a body that is not complete ``timeout_s`` after the headers.

    The body is read whole before the app runs (the app needs all of it to parse JSON anyway) and
    replayed to the app, so an oversized body never reaches the JSON parser. The deadline is for the
    whole body, not for each read, so a client that trickles a byte at a time cannot hold a connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error_body(
            f"Request body is larger than the limit of {self.max_bytes} bytes.", code="request_too_large"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, error_body("Invalid Content-Length header."))
                return
            if declared > self.max_bytes:
                await send_json(send, 413, too_big)
                return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), None if deadline is None else max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                message_text = f"The request body did not arrive within {self.timeout_s:g} s."
                await send_json(
                    send, 408, error_body(message_text, code="request_timeout"), [(b"connection", b"close")]
                )
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await send_json(send, 413, too_big)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class JsonBodyMiddleware:
    """Treat every request body as JSON, whatever its ``Content-Type``.

    OpenAI's API does; ``curl -d '{...}'`` without ``-H 'Content-Type: application/json'`` sends form
    encoding, which FastAPI would otherwise refuse with a confusing "body must be an object".
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class JsonLogFormatter(logging.Formatter):
    """Format records as one JSON object per line, with the ``extra`` fields the middleware adds."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
        "taskName",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send ``matryoshka.serving`` and uvicorn's own logs to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    for name in ("matryoshka.serving", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(level)
        log.propagate = False
