"""Start-up checks for ``matryoshka serve``: everything that can fail is tried before the model loads.

Each check raises :class:`StartupError` with one line naming the cause, so the command can print it
and exit non-zero before any "serving on" line: a busy port, a missing model directory, an index that
is corrupt or was built with a model that is not served, an unreadable results file.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matryoshka.errors import MatryoshkaError, StartupError
from matryoshka.serving.config import ServeConfig

if TYPE_CHECKING:
    from matryoshka.retrieval.protocol import VectorIndex


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` now, so a busy port is reported before minutes of model loading.

    The socket is handed to uvicorn (``Server.run(sockets=[...])``), so there is no window in which
    another process can take the port between this check and serving. It is made with ``IPPROTO_TCP``:
    asyncio sets ``TCP_NODELAY`` only on connections whose socket says so, and without it every answer on
    a kept-alive connection waited about 40 ms (Nagle's algorithm held the body until the client's
    delayed ACK of the headers).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use; stop the other server or pass --port") from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"no permission to listen on {host}:{port} (ports below 1024 need root)") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check_model_sources(config: ServeConfig) -> None:
    """Refuse a model given as a path that does not exist (hub names are only known once loaded), and an
    adaptor file that cannot be read (an upstream is only known once called)."""
    if config.adaptor is not None:
        from matryoshka.serving.served import config_labels

        config_labels(config)  # reads the adaptor: a StartupError naming it
    if config.upstream is not None:
        return
    for alias, source in config.model_specs():
        looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
        if looks_like_path and not Path(source).expanduser().exists():
            raise StartupError(f"model {alias!r}: no such directory {source}")


def open_served_index(url: str) -> VectorIndex:
    """Open (read-only) the index a server searches: a directory or any index URL; one-line errors."""
    from matryoshka.indexes import open_index

    try:
        return open_index(url, create=False)
    except FileNotFoundError as exc:
        raise StartupError(f"--index: {exc}") from None
    except (MatryoshkaError, OSError) as exc:
        raise StartupError(f"--index {url}: {exc}") from None


def serve_index_model(config: ServeConfig, index: VectorIndex) -> ServeConfig:
    """``config`` serving the model ``index`` records when no model was asked for (``serve --index DIR``
    without ``--model``), as ``index search`` loads it; unchanged when models or an upstream were given or
    the index records none (then the default model is served).

    Raises:
        StartupError: the index was built through an upstream API, which needs ``--upstream`` (and its key).
    """
    from matryoshka.serving.served import upstream_of_label

    if "models" in config.model_fields_set or config.upstream is not None or not index.model_name:
        return config
    upstream = upstream_of_label(index.model_name)
    if upstream is not None:
        raise StartupError(
            f"the index was built through the upstream API {upstream[0]} (model {upstream[1]!r}); serve it with "
            f"--upstream {upstream[0]} --upstream-model {upstream[1]} (and --upstream-key-env if it needs a key)"
        )
    return config.model_copy(update={"models": [index.model_name]})


def check_index_model(index: VectorIndex, config: ServeConfig) -> str | None:
    """The served name of the model that built ``index`` (``None``: it records none and one model is served).

    Matching is by :func:`~matryoshka.models.identity.model_label`: the index records the label, each
    served model's source has one (an upstream's is ``<url>#<model>``); an adapted model also matches an
    index of its base's vectors, which the server maps on start. There is no fallback to the default model.

    Raises:
        StartupError: the index's model is not served, or it records none while several are.
    """
    from matryoshka.errors import ModelError
    from matryoshka.serving.served import config_labels
    from matryoshka.serving.state import index_model

    labels, bases = config_labels(config)
    try:
        return index_model(index.model_name, labels, allow_unnamed=len(labels) == 1, bases=bases)
    except ModelError as exc:
        raise StartupError(str(exc)) from None


def load_results(config: ServeConfig) -> dict[str, Any] | None:
    """Read the demo's quality results files, if any; one-line errors."""
    if not config.results_path:
        return None
    from matryoshka.serving.quality import load_quality

    try:
        return load_quality(config.results_path)
    except (OSError, ValueError) as exc:  # ValueError: json's or UTF-8's parse error, made a StartupError here
        raise StartupError(f"--results: {exc}") from None


#: glibc ``mallopt`` parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> bool:
    """Keep a long-running server's memory from creeping (glibc only; a no-op elsewhere). Returns whether it applied.

    Why: every thread that allocates (the model's worker, the thread pool rendering answers) gets
    its own glibc arena, and glibc raises its mmap threshold each time a large block is freed, so
    the buffers of large requests (tens of MB of texts, vectors and JSON) end up carved from
    arenas that fragment and are never given back. The soak measured RSS +14% in 110 s of mixed load
    without this and -0.4% with it (``MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072``, which is what
    this sets, from inside the process, before the model and the threads start).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


def load_served_model(
    source: str | None, backend: str = "auto", quantize: str | None = None, log: Any = None
) -> tuple[Any, str]:
    """Load a model to serve on ``backend``; ``auto`` takes the fastest backend that agrees with torch
    (cosine >= 0.99 on fixed texts, :func:`matryoshka.models.loading.load_fastest`). Returns ``(model, backend label)``."""
    from matryoshka.models.loading import load_fastest, load_model
    from matryoshka.models.runtime import backend_label, check_backend

    if backend == "auto":
        if quantize is not None:
            raise StartupError("--quantize needs an explicit --backend onnx or openvino (auto picks its own)")
        model, label, _ = load_fastest(source, log=log)
        return model, label
    check_backend(backend, quantize)
    model = load_model(source, backend=backend, quantize=quantize)
    return model, backend_label(model)
