"""PostgreSQL + pgvector backend: full vectors in one table, Matryoshka prefixes as expression indexes.

Each document is one row ``(id text primary key, seq bigserial, embedding vector(dim), text, metadata
jsonb)``; ``embedding`` is the full unit vector and ``seq`` the insertion order that breaks score ties
(as the embedded index does). Prefix views are never stored: a shortlist stage ``d:float32`` is an
HNSW index on the expression ``l2_normalize(subvector(embedding, 1, d))::vector(d)``, ``d:float16``
the same cast to ``halfvec(d)`` and ``d:binary`` one on ``binary_quantize(subvector(embedding, 1,
d))::bit(d)`` (Hamming). A funnel runs as ONE statement: an inner query takes ``keep`` rows ordered by
the prefix expression (so the planner uses its index, with iterative index scans so a metadata filter
still yields ``keep`` rows) and the outer query re-ranks them by the full ``embedding <=> query``.
Exact search (no stages) is a true exact scan (index scans off). When ``keep`` covers every matching
row the funnel is answered exactly. ``int8`` stages are not supported (pgvector has no int8 vectors).

Writes: :meth:`PgVectorBackend.upsert` streams a batch with binary ``COPY``, new ids straight into the
table and a batch that replaces stored ids through a temporary staging table merged with ``INSERT
... ON CONFLICT (id) DO UPDATE``, in one transaction per call, so an interrupted load never leaves
half a batch; a re-run skips :meth:`~PgVectorBackend.existing` ids. The backend creates the
``vector`` extension, the table and a ``matryoshka_meta`` row (dim, model name, schema version)
itself and migrates older schema versions when opened with ``create=True``. Needs pgvector >= 0.7
(>= 0.8 for iterative index scans) and ``psycopg`` 3.

URL: ``postgresql://user:password@host:5432/dbname?table=NAME`` (or ``postgres://``). ``table``
(default ``matryoshka_documents``, a plain SQL identifier of at most 40 characters) is taken out;
every other query parameter goes to libpq unchanged (``sslmode``, ``connect_timeout``,
``target_session_attrs``, ``options=-csearch_path%3Dmyschema``, several ``host1:5432,host2:5432``).

Your own server: create the database, have a superuser run ``CREATE EXTENSION vector`` once if the
application role may not, and point the URL at it. HNSW builds are faster with a larger
``maintenance_work_mem`` (the graph should fit in it); build indexes after a bulk load.

Citus (sharded; not covered by the tests): point the URL at the coordinator and open once with
``create=True``, then run ``SELECT create_distributed_table('matryoshka_documents', 'id')`` (``id``,
the primary key, is the distribution column, so ``ON CONFLICT (id)`` works; ``matryoshka_meta``
stays a local table). Later ``ensure_index`` calls are propagated to every shard, each shard answers
the shortlist from its own HNSW index and the coordinator merges and re-ranks. Set
``citus.propagate_set_commands = 'local'`` so the per-search ``SET LOCAL hnsw.*`` settings reach
the workers. No code change.

Read replicas: searches only read, so open a second backend on the replica URL with
``create=False`` (it never writes, not even schema checks) and keep writes on the primary; or give
libpq several hosts with ``target_session_attrs=prefer-standby``. Indexes built on the primary
replicate like any other.

Example:
    >>> backend = PgVectorBackend.open("postgresql://app:secret@db:5432/search?table=docs", dim=384,
    ...                                index_stages="64:float32:400,full:float32:10")
    >>> backend.upsert(ids, vectors, texts)
    >>> backend.search(queries, k=10, stages=parse_stages("64:float32:400,full:float32:10"))
"""

from __future__ import annotations

import json
import re
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np

from matryoshka.backends.base import (
    BackendError,
    Filter,
    Hit,
    Metadata,
    check_batch,
    check_filter,
    funnel_shape,
)
from matryoshka.retrieval.stages import FULL, Stage, parse_stages, validate_stages

try:
    import psycopg
    from psycopg import sql
except ImportError as _exc:  # pragma: no cover - depends on the optional extra
    raise ImportError("the PostgreSQL backend needs psycopg 3: pip install 'matryoshka[postgres]'") from _exc

__all__ = ["DEFAULT_TABLE", "META_TABLE", "SCHEMA_VERSION", "PgVectorBackend"]

DEFAULT_TABLE = "matryoshka_documents"
META_TABLE = "matryoshka_meta"
#: Version of the table layout; step ``v`` of :func:`_migrations` brings a table from ``v - 1`` to ``v``.
SCHEMA_VERSION = 2
MIN_PGVECTOR = (0, 7, 0)
ITERATIVE_SCAN_PGVECTOR = (0, 8, 0)

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")  # leaves room for index-name suffixes (63 max)
_MAX_DIM = 16000  # pgvector's limit for a vector column
_HNSW_MAX_DIM = {"vector": 2000, "halfvec": 4000, "bit": 64000}
_MAX_EF_SEARCH = 1000
_MIN_EF_SEARCH = 40  # pgvector's default
_COPY_CHUNK_ROWS = 4096
_ID_CHUNK = 10_000
_STAGING = "_matryoshka_staging"


def _migrations(table: str, dim: int) -> dict[int, list[sql.Composable]]:
    """Schema steps in order; a new table runs them all, an older one only those after its version."""
    t = sql.Identifier(table)
    return {
        1: [
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, seq bigserial NOT NULL, "
                "embedding vector({}) NOT NULL, text text, metadata jsonb)"
            ).format(t, sql.Literal(dim)),
        ],
        2: [
            # metadata @> filters use it (exact search, and the shortlist when the planner prefers it)
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (metadata jsonb_path_ops)").format(
                sql.Identifier(f"{table}_metadata_gin"), t
            ),
        ],
    }


class PgVectorBackend:
    """A :class:`~matryoshka.backends.base.VectorBackend` on one PostgreSQL table with pgvector.

    Open one with :meth:`open`. One connection, used by one thread at a time (calls are serialized);
    after a lost connection the next call reconnects.

    Attributes:
        dim: full vector dimension (from ``matryoshka_meta`` once the table exists).
        model_name: the model that produced the vectors ("" when unknown).
        url: the URL it was opened with, password masked.
        table: the table name.
        pgvector_version: the server's pgvector version, e.g. ``(0, 8, 0)``.
    """

    dim: int
    model_name: str
    url: str

    def __init__(self, conninfo: str, url: str, table: str) -> None:
        """Use :meth:`open`; this only stores the connection settings."""
        self._conninfo = conninfo
        self.url = url
        self.table = table
        self.dim = 0
        self.model_name = ""
        self.pgvector_version: tuple[int, ...] = (0, 0, 0)
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._lock = threading.RLock()

    # -- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        dim: int | None = None,
        model_name: str = "",
        create: bool = True,
        index_stages: Sequence[Stage] | str | None = None,
    ) -> PgVectorBackend:
        """Connect, check (and with ``create``, create or migrate) the schema, and return the backend.

        Args:
            url: ``postgresql://user:password@host:port/db?table=NAME`` (see the module docstring).
            dim: full vector dimension; required to create the table, checked against it otherwise.
            model_name: recorded on creation (or when none was recorded); checked when both are set.
            create: create the extension, table and meta row or migrate an older schema; with
                ``False`` nothing is written (for read replicas) and a missing table is an error.
            index_stages: a funnel (``Stage`` list or spec string) whose shortlist stages get their HNSW
                index (see :meth:`ensure_index`); needs ``create``.

        Raises:
            ValueError: bad URL or table name, ``dim`` missing for a new table, or ``dim``/``model_name``
                differ from the stored ones.
            BackendError: the server cannot be reached, lacks pgvector >= 0.7, the table is missing
                (``create=False``) or belongs to a newer schema version.
        """
        conninfo, masked, table = _parse_url(url)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _MAX_DIM):
            raise ValueError(f"dim must be an integer from 1 to {_MAX_DIM}, got {dim!r}")
        backend = cls(conninfo, masked, table)
        try:
            backend._init_schema(dim, str(model_name or ""), create)
            if index_stages is not None:
                if not create:
                    raise ValueError("index_stages needs create=True (building an index writes)")
                stages = parse_stages(index_stages) if isinstance(index_stages, str) else list(index_stages)
                for stage in _shortlist_stages(stages, backend.dim):
                    backend.ensure_index(stage)
        except BaseException:
            backend.close()
            raise
        return backend

    def _init_schema(self, dim: int | None, model_name: str, create: bool) -> None:
        """Read the meta row; create or migrate only when something is missing (so replicas stay read-only)."""
        with self._transaction() as conn:
            state = self._read_state(conn)
            needs_write = (
                state["pgvector"] is None
                or state["row"] is None
                or state["row"][2] < SCHEMA_VERSION
                or (model_name and not state["row"][1])
            )
            if needs_write and create:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"matryoshka:{self.table}"])
                if self._read_state(conn)["pgvector"] is None:
                    try:
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    except psycopg.errors.InsufficientPrivilege as exc:
                        raise BackendError(
                            f"pgvector is not installed in the database at {self.url} and this role may not "
                            "install it; have a superuser run CREATE EXTENSION vector"
                        ) from exc
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, dim integer NOT NULL, "
                        "model_name text NOT NULL DEFAULT '', schema_version integer NOT NULL, "
                        "created_at timestamptz NOT NULL DEFAULT now())"
                    ).format(sql.Identifier(META_TABLE))
                )
                state = self._read_state(conn)
            version_text = state["pgvector"]
            if version_text is None:
                raise BackendError(f"pgvector is not installed in the database at {self.url} (CREATE EXTENSION vector)")
            self.pgvector_version = _version_tuple(version_text)
            if self.pgvector_version < MIN_PGVECTOR:
                raise BackendError(f"pgvector {version_text} at {self.url} is too old; this backend needs >= 0.7")
            row = state["row"]
            if row is None:
                if not create:
                    raise BackendError(
                        f"no matryoshka table {self.table!r} at {self.url}; "
                        "open it with create=True and dim=... to create it"
                    )
                if state["table_exists"]:
                    raise BackendError(
                        f"table {self.table!r} exists at {self.url} but has no {META_TABLE} row; it was not created "
                        "by matryoshka (pick another ?table=)"
                    )
                if dim is None:
                    raise ValueError(f"table {self.table!r} does not exist yet; pass dim=... to create it")
                self._migrate(conn, 0, dim)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (table_name, dim, model_name, schema_version) VALUES (%s, %s, %s, %s)"
                    ).format(sql.Identifier(META_TABLE)),
                    [self.table, dim, model_name, SCHEMA_VERSION],
                )
                self.dim, self.model_name = dim, model_name
            else:
                stored_dim, stored_model, version = row
                if dim is not None and dim != stored_dim:
                    raise ValueError(f"table {self.table!r} holds {stored_dim}-dim vectors, not {dim}")
                if model_name and stored_model and model_name != stored_model:
                    raise ValueError(
                        f"table {self.table!r} holds vectors of model {stored_model!r}, not {model_name!r}"
                    )
                if version > SCHEMA_VERSION:
                    raise BackendError(
                        f"table {self.table!r} has schema version {version}, newer than this matryoshka "
                        f"({SCHEMA_VERSION}); upgrade matryoshka"
                    )
                if version < SCHEMA_VERSION:
                    if not create:
                        raise BackendError(
                            f"table {self.table!r} has schema version {version}; open it once with create=True "
                            f"to migrate it to {SCHEMA_VERSION}"
                        )
                    self._migrate(conn, version, stored_dim)
                if create and (version < SCHEMA_VERSION or (model_name and not stored_model)):
                    conn.execute(
                        sql.SQL("UPDATE {} SET schema_version = %s, model_name = %s WHERE table_name = %s").format(
                            sql.Identifier(META_TABLE)
                        ),
                        [SCHEMA_VERSION, stored_model or model_name, self.table],
                    )
                self.dim, self.model_name = stored_dim, stored_model or model_name

    def _read_state(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """pgvector version, whether the table exists, and its meta row ``(dim, model_name, schema_version)``."""
        ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        meta_exists, table_exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            [sql.Identifier(META_TABLE).as_string(conn), sql.Identifier(self.table).as_string(conn)],
        ).fetchone()  # type: ignore[misc]
        row = None
        if meta_exists:
            row = conn.execute(
                sql.SQL("SELECT dim, model_name, schema_version FROM {} WHERE table_name = %s").format(
                    sql.Identifier(META_TABLE)
                ),
                [self.table],
            ).fetchone()
        return {"pgvector": ext[0] if ext else None, "table_exists": table_exists, "row": row}

    def _migrate(self, conn: psycopg.Connection[Any], version: int, dim: int) -> None:
        steps = _migrations(self.table, dim)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in steps[step]:
                conn.execute(statement)

    # -- writing ------------------------------------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id, in one transaction (all of the batch or none of it).

        New ids are streamed with binary ``COPY`` straight into the table; a batch that replaces
        stored ids is copied into a temporary staging table and merged with ``INSERT ... ON CONFLICT
        (id) DO UPDATE``. A replaced document gets a new ``seq`` (as if deleted and added again), so it
        ranks after older documents on equal scores.
        """
        ids, unit, texts_out, meta_out = check_batch(ids, vectors, self.dim, texts, metadata)
        if not ids:
            return
        _check_nul(ids, texts_out, meta_out)
        table = sql.Identifier(self.table)
        with self._lock, self._transaction() as conn:
            if not self._any_stored(conn, ids):
                try:
                    with conn.transaction():  # a savepoint: a concurrent writer may add one of the ids meanwhile
                        self._copy(conn, table, ids, unit, texts_out, meta_out, staged=False)
                    return
                except psycopg.errors.UniqueViolation:
                    pass
            staging = sql.Identifier(_STAGING)
            conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {} (pos integer, embedding vector({}), id text, text text, metadata jsonb) "
                    "ON COMMIT DROP"
                ).format(staging, sql.Literal(self.dim))
            )
            self._copy(conn, staging, ids, unit, texts_out, meta_out, staged=True)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, embedding, text, metadata) SELECT id, embedding, text, metadata FROM {} "
                    "ORDER BY pos ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, embedding = EXCLUDED.embedding, "
                    "text = EXCLUDED.text, metadata = EXCLUDED.metadata"
                ).format(table, staging)
            )

    def _any_stored(self, conn: psycopg.Connection[Any], ids: list[str]) -> bool:
        statement = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE id = ANY(%s))").format(sql.Identifier(self.table))
        for start in range(0, len(ids), _ID_CHUNK):
            row = conn.execute(statement, [ids[start : start + _ID_CHUNK]]).fetchone()
            if row and row[0]:
                return True
        return False

    @staticmethod
    def _copy(
        conn: psycopg.Connection[Any],
        target: sql.Identifier,
        ids: list[str],
        unit: np.ndarray,
        texts: list[str | None],
        metadata: list[dict[str, Any] | None],
        staged: bool,
    ) -> None:
        """Binary ``COPY`` of the rows into ``target`` (with their batch position when ``staged``)."""
        columns = "pos, embedding, id, text, metadata" if staged else "embedding, id, text, metadata"
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, sql.SQL(columns))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for chunk in _copy_binary(ids, unit, texts, metadata, with_pos=staged):
                copy.write(chunk)

    def delete(self, ids: Iterable[str] | str) -> int:
        """Remove documents by id; returns how many existed (unknown ids are ignored)."""
        wanted = _id_list(ids)
        removed = 0
        with self._lock, self._transaction() as conn:
            for start in range(0, len(wanted), _ID_CHUNK):
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                    [wanted[start : start + _ID_CHUNK]],
                )
                removed += max(cur.rowcount, 0)
        return removed

    def ensure_index(self, stage: Stage, m: int = 16, ef_construction: int = 64) -> str:
        """Create (if missing) the HNSW expression index that a shortlist ``stage`` uses; returns its name.

        ``m`` and ``ef_construction`` are pgvector's build parameters (its defaults). The build blocks
        writes to the table while it runs; on a large table build after the bulk load.

        Raises:
            ValueError: an ``int8`` stage, or a prefix longer than pgvector's HNSW limit for the codec.
        """
        name, expression, opclass = self._index_parts(stage)
        statement = sql.SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw ({} {}) WITH (m = {}, ef_construction = {})"
        ).format(
            sql.Identifier(name), sql.Identifier(self.table), expression, sql.SQL(opclass),
            sql.Literal(int(m)), sql.Literal(int(ef_construction)),
        )
        with self._lock, self._transaction() as conn:
            conn.execute(statement)
        return name

    def index_name(self, stage: Stage) -> str:
        """The deterministic name of the HNSW index for a shortlist ``stage``, e.g. ``docs_p64_f32_hnsw``."""
        return self._index_parts(stage)[0]

    # -- reading ------------------------------------------------------------------------------------

    def existing(self, ids: Iterable[str] | str) -> set[str]:
        """The subset of ``ids`` that is stored (what a resumed load skips)."""
        wanted = _id_list(ids)
        found: set[str] = set()
        with self._lock, self._transaction() as conn:
            for start in range(0, len(wanted), _ID_CHUNK):
                rows = conn.execute(
                    sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                    [wanted[start : start + _ID_CHUNK]],
                ).fetchall()
                found.update(row[0] for row in rows)
        return found

    def search(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Top ``k`` hits per query row (full-size vectors) through ``stages`` (default: exact), one statement per row.

        ``stages`` is exact (``[Stage(FULL, "float32", k)]``) or one shortlist stage followed by a
        full-size float re-rank. Scores are the cosine similarity of the last stage.

        Raises:
            ValueError: bad ``k``, stages, filter or query shape; an ``int8`` stage.
        """
        rows = _query_rows(queries, self.dim)
        with self._lock, self._transaction() as conn:
            statement, settings, query = self._prepare(conn, k, stages, filter)
            if len(rows) == 0:
                return []
            for setting in settings:
                conn.execute(setting)
            results = []
            for row in rows:
                found = conn.execute(query.statement(statement, row), query.params(row)).fetchall()
                results.append([Hit(doc_id, float(1.0 - distance), text) for doc_id, text, distance in found])
        return results

    def explain(
        self,
        query: np.ndarray,
        k: int = 10,
        stages: Sequence[Stage] | None = None,
        filter: Filter | None = None,
        analyze: bool = False,
    ) -> str:
        """The plan PostgreSQL picks for the statement :meth:`search` runs for one query (``EXPLAIN``)."""
        rows = _query_rows(query, self.dim)
        if len(rows) != 1:
            raise ValueError(f"explain takes one query, got {len(rows)}")
        with self._lock, self._transaction() as conn:
            statement, settings, query = self._prepare(conn, k, stages, filter)
            for setting in settings:
                conn.execute(setting)
            options = sql.SQL("(ANALYZE, BUFFERS) " if analyze else "")
            statement = query.statement(statement, rows[0])
            plan = conn.execute(sql.SQL("EXPLAIN {}{}").format(options, statement), query.params(rows[0]))
            return "\n".join(line for (line,) in plan.fetchall())

    def __len__(self) -> int:
        """Number of stored documents."""
        with self._lock, self._transaction() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.table))).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection; the data stays. Later calls raise :class:`BackendError`."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PgVectorBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"PgVectorBackend(url={self.url!r}, table={self.table!r}, dim={self.dim}, model_name={self.model_name!r})"
        )

    # -- internals ----------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, reconnecting after a lost one (a server restart)."""
        if self._closed:
            raise BackendError(f"the backend for {self.url} is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._conn = _connect(self._conninfo, self.url)
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; engine errors become :class:`BackendError` (with the engine's message)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise BackendError(f"PostgreSQL at {self.url}: {_message(exc)}") from exc

    def _index_parts(self, stage: Stage) -> tuple[str, sql.Composable, str]:
        """Index name, indexed expression and operator class for a shortlist stage."""
        if not isinstance(stage, Stage):
            raise TypeError(f"expected a Stage, got {stage!r}")
        validate_stages([stage], self.dim)
        d = stage.dim or self.dim
        if stage.codec == "int8":
            raise ValueError("pgvector has no int8 vectors; use a float32, float16 or binary shortlist stage")
        kind = {"float32": "vector", "float16": "halfvec", "binary": "bit"}[stage.codec]
        if d > _HNSW_MAX_DIM[kind]:
            raise ValueError(
                f"pgvector indexes {kind} prefixes of at most {_HNSW_MAX_DIM[kind]} dims, stage {stage} reads {d}"
                + ("; use float16 or binary" if kind == "vector" else "")
            )
        suffix = {"float32": "f32", "float16": "f16", "binary": "bin"}[stage.codec]
        opclass = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops", "bit": "bit_hamming_ops"}[kind]
        return f"{self.table}_p{d}_{suffix}_hnsw", _prefix_expression(stage.codec, d), opclass

    def _prepare(
        self, conn: psycopg.Connection[Any], k: int, stages: Sequence[Stage] | None, filter: Filter | None
    ) -> tuple[sql.Composed, list[sql.Composable], _Query]:
        """The search statement, its ``SET LOCAL`` settings, and how to bind its parameters per query."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if stages is None:
            stages = [Stage(FULL, "float32", k)]
        stages = validate_stages(stages, self.dim)
        shortlist, final = funnel_shape(stages, self.dim)
        if shortlist is not None:
            self._index_parts(shortlist)  # rejects int8 and over-long prefixes
            shortlist = Stage(shortlist.dim or self.dim, shortlist.codec, max(shortlist.keep, k))
        wanted = check_filter(filter)
        where, filter_params = _filter_sql(wanted)
        table = sql.Identifier(self.table)
        if shortlist is not None:
            # keep covers every matching row: the exact answer is both cheaper and what a funnel promises
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT %(limit)s) AS s").format(table, where),
                {**filter_params, "limit": shortlist.keep + 1},
            ).fetchone()
            if count is not None and count[0] <= shortlist.keep:
                shortlist = None
        distance = _rerank_distance(final.codec, self.dim)
        exact = sql.SQL(
            "SELECT id, text, {distance} AS distance FROM {table} WHERE {where} ORDER BY distance, seq LIMIT {k}"
        ).format(distance=distance, table=table, where=where, k=sql.Literal(k))
        if shortlist is None:
            statement = exact
            settings: list[sql.Composable] = [sql.SQL("SET LOCAL enable_indexscan = off")]  # a true exact scan
        else:
            d = shortlist.dim
            statement = sql.SQL(
                "SELECT id, text, {distance} AS distance FROM ("
                "SELECT id, seq, text, embedding FROM {table} WHERE {where} "
                "ORDER BY {prefix} {op} {query} LIMIT {keep}"
                ") AS shortlist ORDER BY distance, seq LIMIT {k}"
            ).format(
                distance=distance, table=table, where=where, prefix=_prefix_expression(shortlist.codec, d),
                op=sql.SQL("<~>" if shortlist.codec == "binary" else "<=>"),
                query=_prefix_query(shortlist.codec, d), keep=sql.Literal(shortlist.keep), k=sql.Literal(k),
            )
            ef_search = min(max(shortlist.keep, _MIN_EF_SEARCH), _MAX_EF_SEARCH)
            settings = [sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search))]
            if self.pgvector_version >= ITERATIVE_SCAN_PGVECTOR:
                # keeps scanning the graph until `keep` rows pass the filter (order is restored by the re-rank)
                settings.append(sql.SQL("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        return statement, settings, _Query(shortlist, final, filter_params, exact)


class _Query:
    """How one search statement takes its parameters: the full query, its prefix view, filter values."""

    __slots__ = ("exact", "filter_params", "final", "shortlist")

    def __init__(
        self, shortlist: Stage | None, final: Stage, filter_params: dict[str, str], exact: sql.Composed
    ) -> None:
        self.shortlist = shortlist
        self.final = final
        self.filter_params = filter_params
        self.exact = exact

    def statement(self, funnel: sql.Composed, row: np.ndarray) -> sql.Composed:
        """The funnel, or exact search for a query whose float prefix is all zeros (no direction to shortlist by)."""
        shortlist = self.shortlist
        if shortlist is not None and shortlist.codec != "binary" and not np.any(row[: shortlist.dim]):
            return self.exact
        return funnel

    def params(self, row: np.ndarray) -> dict[str, Any]:
        params: dict[str, Any] = {**self.filter_params, "q": _vector_literal(row)}
        if self.shortlist is not None:
            prefix = row[: self.shortlist.dim]
            if self.shortlist.codec == "binary":
                params["p"] = "".join("1" if x > 0 else "0" for x in prefix.tolist())
            elif np.any(prefix):
                params["p"] = _vector_literal(prefix / np.linalg.norm(prefix))
        return params


def _prefix_expression(codec: str, d: int) -> sql.Composable:
    """The indexed expression of a ``d``-dim prefix view (must match the index text exactly)."""
    if codec == "binary":
        return sql.SQL("(binary_quantize(subvector(embedding, 1, {d}))::bit({d}))").format(d=sql.Literal(d))
    kind = "halfvec" if codec == "float16" else "vector"
    return sql.SQL("(l2_normalize(subvector(embedding, 1, {d}))::{kind}({d}))").format(
        d=sql.Literal(d), kind=sql.SQL(kind)
    )


def _prefix_query(codec: str, d: int) -> sql.Composable:
    if codec == "binary":
        return sql.SQL("%(p)s::bit({})").format(sql.Literal(d))
    kind = "halfvec" if codec == "float16" else "vector"
    return sql.SQL("%(p)s::{}({})").format(sql.SQL(kind), sql.Literal(d))


def _rerank_distance(codec: str, dim: int) -> sql.Composable:
    """Cosine distance of the full vectors in the final stage's precision."""
    if codec == "float16":
        return sql.SQL("(embedding::halfvec({d}) <=> %(q)s::halfvec({d}))").format(d=sql.Literal(dim))
    return sql.SQL("(embedding <=> %(q)s::vector({d}))").format(d=sql.Literal(dim))


def _filter_sql(wanted: dict[str, list[Any]] | None) -> tuple[sql.Composable, dict[str, str]]:
    """``metadata @> {key: value}`` terms (OR within a key, AND across keys) and their JSON parameters."""
    if wanted is None:
        return sql.SQL("TRUE"), {}
    params: dict[str, str] = {}
    clauses = []
    for key, values in wanted.items():
        terms = []
        for value in values:
            name = f"f{len(params)}"
            params[name] = json.dumps({key: value})
            terms.append(sql.SQL("metadata @> {}::jsonb").format(sql.Placeholder(name)))
        clauses.append(sql.SQL("({})").format(sql.SQL(" OR ").join(terms)))
    return sql.SQL(" AND ").join(clauses), params


def _vector_literal(row: np.ndarray) -> str:
    """pgvector's text form; ``repr`` of each float32 (as a float) reads back to the same float32."""
    return "[" + ",".join(map(repr, np.asarray(row, dtype=np.float32).tolist())) + "]"


def _query_rows(queries: np.ndarray, dim: int) -> np.ndarray:
    """Query rows as unit float32 (one row for a 1-D query).

    Raises:
        ValueError: wrong width, NaN/inf, or a zero row.
    """
    array = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"queries must have {dim} dims (shape (count, {dim})), got shape {np.shape(queries)}")
    if not np.isfinite(array).all():
        raise ValueError("queries hold NaN or inf")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a zero query vector has no direction to search")
    return (array / norms).astype(np.float32)


def _check_nul(ids: list[str], texts: list[str | None], metadata: list[dict[str, Any] | None]) -> None:
    """PostgreSQL text and jsonb cannot hold NUL characters; refuse them before the load starts.

    Raises:
        ValueError: an id, text or metadata string holds ``\\x00``.
    """
    for kind, values in (("id", ids), ("text", texts)):
        for value in values:
            if value is not None and "\x00" in str(value):
                raise ValueError(f"a document {kind} holds a NUL character, which PostgreSQL cannot store: {value!r}")
    for meta in metadata:
        if meta is not None and any("\x00" in key or (isinstance(v, str) and "\x00" in v) for key, v in meta.items()):
            raise ValueError(f"metadata holds a NUL character, which PostgreSQL cannot store: {meta!r}")


def _id_list(ids: Iterable[str] | str) -> list[str]:
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def _shortlist_stages(stages: Sequence[Stage], dim: int) -> list[Stage]:
    """The stages of a funnel that scan a prefix index: all but a final full-size float re-rank."""
    stages = validate_stages(stages, dim)
    last = stages[-1]
    if (last.dim or dim) == dim and last.codec in ("float32", "float16"):
        stages = stages[:-1]
    return stages


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_NULL = struct.pack("!i", -1)


def _copy_binary(
    ids: list[str],
    unit: np.ndarray,
    texts: list[str | None],
    metadata: list[dict[str, Any] | None],
    with_pos: bool = False,
) -> Iterator[bytes]:
    """Rows ``([pos,] embedding, id, text, metadata)`` in PostgreSQL's binary COPY format, in chunks.

    The fixed-size head of each row (field count, position, then pgvector's binary vector: int16 dim,
    int16 unused, big-endian float4s) is built a chunk of rows at a time with numpy.
    """
    count, dim = unit.shape
    pos_fields = [("pos_len", ">i4"), ("pos", ">i4")] if with_pos else []
    layout = np.dtype([("fields", ">i2"), *pos_fields, ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"),
                       ("values", ">f4", (dim,))])
    size = layout.itemsize
    pack = struct.Struct("!i").pack
    yield _COPY_HEADER
    for start in range(0, count, _COPY_CHUNK_ROWS):
        stop = min(start + _COPY_CHUNK_ROWS, count)
        head = np.zeros(stop - start, dtype=layout)
        head["fields"] = 5 if with_pos else 4
        if with_pos:
            head["pos_len"] = 4
            head["pos"] = np.arange(start, stop)
        head["vec_len"] = 4 + 4 * dim
        head["dim"] = dim
        head["values"] = unit[start:stop]
        heads = head.tobytes()
        parts: list[bytes] = []
        for offset, row in enumerate(range(start, stop)):
            doc_id = ids[row].encode()
            text, meta = texts[row], metadata[row]
            parts.append(heads[offset * size : (offset + 1) * size])
            parts.append(pack(len(doc_id)) + doc_id)
            if text is None:
                parts.append(_NULL)
            else:
                encoded = str(text).encode()
                parts.append(pack(len(encoded)) + encoded)
            if meta is None:
                parts.append(_NULL)
            else:
                encoded = b"\x01" + json.dumps(meta, ensure_ascii=False).encode()  # jsonb binary: version 1, text
                parts.append(pack(len(encoded)) + encoded)
        yield b"".join(parts)
    yield _COPY_TRAILER


def _parse_url(url: str) -> tuple[str, str, str]:
    """``(libpq URL without table=, URL with the password masked, table name)``.

    Raises:
        ValueError: not a ``postgresql://`` URL, or a bad table name.
    """
    if not isinstance(url, str):
        raise TypeError(f"expected a postgresql:// URL string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got scheme {parts.scheme!r}")
    table = DEFAULT_TABLE
    kept = []
    tables = 0
    for item in parts.query.split("&") if parts.query else []:
        key, _, value = item.partition("=")
        if unquote(key) == "table":
            tables += 1
            table = unquote(value)
        else:
            kept.append(item)
    if tables > 1:
        raise ValueError("the URL names table= more than once")
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(
            f"table {table!r} must be a plain SQL identifier (letters, digits, _; not starting with a digit; "
            "at most 40 characters)"
        )
    query = "&".join(kept)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    masked_query = "&".join(
        item.split("=", 1)[0] + "=***" if unquote(item.split("=", 1)[0]) == "password" else item for item in kept
    )
    table_part = [] if table == DEFAULT_TABLE and not tables else [f"table={table}"]
    masked = urlunsplit(
        (parts.scheme, userinfo + at + hosts, parts.path, "&".join(filter(None, [masked_query, *table_part])), "")
    )
    return conninfo, masked, table


def _connect(conninfo: str, masked: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit); a failure names the server, not the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ValueError(f"bad PostgreSQL URL {masked}: {_message(exc)}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = "matryoshka"
    try:
        return psycopg.connect(conninfo, autocommit=True, **extra)
    except psycopg.Error as exc:
        host = params.get("host") or "localhost"
        port = params.get("port") or "5432"
        database = params.get("dbname") or params.get("user") or ""
        message = _message(exc)
        password = params.get("password")
        if password:
            message = message.replace(str(password), "***")
        raise BackendError(
            f"cannot connect to PostgreSQL at {host}:{port} (database {database!r}): {message}"
        ) from None


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])
