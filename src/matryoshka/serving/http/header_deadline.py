"""uvicorn's HTTP protocol with a deadline for request headers (slowloris protection).

Why a subclass: of the three ASGI servers, uvicorn (which we already run, in-process, in tests and in
``matryoshka serve``) has a keep-alive timeout but no limit on how long a client may take to send its
headers or body; hypercorn's ``read_timeout`` limits each single read, so a client that trickles one
byte every few seconds never trips it; granian has a header-read timeout but runs the app in its own
Rust workers, which we cannot start in a thread next to the tests, and has no body deadline either.
So we keep uvicorn, give each request a *total* header deadline here (about forty lines), and the
body deadline in :class:`~matryoshka.serving.http.middleware.BodyLimitMiddleware`.

The deadline is a mixin over uvicorn's two parsers: ``httptools`` (C, uvicorn's choice when installed, as
it is with this package) and ``h11`` (pure Python). A request through httptools costs about a millisecond
less on this machine's cores, which is most of what a proxy in front of an embeddings API adds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 still serves without it
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

logger = logging.getLogger("matryoshka.serving")

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_TIMEOUT_BODY = (
    b'{"error": {"message": "The request headers did not arrive in time.", "type": "invalid_request_error", '
    b'"param": null, "code": "request_timeout"}}'
)


_Base: Any = H11Protocol if TYPE_CHECKING else object  # the mixin uses the protocol's cycle, loop, transport


class HeaderDeadline(_Base):
    """A uvicorn protocol that answers 408 and closes when a request's headers take over ``header_timeout`` s.

    The clock starts at the first byte of each request (the wait between requests on a kept-alive
    connection is uvicorn's own ``timeout_keep_alive``). Use :func:`header_timeout_protocol` to set it.
    """

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._seen_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is covered too

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # the headers are complete
            self._seen_cycle = self.cycle
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        logger.info("request", extra={"event": "timeout", "phase": "headers", "status": 408, "client": client})
        self.transport.write(_TIMEOUT_RESPONSE % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
        self.transport.close()


def header_timeout_protocol(
    seconds: float, parser: Literal["auto", "httptools", "h11"] = "auto"
) -> type[asyncio.Protocol]:
    """uvicorn's protocol class (``parser``: ``httptools``, ``h11``, or ``auto``: httptools when installed)
    with a :class:`HeaderDeadline` of ``seconds``, for ``uvicorn.Config(http=...)``."""
    use_httptools = parser == "httptools" or (parser == "auto" and HttpToolsProtocol is not None)
    base = HttpToolsProtocol if use_httptools else H11Protocol
    name = f"HeaderDeadline{base.__name__}"
    return type(name, (HeaderDeadline, base), {"header_timeout": float(seconds)})
