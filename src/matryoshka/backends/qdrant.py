"""Qdrant backend: the funnel as one Query API request, on a Qdrant server or in qdrant-client's local mode.

Each document is one point with named vectors:

* ``full``: the full unit vector (cosine). It re-ranks every funnel and answers exact searches, so
  it gets no HNSW graph (``m=0``): those searches scan it, which is what they ask for.
* ``prefix_{d}``: the first ``d`` values re-normalized, one per configured prefix dim (cosine, with
  the server's default HNSW index, which the shortlist uses).

With ``binary=True`` (the default) every named vector also carries binary quantization kept in RAM,
so a ``binary`` shortlist stage reads sign bits (1 bit per dim) instead of floats; a binary stage
on the full dim reads the quantized ``full`` vector, so the ``binary`` preset works too.

A funnel ``[Stage(d, codec, keep), Stage(FULL, "float32", k)]`` becomes one request: a ``prefetch``
on ``prefix_{d}`` keeps ``keep`` candidates, and the main query re-scores them with ``full``.
``stages=None`` is an exact scan of ``full``. Point ids are ``uuid5`` of the document id (Qdrant
only accepts integers and UUIDs); the payload holds ``id``, ``text`` and the flat ``metadata``
object, so a filter ``{"lang": "en"}`` becomes the condition ``metadata.lang == "en"``.

URLs (no secrets: the API key comes from the ``QDRANT_API_KEY`` environment variable only)::

    qdrant://HOST[:PORT]/COLLECTION      server over HTTP (port 6333 unless given; ?timeout=SECONDS)
    qdrants://HOST[:PORT]/COLLECTION     server over HTTPS
    qdrant+local:///abs/dir?collection=NAME     qdrant-client local mode, stored in a directory
    qdrant+local:relative/dir?collection=NAME   (collection defaults to ``matryoshka``)

Local mode runs in this process (no server needed; the tests use it). It always scans with exact
float arithmetic: it ignores quantization, HNSW settings and search params, so a ``binary`` stage
behaves like a float one there; ties in score come back in no guaranteed order (on a server too),
and it suits up to some ten thousand points. One process at a time may open a local directory
(backends of that process on it share one client).

Replacing every document (:meth:`QdrantIndex.replace_all`, what ``matryoshka index build`` runs):
Qdrant has no transactions, so the documents are loaded into a new collection and the name is then
moved to it, as an alias, in one request that Qdrant applies atomically: searches see the old
documents or all of the new ones, and a failed load leaves the old collection. The one exception is
the first replacement of a plain collection (one that no replacement made), which no alias request
can replace: it is deleted and the alias created right after, and searches in between fail with an
error (they never answer with nothing found).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from matryoshka.backends.base import check_batch, funnel_shape, prefix_only, whole_funnel_timings
from matryoshka.errors import BackendError
from matryoshka.retrieval.filters import Filter, Metadata, check_filter
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import PRESETS, Stage, format_stages, parse_stages, validate_stages
from matryoshka.retrieval.types import Hit, StageTiming

try:
    from qdrant_client import QdrantClient, models
    from qdrant_client.common.client_exceptions import QdrantException
    from qdrant_client.http.exceptions import ApiException
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the Qdrant backend needs qdrant-client: pip install 'matryoshka[qdrant]'") from exc

__all__ = ["API_KEY_ENV", "DEFAULT_COLLECTION", "DEFAULT_PREFIX_DIMS", "QdrantIndex", "QdrantTarget", "parse_url", "point_id"]

FORMAT = "matryoshka-qdrant"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "matryoshka"
DEFAULT_PORT = 6333
#: Prefix vectors a new collection stores (those shorter than its dim); a funnel can only shortlist on these.
DEFAULT_PREFIX_DIMS = (64, 128)
API_KEY_ENV = "QDRANT_API_KEY"
FULL_VECTOR = "full"
PREFIX_VECTOR = "prefix_{}"
#: Namespace of the point UUIDs; changing it orphans every stored point.
ID_NAMESPACE = uuid.UUID("9200355a-b317-5779-80f9-cc8a3b49d619")
_WRITE_BATCH = 256
#: Names the collections :meth:`QdrantIndex.replace_all` loads: ``{collection}--build-{12 hex digits}``.
_BUILD_MARK = "--build-"
_QUERY_BATCH = 64
_ID_BATCH = 1000
_PAYLOAD_FIELDS = ["id", "text"]
_PREFIX_NAME = re.compile(r"prefix_([1-9][0-9]*)")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SERVER_SCHEMES = {"qdrant": False, "qdrants": True}
_LOCAL_SCHEME = "qdrant+local"
_SECRET_PARAMS = {"api_key", "apikey", "api-key", "key", "token", "password"}

# Exact search scans the original full vectors; the re-rank reads originals, never quantized codes.
_EXACT = models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))
_RERANK = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=True))
# A binary shortlist reads only the sign bits: no rescoring with originals (the re-rank does that).
# `exact` stays off there, since an exact search on the server skips quantized vectors.
_BINARY_SHORTLIST = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=False, rescore=False))
_FLOAT_SHORTLIST = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=True))


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
        ValueError: another scheme, a missing host or path, credentials or an API key in the URL,
            a collection path with slashes, or an unknown query parameter.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("empty Qdrant URL; expected qdrant://HOST:PORT/COLLECTION or qdrant+local:///DIR")
    raw, url = url.strip(), _redact(url.strip())  # error messages show `url`, which holds no secrets
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad Qdrant URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SERVER_SCHEMES and scheme != _LOCAL_SCHEME:
        raise ValueError(
            f"bad Qdrant URL {url!r}: the scheme must be qdrant://, qdrants:// or qdrant+local:, got {parts.scheme!r}"
        )
    if parts.fragment:
        raise ValueError(f"bad Qdrant URL {url!r}: no '#' fragment allowed")
    query = _query_params(url, parts.query, allowed={"timeout"} if scheme in _SERVER_SCHEMES else {"collection"})
    if scheme == _LOCAL_SCHEME:
        if parts.netloc:
            raise ValueError(
                f"bad Qdrant URL {url!r}: a local-mode URL names a directory, e.g. qdrant+local:///abs/dir "
                "(three slashes) or qdrant+local:relative/dir"
            )
        path = unquote(parts.path)
        if not path:
            raise ValueError(f"bad Qdrant URL {url!r}: no directory given")
        return QdrantTarget(collection=_collection_name(url, query.get("collection", DEFAULT_COLLECTION)), path=path)
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"bad Qdrant URL: credentials do not belong in the URL; set {API_KEY_ENV} instead")
    if not parts.hostname:
        raise ValueError(f"bad Qdrant URL {url!r}: no host given")
    collection = unquote(parts.path.strip("/")) or DEFAULT_COLLECTION
    timeout = None
    if "timeout" in query:
        try:
            timeout = int(query["timeout"])
        except ValueError:
            timeout = 0
        if timeout < 1:
            raise ValueError(f"bad Qdrant URL {url!r}: timeout must be a positive number of seconds")
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
        raise ValueError(f"bad Qdrant URL {url!r}: malformed query string") from None
    out = {}
    for key, values in params.items():
        if key.lower() in _SECRET_PARAMS:
            raise ValueError(f"bad Qdrant URL: do not put {key!r} in the URL; set {API_KEY_ENV} instead")
        if key not in allowed:
            raise ValueError(
                f"bad Qdrant URL {url!r}: unknown parameter {key!r} (allowed: {', '.join(sorted(allowed))})"
            )
        if len(values) != 1:
            raise ValueError(f"bad Qdrant URL {url!r}: {key!r} is given more than once")
        out[key] = values[0]
    return out


def _collection_name(url: str, name: str) -> str:
    """Check a collection name: non-empty, no path separators."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"bad Qdrant URL {url!r}: the collection name must be one non-empty path segment, got {name!r}")
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
        BackendError: the client cannot be built, e.g. another process holds the local directory.
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
        raise BackendError(f"cannot open Qdrant at {url}: {exc}") from exc


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID string) of a document id: ``uuid5`` in a fixed namespace."""
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


class QdrantIndex(VectorIndex):
    """A :class:`~matryoshka.retrieval.protocol.VectorIndex` on one Qdrant collection.

    Open it with :meth:`open`. Attributes: ``dim``, ``model_name``, ``url`` (as given; it holds no
    secrets), ``collection``, ``prefix_dims`` (the ``prefix_{d}`` vectors stored), ``binary``
    (whether they carry binary quantization), ``local`` (local mode) and ``client`` (the
    :class:`~qdrant_client.QdrantClient`, for administration).
    """

    def __init__(
        self,
        connection: _Connection,
        target: QdrantTarget,
        url: str,
        dim: int,
        model_name: str,
        prefix_dims: Sequence[int],
        binary: bool,
        stages: Sequence[Stage] | None = None,
    ) -> None:
        """Wrap an open connection and an existing collection; use :meth:`open` rather than this."""
        self.client = connection.client
        self._connection = connection
        self._closed = False
        self.url = url
        self.collection = target.collection
        self.local = target.local
        self.dim = dim
        self.model_name = model_name
        self.prefix_dims = tuple(sorted(prefix_dims))
        self.binary = binary
        self._stages = validate_stages(stages, dim) if stages else list(PRESETS["exact"])

    @classmethod
    def open(
        cls,
        url: str,
        dim: int | None = None,
        model_name: str = "",
        create: bool = True,
        prefix_dims: Sequence[int] = DEFAULT_PREFIX_DIMS,
        binary: bool = True,
        stages: Sequence[Stage] | str | None = None,
    ) -> QdrantIndex:
        """Open the collection at ``url``, creating it (with ``dim``) when missing and ``create`` is set.

        ``stages`` is the default funnel to record (needs ``create``). ``prefix_dims`` and ``binary``
        shape a new collection; prefix dims not shorter than ``dim``
        are skipped (the ``full`` vector serves them). On reopening, the collection's own layout
        and stored model name win, and a different ``dim`` or ``model_name`` is refused.

        Raises:
            ValueError: a bad URL or argument, a missing ``dim`` for a new collection, a mismatch
                with the stored dim or model, or a collection that matryoshka did not create.
            BackendError: the server is unreachable or refuses, the local directory is in use by
                another process, or the collection is missing and ``create`` is false.
        """
        target = parse_url(url)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(model_name, str):
            raise ValueError(f"model_name must be a string, got {model_name!r}")
        wanted_prefixes = _prefix_dims(prefix_dims, dim) if dim is not None else None
        plan = parse_stages(stages) if isinstance(stages, str) else (list(stages) if stages is not None else None)
        if plan is not None and not create:
            raise ValueError("stages needs create=True (recording the default funnel writes)")
        connection = _connect(target, url)
        client = connection.client
        try:
            with connection.lock, _engine_errors(url, "open the collection"):
                exists = client.collection_exists(target.collection)
                info = client.get_collection(target.collection) if exists else None
            if info is not None:
                backend = cls._existing(connection, target, url, info, dim, model_name)
                if plan is not None and validate_stages(plan, backend.dim) != backend._stages:
                    backend._stages = validate_stages(plan, backend.dim)
                    with backend._engine("record the default funnel"):
                        client.update_collection(target.collection, metadata=backend._metadata())
            elif not create:
                raise BackendError(
                    f"no collection {target.collection!r} at {url}: build it with `matryoshka index build --corpus "
                    "... --out URL` (from Python: open it with create=True and dim=...)"
                )
            elif dim is None or wanted_prefixes is None:
                raise ValueError(f"collection {target.collection!r} does not exist yet; pass dim to create it")
            else:
                backend = cls(connection, target, url, dim, model_name, wanted_prefixes, bool(binary), plan)
                backend._create()
        except BaseException:
            connection.release()
            raise
        return backend

    @classmethod
    def _existing(
        cls, connection: _Connection, target: QdrantTarget, url: str, info: Any, dim: int | None, model_name: str
    ) -> QdrantIndex:
        """Read an existing collection's layout and metadata; refuse foreign collections and mismatches."""
        vectors = info.config.params.vectors
        if not isinstance(vectors, Mapping) or FULL_VECTOR not in vectors:
            raise ValueError(f"collection {target.collection!r} at {url} has no {FULL_VECTOR!r} vector; not a matryoshka collection")
        meta = getattr(info.config, "metadata", None) or {}
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"collection {target.collection!r} at {url} holds {meta.get('format')!r} data, not {FORMAT}")
        stored_dim = int(vectors[FULL_VECTOR].size)
        prefixes = sorted(int(m.group(1)) for name in vectors if (m := _PREFIX_NAME.fullmatch(name)))
        binary = meta.get("binary")
        if not isinstance(binary, bool):
            binary = isinstance(vectors[FULL_VECTOR].quantization_config, models.BinaryQuantization)
        stored_model = meta.get("model_name") or ""
        if dim is not None and dim != stored_dim:
            raise ValueError(f"collection {target.collection!r} at {url} holds {stored_dim}-dim vectors, not {dim}")
        if model_name and stored_model and model_name != stored_model:
            raise ValueError(
                f"collection {target.collection!r} at {url} holds vectors of model {stored_model!r}, not {model_name!r}"
            )
        recorded = meta.get("stages") or ""
        stages = parse_stages(recorded) if recorded else None
        backend = cls(connection, target, url, stored_dim, stored_model or model_name, prefixes, binary, stages)
        if model_name and not stored_model:
            with backend._engine("record the model name"):
                connection.client.update_collection(target.collection, metadata=backend._metadata())
        return backend

    def _metadata(self) -> dict[str, Any]:
        """The collection metadata that lets a reopen check what it finds."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "model_name": self.model_name,
            "prefix_dims": list(self.prefix_dims),
            "binary": self.binary,
            "stages": format_stages(self._stages),
        }

    @property
    def stages(self) -> list[Stage]:
        """The default funnel recorded in the collection metadata (exact search when none was)."""
        return list(self._stages)

    def details(self) -> dict[str, object]:
        """Collection, stored prefix vectors, binary quantization, local mode."""
        return {"collection": self.collection, "prefix_dims": list(self.prefix_dims), "binary": self.binary,
                "local": self.local}

    def scan_codecs(self, dim: int) -> tuple[str, ...]:
        """Floats, at the stored prefix dims and the full dim only: a prefix alone is ranked by its float
        vector (binary quantization serves only a shortlist that ``full`` re-ranks)."""
        return ("float32", "float16") if dim == self.dim or dim in self.prefix_dims else ()

    def clear(self) -> None:
        """Delete every point (the collection and its layout stay)."""
        with self._engine("clear"):
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=models.Filter()), wait=True)

    def _create(self, name: str | None = None) -> None:
        """Create the collection (or ``name``, with this one's layout and metadata): ``full`` without an
        HNSW graph, one ``prefix_{d}`` per prefix dim."""
        quantization = (
            models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)) if self.binary else None
        )
        config = {
            FULL_VECTOR: models.VectorParams(
                size=self.dim,
                distance=models.Distance.COSINE,
                hnsw_config=models.HnswConfigDiff(m=0),
                quantization_config=quantization,
            )
        }
        for d in self.prefix_dims:
            config[PREFIX_VECTOR.format(d)] = models.VectorParams(
                size=d, distance=models.Distance.COSINE, quantization_config=quantization
            )
        with self._engine("create the collection"):
            self.client.create_collection(name or self.collection, vectors_config=config, metadata=self._metadata())

    @contextlib.contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Serialize local-mode calls and turn engine failures into :class:`BackendError`."""
        if self._closed:
            raise BackendError(f"Qdrant backend for {self.url} is closed")
        with self._connection.lock, _engine_errors(self.url, action):
            if not self.local:
                yield
                return
            with warnings.catch_warnings():  # local mode warns that it ignores search params (documented above)
                warnings.filterwarnings("ignore", message="Local mode", category=UserWarning)
                yield

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id (vectors, text and metadata all replaced), in batches."""
        ids, rows, texts_out, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        self._write(self.collection, ids, rows, texts_out, meta)

    def replace_all(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Make these documents the whole collection: load a new collection, then point the name at it.

        Qdrant has no transactions, but it has aliases, and it applies one ``update_collection_aliases``
        request atomically. So the documents go into a new collection ``{collection}--build-{hex}``
        (this one's layout and metadata), and only once all of them are in is the name
        :attr:`collection` pointed at it; the collection it named before is then deleted.

        - When :attr:`collection` is an alias already (after its first ``replace_all``), the switch is
          one request: a search sees the old documents or all of the new ones, never an empty or
          half-loaded collection.
        - The first time, :attr:`collection` is a plain collection, which no alias request can
          replace: it is deleted and the alias created right after. In between, a search fails
          with an error (no such collection), and a crash exactly there leaves the documents in
          the ``--build-`` collection with no name on it; it never answers with nothing found.
        - A failure while loading deletes the new collection and leaves the old one as it was; a
          crash while loading leaves a stray ``--build-`` collection, which the next ``replace_all``
          deletes (so run one at a time per collection). Writes made to the old collection
          meanwhile are replaced with it.

        Raises:
            ValueError: as :meth:`upsert`; nothing is written then.
            BackendError: the engine failed (the old collection still answers, except as said above).
        """
        ids, rows, texts_out, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        with self._engine("list collections and aliases"):
            aliases = self.client.get_aliases().aliases
            names = [c.name for c in self.client.get_collections().collections]
        current = next((a.collection_name for a in aliases if a.alias_name == self.collection), None)
        prefix = f"{self.collection}{_BUILD_MARK}"
        for stray in names:
            if stray.startswith(prefix) and stray != current:  # left by a load that died
                self._drop(stray)
        fresh = f"{prefix}{uuid.uuid4().hex[:12]}"
        self._create(fresh)
        try:
            self._write(fresh, ids, rows, texts_out, meta)
        except BaseException:
            with contextlib.suppress(BackendError):
                self._drop(fresh)
            raise
        point = models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=fresh,
                                                                            alias_name=self.collection))
        with self._engine("point the collection name at the new documents"):
            if current is None:  # the only non-atomic step, once per collection
                self.client.delete_collection(self.collection)
                self.client.update_collection_aliases(change_aliases_operations=[point])
            else:
                move = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.collection))
                self.client.update_collection_aliases(change_aliases_operations=[move, point])
        if current is not None:
            with contextlib.suppress(BackendError):  # the switch is done; the next replace_all retries this
                self._drop(current)

    def _drop(self, name: str) -> None:
        """Delete the collection ``name`` (a build, never the alias)."""
        with self._engine(f"delete collection {name!r}"):
            self.client.delete_collection(name)

    def _write(
        self,
        collection: str,
        ids: list[str],
        rows: np.ndarray,
        texts: list[str | None],
        meta: list[dict[str, Any] | None],
    ) -> None:
        """Upsert checked documents into ``collection`` in batches of :data:`_WRITE_BATCH`."""
        for start in range(0, len(ids), _WRITE_BATCH):
            stop = start + _WRITE_BATCH
            block = rows[start:stop]
            named = {FULL_VECTOR: block.tolist()}
            for d in self.prefix_dims:
                named[PREFIX_VECTOR.format(d)] = _unit(block[:, :d]).tolist()
            payloads = [
                _payload(doc_id, text, m) for doc_id, text, m in zip(ids[start:stop], texts[start:stop], meta[start:stop])
            ]
            batch = models.Batch(ids=[point_id(i) for i in ids[start:stop]], vectors=named, payloads=payloads)
            with self._engine("upsert"):
                self.client.upsert(collection, points=batch, wait=True)

    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found: set[str] = set()
        for start in range(0, len(wanted), _ID_BATCH):
            chunk = [point_id(i) for i in wanted[start : start + _ID_BATCH]]
            with self._engine("retrieve"):
                points = self.client.retrieve(self.collection, ids=chunk, with_payload=["id"], with_vectors=False)
            found.update(str((p.payload or {}).get("id")) for p in points)
        return found & set(wanted)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many existed (checked just before deleting)."""
        found = self.existing(ids)
        points = [point_id(i) for i in sorted(found)]
        for start in range(0, len(points), _ID_BATCH):
            with self._engine("delete"):
                self.client.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=points[start : start + _ID_BATCH]),
                    wait=True,
                )
        return len(found)

    def __len__(self) -> int:
        """Number of stored documents (an exact count)."""
        with self._engine("count"):
            return int(self.client.count(self.collection, exact=True).count)

    def search_with_timings(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> tuple[list[list[Hit]], list[StageTiming]]:
        """Top ``k`` hits per query row, by cosine of the full vectors; one Query API request per query.

        ``stages=None`` runs the recorded funnel (exact: a scan of ``full``). A funnel is one shortlist stage (a stored prefix
        dim or the full dim; ``float32``/``float16`` read floats, ``binary`` reads the quantized
        sign bits) and a full float re-rank: a ``prefetch`` of ``max(keep, k)`` candidates
        re-scored with ``full``. ``filter`` restricts both. Queries go in batches of
        ``query_batch_points``.

        Raises:
            ValueError: bad queries or ``k``, a funnel this backend cannot run (more than two
                stages, an ``int8`` stage, a prefix dim the collection lacks, a binary stage
                without binary quantization), or a bad filter.
            BackendError: the engine failed.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        query = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"queries have shape {np.shape(queries)} but the collection holds {self.dim}-dim vectors")
        if not np.isfinite(query).all():
            raise ValueError("queries hold NaN or inf")
        if (np.linalg.norm(query, axis=1) == 0).any():
            raise ValueError("a zero query has no direction to search")
        started = time.perf_counter()
        funnel = validate_stages(self._stages if stages is None else stages, self.dim)
        conditions = _conditions(check_filter(filter))
        alone = prefix_only(funnel, self.dim)
        if alone is not None:  # rank by a stored prefix vector alone, exactly
            if alone.codec not in ("float32", "float16"):
                raise ValueError(f"stage {alone}: this backend ranks by a prefix alone only with float codecs")
            name, d, _, _ = self._shortlist(alone, k)
            requests = [
                models.QueryRequest(query=_unit(row[None, :d])[0].tolist(), using=name, limit=k, filter=conditions,
                                    params=_EXACT, with_payload=_PAYLOAD_FIELDS)
                for row in _unit(query)
            ]
        else:
            shortlist, _ = funnel_shape(funnel, self.dim)
            plan = None if shortlist is None else self._shortlist(shortlist, k)
            requests = [self._request(row, k, plan, conditions) for row in _unit(query)]
        hits: list[list[Hit]] = []
        for start in range(0, len(requests), _QUERY_BATCH):
            with self._engine("query"):
                responses = self.client.query_batch_points(self.collection, requests=requests[start : start + _QUERY_BATCH])
            for response in responses:
                hits.append([_hit(p) for p in response.points])
        return hits, whole_funnel_timings(funnel, self.dim, k, len(self), time.perf_counter() - started)

    def _shortlist(self, stage: Stage, k: int) -> tuple[str, int, int, models.SearchParams]:
        """(vector name, prefix dim, limit, search params) of a shortlist stage; refuse what is not stored."""
        d = stage.dim or self.dim
        if stage.codec == "int8":
            raise ValueError(f"stage {stage}: this backend stores no int8 (scalar) quantization; use float32 or binary")
        if stage.codec == "binary" and not self.binary:
            raise ValueError(f"stage {stage}: collection {self.collection!r} was created without binary quantization")
        if d != self.dim and d not in self.prefix_dims:
            available = ", ".join(str(p) for p in (*self.prefix_dims, self.dim))
            raise ValueError(
                f"stage {stage}: collection {self.collection!r} stores no {d}-dim prefix; available dims: {available}"
            )
        name = FULL_VECTOR if d == self.dim else PREFIX_VECTOR.format(d)
        params = _BINARY_SHORTLIST if stage.codec == "binary" else _FLOAT_SHORTLIST
        return name, d, max(stage.keep, k), params

    def _request(
        self,
        row: np.ndarray,
        k: int,
        plan: tuple[str, int, int, models.SearchParams] | None,
        conditions: models.Filter | None,
    ) -> models.QueryRequest:
        """One Query API request: an exact scan of ``full``, or a prefetch on the shortlist vector re-ranked by ``full``."""
        full = row.tolist()
        if plan is None:
            return models.QueryRequest(
                query=full, using=FULL_VECTOR, limit=k, filter=conditions, params=_EXACT, with_payload=_PAYLOAD_FIELDS
            )
        name, d, keep, params = plan
        prefix = full if d == self.dim else _unit(row[None, :d])[0].tolist()
        return models.QueryRequest(
            prefetch=models.Prefetch(query=prefix, using=name, limit=keep, filter=conditions, params=params),
            query=full,
            using=FULL_VECTOR,
            limit=k,
            filter=conditions,
            params=_RERANK,
            with_payload=_PAYLOAD_FIELDS,
        )

    def close(self) -> None:
        """Close the client (a local directory is freed when its last backend closes); the data stays."""
        if not self._closed:
            self._closed = True
            self._connection.release()

    def __enter__(self) -> QdrantIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QdrantIndex({self.url!r}, dim={self.dim}, model_name={self.model_name!r}, prefix_dims={self.prefix_dims})"


@contextlib.contextmanager
def _engine_errors(url: str, action: str) -> Iterator[None]:
    """Re-raise client, transport and local-mode failures as :class:`BackendError` naming ``url``."""
    try:
        yield
    except (ApiException, QdrantException, OSError, RuntimeError) as exc:
        raise BackendError(f"Qdrant at {url}: cannot {action}: {exc}") from exc


def _prefix_dims(prefix_dims: Sequence[int], dim: int) -> list[int]:
    """Validated prefix dims shorter than ``dim``, sorted and without repeats."""
    if isinstance(prefix_dims, (str, bytes)) or not isinstance(prefix_dims, Iterable):
        raise ValueError(f"prefix_dims must be a sequence of positive integers, got {prefix_dims!r}")
    out = set()
    for d in prefix_dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"prefix_dims must be positive integers, got {d!r}")
        if d < dim:
            out.add(int(d))
    return sorted(out)


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def _payload(doc_id: str, text: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A point's payload: the original id, the text and the metadata object (absent when None)."""
    payload: dict[str, Any] = {"id": doc_id}
    if text is not None:
        payload["text"] = text
    if metadata is not None:
        payload["metadata"] = metadata
    return payload


def _hit(point: Any) -> Hit:
    """A :class:`Hit` from a scored point (payload ``id`` and ``text``)."""
    payload = point.payload or {}
    return Hit(str(payload["id"]), float(point.score), payload.get("text"))


def _conditions(wanted: dict[str, list[Any]] | None) -> models.Filter | None:
    """A normalized filter as Qdrant conditions on ``metadata.<key>`` (all keys must match)."""
    if wanted is None:
        return None
    return models.Filter(must=[_key_condition(_field(key), values) for key, values in wanted.items()])


def _field(key: str) -> str:
    """The payload path of a metadata key; keys with dots or other signs are quoted."""
    if _PLAIN_KEY.fullmatch(key):
        return f"metadata.{key}"
    if '"' in key:
        raise ValueError(f"this backend cannot filter on a metadata key holding a double quote: {key!r}")
    return f'metadata."{key}"'


def _key_condition(field: str, values: list[Any]) -> models.FieldCondition | models.Filter:
    """One key's condition: equal to the value, or to any of several values."""
    if len(values) == 1:
        return _equals(field, values[0])
    if all(isinstance(v, str) for v in values):
        return models.FieldCondition(key=field, match=models.MatchAny(any=values))
    return models.Filter(should=[_equals(field, v) for v in values])


def _equals(field: str, value: Any) -> models.FieldCondition:
    """Equality on one value: ``MatchValue`` for strings and booleans (a boolean never matches a number);
    a closed range for numbers, so ``1`` matches a stored ``1.0`` as it does on the other engines."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))
