"""Where a Qdrant URL points, and the client for it: a server, or qdrant-client's local mode shared per directory.

URLs (no secrets: the API key comes from the ``QDRANT_API_KEY`` environment variable only)::

    qdrant://HOST[:PORT]/COLLECTION      server over HTTP (port 6333 unless given; ?timeout=SECONDS)
    qdrants://HOST[:PORT]/COLLECTION     server over HTTPS
    qdrant+local:///abs/dir?collection=NAME     qdrant-client local mode, stored in a directory
    qdrant+local:relative/dir?collection=NAME   (collection defaults to ``matryoshka``)
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from matryoshka.errors import EngineError, InputError, MissingDependencyError

try:
    from qdrant_client import QdrantClient
    from qdrant_client.common.client_exceptions import QdrantException
    from qdrant_client.http.exceptions import ApiException
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependencyError("the Qdrant backend needs qdrant-client: pip install 'matryoshka[qdrant]'") from exc


DEFAULT_COLLECTION = "matryoshka"
DEFAULT_PORT = 6333
API_KEY_ENV = "QDRANT_API_KEY"
_SERVER_SCHEMES = {"qdrant": False, "qdrants": True}
_LOCAL_SCHEME = "qdrant+local"
_SECRET_PARAMS = {"api_key", "apikey", "api-key", "key", "token", "password"}


@dataclass(frozen=True)
class QdrantTarget:
    """Where a backend URL points: a server (``host``, ``port``, ``https``) or a local-mode ``path``."""

    collection: str
    host: str | None = None
    port: int | None = None
    https: bool = False
    path: str | None = None
    timeout: int | None = None

    @property
    def local(self) -> bool:
        """Whether this is qdrant-client's in-process local mode."""
        return self.path is not None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`qdrant_client.QdrantClient`; building it does not connect.

        The server's version check is off (it would connect in a background thread); the API key
        is read from ``QDRANT_API_KEY`` here, so it never appears in a URL or an error message.
        """
        if self.path is not None:
            # Calls are serialized by the shared connection's lock, so any thread may use the SQLite store.
            return {"path": self.path, "force_disable_check_same_thread": True}
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "https": self.https,
            "check_compatibility": False,
        }
        if self.timeout is not None:
            options["timeout"] = self.timeout
        api_key = os.environ.get(API_KEY_ENV)
        if api_key:
            options["api_key"] = api_key
        return options


def parse_url(url: str) -> QdrantTarget:
    """Parse a ``qdrant://``, ``qdrants://`` or ``qdrant+local:`` URL (see the module docstring).

    Raises:
        InputError: another scheme, a missing host or path, credentials or an API key in the URL,
            a collection path with slashes, or an unknown query parameter.
    """
    if not isinstance(url, str) or not url.strip():
        raise InputError("empty Qdrant URL; expected qdrant://HOST:PORT/COLLECTION or qdrant+local:///DIR")
    raw, url = url.strip(), _redact(url.strip())  # error messages show `url`, which holds no secrets
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"bad Qdrant URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SERVER_SCHEMES and scheme != _LOCAL_SCHEME:
        raise InputError(
            f"bad Qdrant URL {url!r}: the scheme must be qdrant://, qdrants:// or qdrant+local:, got {parts.scheme!r}"
        )
    if parts.fragment:
        raise InputError(f"bad Qdrant URL {url!r}: no '#' fragment allowed")
    query = _query_params(url, parts.query, allowed={"timeout"} if scheme in _SERVER_SCHEMES else {"collection"})
    if scheme == _LOCAL_SCHEME:
        if parts.netloc:
            raise InputError(
                f"bad Qdrant URL {url!r}: a local-mode URL names a directory, e.g. qdrant+local:///abs/dir "
                "(three slashes) or qdrant+local:relative/dir"
            )
        path = unquote(parts.path)
        if not path:
            raise InputError(f"bad Qdrant URL {url!r}: no directory given")
        return QdrantTarget(collection=_collection_name(url, query.get("collection", DEFAULT_COLLECTION)), path=path)
    if parts.username is not None or parts.password is not None:
        raise InputError(f"bad Qdrant URL: credentials do not belong in the URL; set {API_KEY_ENV} instead")
    if not parts.hostname:
        raise InputError(f"bad Qdrant URL {url!r}: no host given")
    collection = unquote(parts.path.strip("/")) or DEFAULT_COLLECTION
    timeout = None
    if "timeout" in query:
        try:
            timeout = int(query["timeout"])
        except ValueError:
            timeout = 0
        if timeout < 1:
            raise InputError(f"bad Qdrant URL {url!r}: timeout must be a positive number of seconds")
    return QdrantTarget(
        collection=_collection_name(url, collection),
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        https=_SERVER_SCHEMES[scheme],
        timeout=timeout,
    )


def _redact(url: str) -> str:
    """``url`` with user info and secret-looking query values masked, for error messages."""
    url = re.sub(r"//[^/?#]*@", "//***@", url)
    return re.sub(r"([?&](?:api[_-]?key|apikey|key|token|password)=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _query_params(url: str, query: str, allowed: set[str]) -> dict[str, str]:
    """The URL's query parameters, each at most once and from ``allowed``; never a secret."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InputError(f"bad Qdrant URL {url!r}: malformed query string") from None
    out = {}
    for key, values in params.items():
        if key.lower() in _SECRET_PARAMS:
            raise InputError(f"bad Qdrant URL: do not put {key!r} in the URL; set {API_KEY_ENV} instead")
        if key not in allowed:
            raise InputError(
                f"bad Qdrant URL {url!r}: unknown parameter {key!r} (allowed: {', '.join(sorted(allowed))})"
            )
        if len(values) != 1:
            raise InputError(f"bad Qdrant URL {url!r}: {key!r} is given more than once")
        out[key] = values[0]
    return out


def _collection_name(url: str, name: str) -> str:
    """Check a collection name: non-empty, no path separators."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InputError(f"bad Qdrant URL {url!r}: the collection name must be one non-empty path segment, got {name!r}")
    return name


@dataclass
class _Connection:
    """A client and the lock its calls take; local-mode clients are shared per directory (see :func:`_connect`)."""

    client: QdrantClient
    lock: contextlib.AbstractContextManager[Any]
    key: str | None = None
    users: int = 1

    def release(self) -> None:
        """Drop one user; the last one closes the client (and frees a local directory)."""
        if self.key is None:
            self.client.close()
            return
        with _LOCAL_GUARD:
            self.users -= 1
            if self.users > 0:
                return
            _LOCAL.pop(self.key, None)
        with self.lock:
            self.client.close()


_LOCAL: dict[str, _Connection] = {}
_LOCAL_GUARD = threading.Lock()


def _connect(target: QdrantTarget, url: str) -> _Connection:
    """A connection for ``target``: a new client for a server, the process's shared one for a local directory.

    qdrant-client's local mode locks its directory for a single client, so every backend of this
    process on one directory (any collection) shares one client, and their calls take its lock.

    Raises:
        EngineError: the client cannot be built, e.g. another process holds the local directory.
    """
    try:
        if target.path is None:
            return _Connection(QdrantClient(**target.client_options()), contextlib.nullcontext())
        key = os.path.realpath(target.path)
        with _LOCAL_GUARD:
            shared = _LOCAL.get(key)
            if shared is None:
                shared = _LOCAL[key] = _Connection(QdrantClient(**target.client_options()), threading.RLock(), key, 0)
            shared.users += 1
            return shared
    except (ApiException, QdrantException, OSError, RuntimeError) as exc:
        raise EngineError(f"cannot open Qdrant at {url}: {exc}") from exc


