"""Run the app with uvicorn: in the foreground (``matryoshka serve``) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from matryoshka.errors import StartupError
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.http.header_deadline import header_timeout_protocol

#: Seconds uvicorn waits for requests in flight when asked to stop (SIGINT/SIGTERM) before closing them.
GRACEFUL_SHUTDOWN_S = 10


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> uvicorn.Config:
    """Uvicorn settings we always want: our own JSON access log instead of uvicorn's, graceful shutdown,
    and the header deadline and keep-alive limit of the app's :class:`ServeConfig` (the body deadline is
    the app's own middleware)."""
    settings = getattr(app.state, "serving", None)
    config = settings.config if settings is not None else ServeConfig()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=config.timeout_keep_alive_s,  # type: ignore[arg-type]  # used as a float by call_later
        http=header_timeout_protocol(config.timeout_header_s),
        lifespan="on",
    )


class ServerThread:
    """A uvicorn server on a free loopback port in a daemon thread; use as a context manager.

    The socket is bound before the thread starts, so there is no race for the port, and ``__enter__``
    returns only when the app's startup (model warm-up) has finished.

    Example:
        >>> with ServerThread(app) as server:
        ...     httpx.get(server.url + "/health")
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning", startup_timeout: float = 120.0
    ) -> None:
        # IPPROTO_TCP: asyncio then sets TCP_NODELAY on each connection (see startup.bind_socket)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=self.port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise StartupError("the server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {self.startup_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
