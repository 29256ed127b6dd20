"""Connecting to PostgreSQL: the ``postgresql://`` URL, one probe connection, and the connection pool.

URL: ``postgresql://user:password@host:5432/dbname?table=NAME`` (or ``postgres://``). ``table``
(default ``matryoshka_documents``, a plain SQL identifier of at most 40 characters) is taken out;
every other query parameter goes to libpq unchanged (``sslmode``, ``connect_timeout``,
``target_session_attrs``, ``options=-csearch_path%3Dmyschema``, several ``host1:5432,host2:5432``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from matryoshka.errors import EngineError, InputError

__all__ = ["DEFAULT_TABLE", "connect", "message", "open_pool", "parse_url", "version_tuple"]

DEFAULT_TABLE = "matryoshka_documents"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")  # leaves room for index-name suffixes (63 max)


def parse_url(url: str) -> tuple[str, str, str]:
    """``(libpq URL without table=, URL with the password masked, table name)``.

    Raises:
        InputError: not a ``postgresql://`` URL string, or a bad table name.
    """
    if not isinstance(url, str):
        raise InputError(f"expected a postgresql:// URL string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InputError(f"expected a postgresql:// URL, got scheme {parts.scheme!r}")
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
        raise InputError("the URL names table= more than once")
    if not _TABLE_NAME.fullmatch(table):
        raise InputError(
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


def _options(conninfo: str, masked: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(libpq parameters of the URL, the extra connection settings we add)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise InputError(f"bad PostgreSQL URL {masked}: {message(exc)}") from None
    extra: dict[str, Any] = {"autocommit": True}  # transactions are explicit
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = "matryoshka"
    return params, extra


def connect(conninfo: str, masked: str) -> psycopg.Connection[Any]:
    """One autocommit connection (the schema check runs on it); a failure names the server, not the password.

    Raises:
        EngineError: the server cannot be reached or refuses the login.
    """
    params, extra = _options(conninfo, masked)
    try:
        return psycopg.connect(conninfo, **extra)
    except psycopg.Error as exc:
        host = params.get("host") or "localhost"
        port = params.get("port") or "5432"
        database = params.get("dbname") or params.get("user") or ""
        text = message(exc)
        password = params.get("password")
        if password:
            text = text.replace(str(password), "***")
        raise EngineError(f"cannot connect to PostgreSQL at {host}:{port} (database {database!r}): {text}") from None


def open_pool(conninfo: str, masked: str, size: int) -> ConnectionPool:
    """A pool of up to ``size`` autocommit connections with pgvector's type adapters registered.

    Connections are checked when taken from the pool, so one broken by a server restart is replaced.
    Needs the ``vector`` extension to exist (the adapters look its types up).
    """
    _, extra = _options(conninfo, masked)
    pool = ConnectionPool(
        conninfo, min_size=1, max_size=max(1, size), kwargs=extra, configure=register_vector,
        check=ConnectionPool.check_connection, open=False, name=f"matryoshka {masked}",
    )
    try:
        pool.open(wait=True, timeout=float(extra.get("connect_timeout", 10)) + 5)
    except psycopg.Error as exc:
        pool.close()
        raise EngineError(f"cannot open a connection pool to {masked}: {message(exc)}") from None
    return pool


def message(exc: BaseException) -> str:
    """An engine error as one line."""
    return " ".join(str(exc).split())


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.8.0"`` -> ``(0, 8, 0)``."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])
