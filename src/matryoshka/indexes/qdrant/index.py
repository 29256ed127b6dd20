"""The Qdrant engine: :class:`QdrantIndex`, one collection behind the :class:`VectorIndex` interface
(see :mod:`matryoshka.indexes.qdrant` for the vectors, the funnel request and what a rebuild promises)."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# qdrant-client's absence is reported by the package's first import (connection.py)
from qdrant_client import models
from qdrant_client.common.client_exceptions import QdrantException
from qdrant_client.http.exceptions import ApiException

from matryoshka.embeddings.vectors import truncate
from matryoshka.errors import DimensionError, EngineError, InputError
from matryoshka.indexes.base import check_batch, funnel_shape, prefix_only, whole_funnel_timings
from matryoshka.indexes.qdrant.connection import QdrantTarget, _connect, _Connection, parse_url
from matryoshka.indexes.qdrant.points import filter_conditions, point_hit, point_id, point_payload
from matryoshka.retrieval.filters import Filter, Metadata, check_filter
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import PRESETS, Stage, format_stages, parse_stages, validate_stages
from matryoshka.retrieval.types import Hit, StageTiming

FORMAT = "matryoshka-qdrant"
FORMAT_VERSION = 1
#: Prefix vectors a new collection stores (those shorter than its dim); a funnel can only shortlist on these.
DEFAULT_PREFIX_DIMS = (64, 128)
FULL_VECTOR = "full"
PREFIX_VECTOR = "prefix_{}"
_WRITE_BATCH = 256
#: Names the collections :meth:`QdrantIndex.replace_all` loads: ``{collection}--build-{12 hex digits}``.
_BUILD_MARK = "--build-"
_QUERY_BATCH = 64
_ID_BATCH = 1000
_PAYLOAD_FIELDS = ["id", "text"]
_PREFIX_NAME = re.compile(r"prefix_([1-9][0-9]*)")

# Exact search scans the original full vectors; the re-rank reads originals, never quantized codes.
_EXACT = models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))
_RERANK = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=True))
# A binary shortlist reads only the sign bits: no rescoring with originals (the re-rank does that).
# `exact` stays off there, since an exact search on the server skips quantized vectors.
_BINARY_SHORTLIST = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=False, rescore=False))
_FLOAT_SHORTLIST = models.SearchParams(quantization=models.QuantizationSearchParams(ignore=True))


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
            InputError: a bad URL or argument, a missing ``dim`` for a new collection, a mismatch
                with the stored dim or model, or a collection that matryoshka did not create.
            EngineError: the server is unreachable or refuses, the local directory is in use by
                another process, or the collection is missing and ``create`` is false.
        """
        target = parse_url(url)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise DimensionError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(model_name, str):
            raise InputError(f"model_name must be a string, got {model_name!r}")
        wanted_prefixes = _prefix_dims(prefix_dims, dim) if dim is not None else None
        plan = parse_stages(stages) if isinstance(stages, str) else (list(stages) if stages is not None else None)
        if plan is not None and not create:
            raise InputError("stages needs create=True (recording the default funnel writes)")
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
                raise EngineError(
                    f"no collection {target.collection!r} at {url}: build it with `matryoshka index build --corpus "
                    "... --out URL` (from Python: open it with create=True and dim=...)"
                )
            elif dim is None or wanted_prefixes is None:
                raise InputError(f"collection {target.collection!r} does not exist yet; pass dim to create it")
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
            raise InputError(f"collection {target.collection!r} at {url} has no {FULL_VECTOR!r} vector; not a matryoshka collection")
        meta = getattr(info.config, "metadata", None) or {}
        if meta.get("format", FORMAT) != FORMAT:
            raise InputError(f"collection {target.collection!r} at {url} holds {meta.get('format')!r} data, not {FORMAT}")
        stored_dim = int(vectors[FULL_VECTOR].size)
        prefixes = sorted(int(m.group(1)) for name in vectors if (m := _PREFIX_NAME.fullmatch(name)))
        binary = meta.get("binary")
        if not isinstance(binary, bool):
            binary = isinstance(vectors[FULL_VECTOR].quantization_config, models.BinaryQuantization)
        stored_model = meta.get("model_name") or ""
        if dim is not None and dim != stored_dim:
            raise DimensionError(f"collection {target.collection!r} at {url} holds {stored_dim}-dim vectors, not {dim}")
        if model_name and stored_model and model_name != stored_model:
            raise InputError(
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
        """Serialize local-mode calls and turn engine failures into :class:`EngineError`."""
        if self._closed:
            raise EngineError(f"Qdrant backend for {self.url} is closed")
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
            InputError: as :meth:`upsert`; nothing is written then.
            EngineError: the engine failed (the old collection still answers, except as said above).
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
            with contextlib.suppress(EngineError):
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
            with contextlib.suppress(EngineError):  # the switch is done; the next replace_all retries this
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
                named[PREFIX_VECTOR.format(d)] = truncate(block, d).tolist()
            payloads = [
                point_payload(doc_id, text, m) for doc_id, text, m in zip(ids[start:stop], texts[start:stop], meta[start:stop])
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
            InputError: bad queries or ``k``, a funnel this backend cannot run (more than two
                stages, an ``int8`` stage, a prefix dim the collection lacks, a binary stage
                without binary quantization), or a bad filter.
            EngineError: the engine failed.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        query = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise DimensionError(f"queries have shape {np.shape(queries)} but the collection holds {self.dim}-dim vectors")
        if not np.isfinite(query).all():
            raise InputError("queries hold NaN or inf")
        if (np.linalg.norm(query, axis=1) == 0).any():
            raise InputError("a zero query has no direction to search")
        started = time.perf_counter()
        funnel = validate_stages(self._stages if stages is None else stages, self.dim)
        conditions = filter_conditions(check_filter(filter))
        alone = prefix_only(funnel, self.dim)
        if alone is not None:  # rank by a stored prefix vector alone, exactly
            if alone.codec not in ("float32", "float16"):
                raise InputError(f"stage {alone}: this backend ranks by a prefix alone only with float codecs")
            name, d, _, _ = self._shortlist(alone, k)
            requests = [
                models.QueryRequest(query=truncate(row[None, :], d)[0].tolist(), using=name, limit=k, filter=conditions,
                                    params=_EXACT, with_payload=_PAYLOAD_FIELDS)
                for row in truncate(query)
            ]
        else:
            shortlist, _ = funnel_shape(funnel, self.dim)
            plan = None if shortlist is None else self._shortlist(shortlist, k)
            requests = [self._request(row, k, plan, conditions) for row in truncate(query)]
        hits: list[list[Hit]] = []
        for start in range(0, len(requests), _QUERY_BATCH):
            with self._engine("query"):
                responses = self.client.query_batch_points(self.collection, requests=requests[start : start + _QUERY_BATCH])
            for response in responses:
                hits.append([point_hit(p) for p in response.points])
        return hits, whole_funnel_timings(funnel, self.dim, k, len(self), time.perf_counter() - started)

    def _shortlist(self, stage: Stage, k: int) -> tuple[str, int, int, models.SearchParams]:
        """(vector name, prefix dim, limit, search params) of a shortlist stage; refuse what is not stored."""
        d = stage.dim or self.dim
        if stage.codec == "int8":
            raise InputError(f"stage {stage}: this backend stores no int8 (scalar) quantization; use float32 or binary")
        if stage.codec == "binary" and not self.binary:
            raise InputError(f"stage {stage}: collection {self.collection!r} was created without binary quantization")
        if d != self.dim and d not in self.prefix_dims:
            available = ", ".join(str(p) for p in (*self.prefix_dims, self.dim))
            raise InputError(
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
        prefix = full if d == self.dim else truncate(row[None, :], d)[0].tolist()
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
    """Re-raise client, transport and local-mode failures as :class:`EngineError` naming ``url``."""
    try:
        yield
    except (ApiException, QdrantException, OSError, RuntimeError) as exc:
        raise EngineError(f"Qdrant at {url}: cannot {action}: {exc}") from exc


def _prefix_dims(prefix_dims: Sequence[int], dim: int) -> list[int]:
    """Validated prefix dims shorter than ``dim``, sorted and without repeats."""
    if isinstance(prefix_dims, (str, bytes)) or not isinstance(prefix_dims, Iterable):
        raise InputError(f"prefix_dims must be a sequence of positive integers, got {prefix_dims!r}")
    out = set()
    for d in prefix_dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InputError(f"prefix_dims must be positive integers, got {d!r}")
        if d < dim:
            out.add(int(d))
    return sorted(out)
