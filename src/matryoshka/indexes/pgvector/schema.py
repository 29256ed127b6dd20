"""The table layout, its migrations, and the ``matryoshka_meta`` row that records dim, model and default funnel.

Each document is one row ``(id text primary key, seq bigserial, embedding vector(dim), text, metadata
jsonb)``. ``matryoshka_meta`` holds one row per table: ``dim``, ``model_name``, ``schema_version``
and ``stages`` (the default funnel, a spec string). Opening with ``create=True`` creates the
``vector`` extension, the table and its meta row, or migrates an older layout; ``create=False``
writes nothing (for read replicas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from matryoshka.errors import DimensionError, EngineError, InputError
from matryoshka.indexes.pgvector.connection import version_tuple

__all__ = ["META_TABLE", "MIN_PGVECTOR", "SCHEMA_VERSION", "Schema", "init_schema"]

META_TABLE = "matryoshka_meta"
#: Version of the table layout; step ``v`` of :func:`_migrations` brings a table from ``v - 1`` to ``v``.
SCHEMA_VERSION = 3
MIN_PGVECTOR = (0, 7, 0)


@dataclass
class Schema:
    """What the meta row and the server say about one table."""

    dim: int
    model_name: str
    stages: str
    pgvector_version: tuple[int, ...]


def _migrations(table: str, dim: int) -> dict[int, list[sql.Composed]]:
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
        3: [  # the default funnel, recorded like the dim and the model
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS stages text NOT NULL DEFAULT ''").format(
                sql.Identifier(META_TABLE)
            ),
        ],
    }


def _read_state(conn: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """pgvector version, whether the table exists, and its meta row as a dict (any schema version)."""
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    meta_exists, table_exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        [sql.Identifier(META_TABLE).as_string(conn), sql.Identifier(table).as_string(conn)],
    ).fetchone()  # type: ignore[misc]
    row = None
    if meta_exists:
        found = conn.execute(
            sql.SQL("SELECT to_jsonb(m) FROM {} AS m WHERE table_name = %s").format(sql.Identifier(META_TABLE)),
            [table],
        ).fetchone()
        row = found[0] if found else None
    return {"pgvector": ext[0] if ext else None, "table_exists": table_exists, "row": row}


def _migrate(conn: psycopg.Connection[Any], table: str, version: int, dim: int) -> None:
    steps = _migrations(table, dim)
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for statement in steps[step]:
            conn.execute(statement)


def init_schema(
    conn: psycopg.Connection[Any], table: str, url: str, dim: int | None, model_name: str, create: bool,
    stages: str | None,
) -> Schema:
    """Read the meta row; create or migrate only when something is missing (so replicas stay read-only).

    Runs inside the caller's transaction.

    Raises:
        InputError: ``dim`` missing for a new table, or ``dim``/``model_name`` differ from the stored ones.
        EngineError: no pgvector (or too old), a missing table with ``create=False``, a foreign table,
            or a newer schema version.
    """
    state = _read_state(conn, table)
    row = state["row"]
    needs_write = (
        state["pgvector"] is None
        or row is None
        or row["schema_version"] < SCHEMA_VERSION
        or (model_name and not row["model_name"])
        or (stages is not None and stages != row.get("stages"))
    )
    if needs_write and create:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"matryoshka:{table}"])
        if _read_state(conn, table)["pgvector"] is None:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise EngineError(
                    f"pgvector is not installed in the database at {url} and this role may not "
                    "install it; have a superuser run CREATE EXTENSION vector"
                ) from exc
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, dim integer NOT NULL, "
                "model_name text NOT NULL DEFAULT '', schema_version integer NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now(), stages text NOT NULL DEFAULT '')"
            ).format(sql.Identifier(META_TABLE))
        )
        state = _read_state(conn, table)
        row = state["row"]
    version_text = state["pgvector"]
    if version_text is None:
        raise EngineError(f"pgvector is not installed in the database at {url} (CREATE EXTENSION vector)")
    pgvector_version = version_tuple(version_text)
    if pgvector_version < MIN_PGVECTOR:
        raise EngineError(f"pgvector {version_text} at {url} is too old; this backend needs >= 0.7")
    if row is None:
        if not create:
            raise EngineError(
                f"no matryoshka table {table!r} at {url}: build it with `matryoshka index build --corpus ... "
                "--out URL` (from Python: open it with create=True and dim=...)"
            )
        if state["table_exists"]:
            raise EngineError(
                f"table {table!r} exists at {url} but has no {META_TABLE} row; it was not created "
                "by matryoshka (pick another ?table=)"
            )
        if dim is None:
            raise InputError(f"table {table!r} does not exist yet; pass dim=... to create it")
        _migrate(conn, table, 0, dim)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_name, dim, model_name, schema_version, stages) VALUES (%s, %s, %s, %s, %s)"
            ).format(sql.Identifier(META_TABLE)),
            [table, dim, model_name, SCHEMA_VERSION, stages or ""],
        )
        return Schema(dim, model_name, stages or "", pgvector_version)
    stored_dim, stored_model, version = row["dim"], row["model_name"], row["schema_version"]
    if dim is not None and dim != stored_dim:
        raise DimensionError(f"table {table!r} holds {stored_dim}-dim vectors, not {dim}")
    if model_name and stored_model and model_name != stored_model:
        raise InputError(f"table {table!r} holds vectors of model {stored_model!r}, not {model_name!r}")
    if version > SCHEMA_VERSION:
        raise EngineError(
            f"table {table!r} has schema version {version}, newer than this matryoshka ({SCHEMA_VERSION}); "
            "upgrade matryoshka"
        )
    if version < SCHEMA_VERSION:
        if not create:
            raise EngineError(
                f"table {table!r} has schema version {version}; open it once with create=True "
                f"to migrate it to {SCHEMA_VERSION}"
            )
        _migrate(conn, table, version, stored_dim)
    stored_stages = row.get("stages") or ""
    if create and (version < SCHEMA_VERSION or (model_name and not stored_model) or
                   (stages is not None and stages != stored_stages)):
        conn.execute(
            sql.SQL("UPDATE {} SET schema_version = %s, model_name = %s, stages = %s WHERE table_name = %s").format(
                sql.Identifier(META_TABLE)
            ),
            [SCHEMA_VERSION, stored_model or model_name, stored_stages if stages is None else stages, table],
        )
        stored_stages = stored_stages if stages is None else stages
    return Schema(stored_dim, stored_model or model_name, stored_stages, pgvector_version)
