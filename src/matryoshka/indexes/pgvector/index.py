""":class:`PgVectorIndex`: the :class:`~matryoshka.retrieval.protocol.VectorIndex` on one PostgreSQL table."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from matryoshka.errors import DimensionError, EngineError, InputError
from matryoshka.indexes.base import check_batch, funnel_shape, prefix_only, whole_funnel_timings
from matryoshka.indexes.pgvector.connection import connect, message, open_pool, parse_url
from matryoshka.indexes.pgvector.queries import (
    Query,
    filter_sql,
    index_parts,
    prefix_sql,
    query_rows,
    search_sql,
    shortlist_stages,
)
from matryoshka.indexes.pgvector.rebuild import read_facts, replace_in_place, swap_in
from matryoshka.indexes.pgvector.schema import init_schema
from matryoshka.retrieval.filters import Filter, Metadata, check_filter
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import PRESETS, Stage, format_stages, parse_stages, validate_stages
from matryoshka.retrieval.types import Hit, StageTiming

__all__ = ["DEFAULT_POOL_SIZE", "PgVectorIndex"]

_MAX_DIM = 16000  # pgvector's limit for a vector column
_ID_CHUNK = 10_000
_STAGING = "_matryoshka_staging"
#: Connections the pool opens at most (searches run in parallel up to this many).
DEFAULT_POOL_SIZE = 8


class PgVectorIndex(VectorIndex):
    """A :class:`~matryoshka.retrieval.protocol.VectorIndex` on one PostgreSQL table with pgvector.

    Open one with :meth:`open`. Calls take a connection from a ``psycopg_pool`` pool, so searches from
    several threads run in parallel; a connection lost to a server restart is replaced on the next call.
    The row count is read once when opening and kept up to date by this object's own writes
    (:meth:`refresh_count` re-reads it after writes by other processes).

    Attributes:
        dim: full vector dimension (from ``matryoshka_meta``).
        model_name: the model that produced the vectors ("" when unknown).
        url: the URL it was opened with, password masked.
        table: the table name.
        pgvector_version: the server's pgvector version, e.g. ``(0, 8, 0)``.
    """

    def __init__(self, conninfo: str, url: str, table: str) -> None:
        """Use :meth:`open`; this only stores the connection settings."""
        self._conninfo = conninfo
        self.url = url
        self.table = table
        self.dim = 0
        self.model_name = ""
        self.pgvector_version: tuple[int, ...] = (0, 0, 0)
        self._stages: list[Stage] = list(PRESETS["exact"])
        self._pool: Any = None
        self._count = 0
        self._count_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str,
        dim: int | None = None,
        model_name: str = "",
        create: bool = True,
        stages: Sequence[Stage] | str | None = None,
        index_stages: Sequence[Stage] | str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> PgVectorIndex:
        """Connect, check (and with ``create``, create or migrate) the schema, and return the index.

        Args:
            url: ``postgresql://user:password@host:port/db?table=NAME``.
            dim: full vector dimension; required to create the table, checked against it otherwise.
            model_name: recorded on creation (or when none was recorded); checked when both are set.
            create: create the extension, table and meta row or migrate an older schema; with
                ``False`` nothing is written (for read replicas) and a missing table is an error.
            stages: the default funnel to record (a ``Stage`` list or spec); needs ``create``.
            index_stages: a funnel whose shortlist stages get their HNSW index now (see :meth:`prepare`).
            pool_size: most connections the pool opens.

        Raises:
            InputError: bad URL or table name, ``dim`` missing for a new table, or ``dim``/``model_name``
                differ from the stored ones.
            EngineError: the server cannot be reached, lacks pgvector >= 0.7, the table is missing
                (``create=False``) or belongs to a newer schema version.
        """
        conninfo, masked, table = parse_url(url)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _MAX_DIM):
            raise DimensionError(f"dim must be an integer from 1 to {_MAX_DIM}, got {dim!r}")
        plan = parse_stages(stages) if isinstance(stages, str) else (list(stages) if stages is not None else None)
        if plan is not None and not create:
            raise InputError("stages needs create=True (recording the default funnel writes)")
        index = cls(conninfo, masked, table)
        probe = connect(conninfo, masked)
        try:
            with probe.transaction():
                if plan is not None and dim is not None:
                    validate_stages(plan, dim)
                schema = init_schema(probe, table, masked, dim, str(model_name or ""), create,
                                     format_stages(plan) if plan is not None else None)
                index._count = _exact_count(probe, table)
        except psycopg.Error as exc:
            raise EngineError(f"PostgreSQL at {masked}: {message(exc)}") from exc
        finally:
            probe.close()
        index.dim, index.model_name, index.pgvector_version = schema.dim, schema.model_name, schema.pgvector_version
        if schema.stages:
            index._stages = validate_stages(parse_stages(schema.stages), schema.dim)
        index._pool = open_pool(conninfo, masked, pool_size)
        try:
            if index_stages is not None:
                if not create:
                    raise InputError("index_stages needs create=True (building an index writes)")
                index.prepare(parse_stages(index_stages) if isinstance(index_stages, str) else list(index_stages))
        except BaseException:
            index.close()
            raise
        return index

    # -- the protocol -------------------------------------------------------------------------------

    @property
    def stages(self) -> list[Stage]:
        """The default funnel recorded in ``matryoshka_meta`` (exact search when none was)."""
        return list(self._stages)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id, in one transaction (all of the batch or none of it).

        New ids are streamed with binary ``COPY`` straight into the table (pgvector's adapters encode
        the vectors); a batch that replaces stored ids is copied into a temporary staging table and
        merged with ``INSERT ... ON CONFLICT (id) DO UPDATE``. A replaced document gets a new ``seq``
        (as if deleted and added again), so it ranks after older documents on equal scores.
        """
        ids, unit, texts_out, meta_out = check_batch(ids, vectors, self.dim, texts, metadata)
        if not ids:
            return
        _check_nul(ids, texts_out, meta_out)
        table = sql.Identifier(self.table)
        with self._transaction() as conn:
            added = None
            if not self._any_stored(conn, ids):
                try:
                    with conn.transaction():  # a savepoint: a concurrent writer may add one of the ids meanwhile
                        self._copy(conn, table, ids, unit, texts_out, meta_out, staged=False)
                    added = len(ids)
                except psycopg.errors.UniqueViolation:
                    pass
            if added is None:
                staging = sql.Identifier(_STAGING)
                conn.execute(
                    sql.SQL(
                        "CREATE TEMPORARY TABLE {} (pos integer, embedding vector({}), id text, text text, "
                        "metadata jsonb) ON COMMIT DROP"
                    ).format(staging, sql.Literal(self.dim))
                )
                self._copy(conn, staging, ids, unit, texts_out, meta_out, staged=True)
                row = conn.execute(
                    sql.SQL(
                        "WITH merged AS (INSERT INTO {} (id, embedding, text, metadata) "
                        "SELECT id, embedding, text, metadata FROM {} ORDER BY pos ON CONFLICT (id) DO UPDATE "
                        "SET seq = EXCLUDED.seq, embedding = EXCLUDED.embedding, text = EXCLUDED.text, "
                        "metadata = EXCLUDED.metadata RETURNING (xmax = 0) AS inserted) "
                        "SELECT count(*) FILTER (WHERE inserted) FROM merged"
                    ).format(table, staging)
                ).fetchone()
                added = int(row[0]) if row else 0
        self._counted(added)

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
        types = ["vector", "text", "text", "jsonb"]
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int4", *types] if staged else types)
            for row, (doc_id, text, meta) in enumerate(zip(ids, texts, metadata)):
                fields = (unit[row], doc_id, text, None if meta is None else Jsonb(meta))
                copy.write_row((row, *fields) if staged else fields)

    def delete(self, ids: Iterable[str] | str) -> int:
        """Remove documents by id; returns how many existed (unknown ids are ignored)."""
        wanted = _id_list(ids)
        removed = 0
        with self._transaction() as conn:
            for start in range(0, len(wanted), _ID_CHUNK):
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                    [wanted[start : start + _ID_CHUNK]],
                )
                removed += max(cur.rowcount, 0)
        self._counted(-removed)
        return removed

    def clear(self) -> None:
        """Remove every row (``TRUNCATE``); the HNSW indexes and the meta row stay."""
        with self._transaction() as conn:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.table)))
        with self._count_lock:
            self._count = 0

    def replace_all(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Make these documents the whole table in one transaction: readers see the old rows until it commits.

        The rows go into a new table built like this one (indexes, grants, owner, id sequence), which
        replaces it by rename at the end of the same transaction; a table with something a swap
        would lose (a view on it, triggers...) is emptied with ``DELETE`` and loaded instead, in one
        transaction too (:mod:`matryoshka.indexes.pgvector.rebuild`). A failure or a crash at any
        point leaves the old rows. The meta row (dim, model, default funnel) stays.

        Raises:
            InputError: as :meth:`upsert`; nothing is written then.
            EngineError: the server failed or refused (nothing changed).
        """
        ids, unit, texts_out, meta_out = check_batch(ids, vectors, self.dim, texts, metadata)
        _check_nul(ids, texts_out, meta_out)
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"matryoshka:{self.table}"])
            facts = read_facts(conn, self.table, self.url)

            def load(target: sql.Identifier) -> None:
                if ids:
                    self._copy(conn, target, ids, unit, texts_out, meta_out, staged=False)

            if facts.swappable:
                swap_in(conn, self.table, facts, load)
            else:
                replace_in_place(conn, self.table, facts, load)
        with self._count_lock:
            self._count = len(ids)

    def existing(self, ids: Iterable[str] | str) -> set[str]:
        """The subset of ``ids`` that is stored (what a resumed load skips)."""
        wanted = _id_list(ids)
        found: set[str] = set()
        with self._transaction() as conn:
            for start in range(0, len(wanted), _ID_CHUNK):
                rows = conn.execute(
                    sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                    [wanted[start : start + _ID_CHUNK]],
                ).fetchall()
                found.update(row[0] for row in rows)
        return found

    def search_with_timings(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> tuple[list[list[Hit]], list[StageTiming]]:
        """Top ``k`` hits per query row (full-size vectors) through ``stages``, one statement per row.

        ``stages`` is exact or one shortlist stage followed by a full-size float re-rank (default: the
        recorded funnel). When ``keep`` covers every matching row the funnel is answered exactly.
        Scores are the cosine similarity of the last stage; the whole funnel's time is reported on
        the last stage.

        Raises:
            InputError: bad ``k``, stages, filter or query shape; an ``int8`` stage.
        """
        rows = query_rows(queries, self.dim)
        plan = validate_stages(self._stages if stages is None else stages, self.dim)
        started = time.perf_counter()
        results: list[list[Hit]] = []
        with self._transaction() as conn:
            query = self._prepare(conn, k, plan, filter)
            if len(rows):
                conn.execute(sql.SQL("; ").join(query.settings))  # one round trip
            for row in rows:
                found = conn.execute(query.statement(row), query.params(row)).fetchall()
                results.append([Hit(doc_id, query.score(distance), text) for doc_id, text, distance in found])
        return results, whole_funnel_timings(plan, self.dim, k, len(self), time.perf_counter() - started)

    def __len__(self) -> int:
        """Stored documents, as counted when opened and kept by this object's writes (no query)."""
        return self._count

    def details(self) -> dict[str, object]:
        """Table and pgvector version."""
        return {"table": self.table, "pgvector": ".".join(map(str, self.pgvector_version))}

    def scan_codecs(self, dim: int) -> tuple[str, ...]:
        """``vector``, ``halfvec`` and ``bit`` views of any prefix (``binary`` at a multiple of 8); pgvector has no int8."""
        if not 0 < dim <= self.dim:
            return ()
        return ("float32", "float16", "binary") if dim % 8 == 0 else ("float32", "float16")

    def prepare(self, stages: Sequence[Stage] | None = None) -> None:
        """Create the HNSW expression index of every shortlist stage of ``stages`` (default: the recorded funnel)."""
        for stage in shortlist_stages(self._stages if stages is None else stages, self.dim):
            self.ensure_index(stage)

    def close(self) -> None:
        """Close the connection pool; the data stays. Later calls raise :class:`EngineError`."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- PostgreSQL specifics -----------------------------------------------------------------------

    def refresh_count(self) -> int:
        """Count the rows now (``count(*)``, a full scan), e.g. after other processes wrote; returns it."""
        with self._transaction() as conn:
            count = _exact_count(conn, self.table)
        with self._count_lock:
            self._count = count
        return count

    def ensure_index(self, stage: Stage, m: int = 16, ef_construction: int = 64) -> str:
        """Create (if missing) the HNSW expression index that a shortlist ``stage`` uses; returns its name.

        ``m`` and ``ef_construction`` are pgvector's build parameters (its defaults). The build blocks
        writes to the table while it runs; on a large table build after the bulk load.

        Raises:
            InputError: an ``int8`` stage, or a prefix longer than pgvector's HNSW limit for the codec.
        """
        name, expression, opclass = index_parts(self.table, stage, self.dim)
        statement = sql.SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw ({} {}) WITH (m = {}, ef_construction = {})"
        ).format(
            sql.Identifier(name), sql.Identifier(self.table), expression, sql.SQL(opclass),
            sql.Literal(int(m)), sql.Literal(int(ef_construction)),
        )
        with self._transaction() as conn:
            conn.execute(statement)
        return name

    def index_name(self, stage: Stage) -> str:
        """The deterministic name of the HNSW index for a shortlist ``stage``, e.g. ``docs_p64_f32_hnsw``."""
        return index_parts(self.table, stage, self.dim)[0]

    def explain(
        self,
        query: np.ndarray,
        k: int = 10,
        stages: Sequence[Stage] | None = None,
        filter: Filter | None = None,
        analyze: bool = False,
    ) -> str:
        """The plan PostgreSQL picks for the statement a search runs for one query (``EXPLAIN``)."""
        rows = query_rows(query, self.dim)
        if len(rows) != 1:
            raise InputError(f"explain takes one query, got {len(rows)}")
        plan = validate_stages(self._stages if stages is None else stages, self.dim)
        with self._transaction() as conn:
            prepared = self._prepare(conn, k, plan, filter)
            conn.execute(sql.SQL("; ").join(prepared.settings))
            options = sql.SQL("(ANALYZE, BUFFERS) " if analyze else "")
            result = conn.execute(sql.SQL("EXPLAIN {}{}").format(options, prepared.statement(rows[0])),
                                  prepared.params(rows[0]))
            return "\n".join(line for (line,) in result.fetchall())

    def __repr__(self) -> str:
        return f"PgVectorIndex(url={self.url!r}, table={self.table!r}, dim={self.dim}, model_name={self.model_name!r})"

    # -- internals ----------------------------------------------------------------------------------

    def _counted(self, change: int) -> None:
        with self._count_lock:
            self._count = max(0, self._count + change)

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; engine errors become :class:`EngineError`."""
        pool = self._pool
        if pool is None:
            raise EngineError(f"the index at {self.url} is closed")
        try:
            with pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise EngineError(f"PostgreSQL at {self.url}: {message(exc)}") from exc

    def _prepare(self, conn: psycopg.Connection[Any], k: int, stages: list[Stage], filter: Filter | None) -> Query:
        """The statements for one search; a funnel whose keep covers every matching row runs exactly."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        alone = prefix_only(stages, self.dim)
        if alone is not None:  # ranked by a prefix view alone (the demo's chosen side): an exact scan
            index_parts(self.table, alone, self.dim)  # rejects int8 and over-long prefixes
            return prefix_sql(self.table, k, Stage(alone.dim or self.dim, alone.codec, k), check_filter(filter))
        shortlist, final = funnel_shape(stages, self.dim)
        if shortlist is not None:
            index_parts(self.table, shortlist, self.dim)  # rejects int8 and over-long prefixes
            shortlist = Stage(shortlist.dim or self.dim, shortlist.codec, max(shortlist.keep, k))
        wanted = check_filter(filter)
        if shortlist is not None and self._covers(conn, shortlist.keep, wanted):
            shortlist = None
        return search_sql(self.table, self.dim, k, shortlist, final, wanted, self.pgvector_version)

    def _covers(self, conn: psycopg.Connection[Any], keep: int, wanted: dict[str, list[Any]] | None) -> bool:
        """Whether ``keep`` rows are every row that can match: the kept count without a filter, else a
        bounded probe for a row past the first ``keep`` matches (never a full count)."""
        if wanted is None:
            return len(self) <= keep
        where, params = filter_sql(wanted)
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} OFFSET %(keep)s)").format(sql.Identifier(self.table),
                                                                                        where),
            {**params, "keep": keep},
        ).fetchone()
        return not (row and row[0])


def _exact_count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _check_nul(ids: list[str], texts: list[str | None], metadata: list[dict[str, Any] | None]) -> None:
    """PostgreSQL text and jsonb cannot hold NUL characters; refuse them before the load starts.

    Raises:
        InputError: an id, text or metadata string holds ``\\x00``.
    """
    for kind, values in (("id", ids), ("text", texts)):
        for value in values:
            if value is not None and "\x00" in str(value):
                raise InputError(f"a document {kind} holds a NUL character, which PostgreSQL cannot store: {value!r}")
    for meta in metadata:
        if meta is not None and any("\x00" in key or (isinstance(v, str) and "\x00" in v) for key, v in meta.items()):
            raise InputError(f"metadata holds a NUL character, which PostgreSQL cannot store: {meta!r}")


def _id_list(ids: Iterable[str] | str) -> list[str]:
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]

