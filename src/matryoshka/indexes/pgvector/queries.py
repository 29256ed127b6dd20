"""The SQL a funnel search runs on pgvector: prefix expressions, the re-rank distance, metadata filters.

A shortlist stage ``d:float32`` reads the expression ``l2_normalize(subvector(embedding, 1, d))::vector(d)``
(an HNSW expression index makes it fast), ``d:float16`` the same cast to ``halfvec(d)`` and
``d:binary`` ``binary_quantize(subvector(embedding, 1, d))::bit(d)`` (Hamming). A funnel is ONE
statement: an inner query takes ``keep`` rows ordered by the prefix expression and the outer query
re-ranks them by the full ``embedding <=> query``, ties broken by ``seq`` (insertion order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pgvector import Bit
from psycopg import sql

from matryoshka.embeddings import unit_rows
from matryoshka.errors import DimensionError, InputError
from matryoshka.retrieval.stages import Stage, validate_stages

__all__ = ["HNSW_MAX_DIM", "Query", "filter_sql", "index_parts", "prefix_expression", "prefix_sql", "query_rows",
           "search_sql", "shortlist_stages"]

HNSW_MAX_DIM = {"vector": 2000, "halfvec": 4000, "bit": 64000}
_MAX_EF_SEARCH = 1000
_MIN_EF_SEARCH = 40  # pgvector's default
ITERATIVE_SCAN_PGVECTOR = (0, 8, 0)


def prefix_expression(codec: str, d: int) -> sql.Composable:
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
    return sql.SQL("%(p)s::vector({})::{}({})").format(sql.Literal(d), sql.SQL(kind), sql.Literal(d))


def _rerank_distance(codec: str, dim: int) -> sql.Composable:
    """Cosine distance of the full vectors in the final stage's precision."""
    if codec == "float16":
        return sql.SQL("(embedding::halfvec({d}) <=> %(q)s::vector({d})::halfvec({d}))").format(d=sql.Literal(dim))
    return sql.SQL("(embedding <=> %(q)s::vector({d}))").format(d=sql.Literal(dim))


def filter_sql(wanted: dict[str, list[Any]] | None) -> tuple[sql.Composable, dict[str, str]]:
    """``metadata @> {key: value}`` terms (OR within a key, AND across keys) and their JSON parameters.

    jsonb containment compares numbers by value (``1`` matches ``1.0``) and never equates a boolean
    with a number, which is the rule of :func:`matryoshka.retrieval.filters.matches`.
    """
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


def index_parts(table: str, stage: Stage, dim: int) -> tuple[str, sql.Composable, str]:
    """Index name, indexed expression and operator class for a shortlist stage.

    Raises:
        InputError: not a stage, an ``int8`` stage, or a prefix longer than pgvector's HNSW limit for the codec.
    """
    if not isinstance(stage, Stage):
        raise InputError(f"expected a Stage, got {stage!r}")
    validate_stages([stage], dim)
    d = stage.dim or dim
    if stage.codec == "int8":
        raise InputError("pgvector has no int8 vectors; use a float32, float16 or binary shortlist stage")
    kind = {"float32": "vector", "float16": "halfvec", "binary": "bit"}[stage.codec]
    if d > HNSW_MAX_DIM[kind]:
        raise InputError(
            f"pgvector indexes {kind} prefixes of at most {HNSW_MAX_DIM[kind]} dims, stage {stage} reads {d}"
            + ("; use float16 or binary" if kind == "vector" else "")
        )
    suffix = {"float32": "f32", "float16": "f16", "binary": "bin"}[stage.codec]
    opclass = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops", "bit": "bit_hamming_ops"}[kind]
    return f"{table}_p{d}_{suffix}_hnsw", prefix_expression(stage.codec, d), opclass


def shortlist_stages(stages: Sequence[Stage], dim: int) -> list[Stage]:
    """The stages of a funnel that scan a prefix index: all but a final full-size float re-rank."""
    stages = validate_stages(stages, dim)
    last = stages[-1]
    if (last.dim or dim) == dim and last.codec in ("float32", "float16"):
        stages = stages[:-1]
    return stages


class Query:
    """One prepared search: the funnel statement, the exact one, its ``SET LOCAL`` settings, and how
    to bind a query row's parameters (the full vector, its prefix view, filter values)."""

    __slots__ = ("exact", "filter_params", "final", "funnel", "hamming", "settings", "shortlist")

    def __init__(
        self, shortlist: Stage | None, final: Stage, filter_params: dict[str, str], exact: sql.Composed,
        funnel: sql.Composed, settings: list[sql.Composable], hamming: int = 0,
    ) -> None:
        self.shortlist = shortlist
        self.final = final
        self.filter_params = filter_params
        self.exact = exact
        self.funnel = funnel
        self.settings = settings
        self.hamming = hamming  # > 0: distances are Hamming counts over this many bits

    def score(self, distance: float) -> float:
        """Cosine similarity from the statement's distance (a binary view's Hamming count maps to
        ``cos(pi * h / d)``, as in the embedded index)."""
        if self.hamming:
            return float(np.cos(np.pi * distance / self.hamming))
        return float(1.0 - distance)

    def statement(self, row: np.ndarray) -> sql.Composed:
        """The funnel, or exact search for a query whose float prefix is all zeros (no direction to shortlist by)."""
        shortlist = self.shortlist
        if shortlist is not None and shortlist.codec != "binary" and not np.any(row[: shortlist.dim]):
            return self.exact
        return self.funnel

    def params(self, row: np.ndarray) -> dict[str, Any]:
        """Parameters of one query row; vectors go through pgvector's type adapters."""
        params: dict[str, Any] = {**self.filter_params, "q": np.asarray(row, dtype=np.float32)}
        if self.shortlist is not None:
            prefix = row[: self.shortlist.dim]
            if self.shortlist.codec == "binary":
                params["p"] = Bit(prefix > 0)
            elif np.any(prefix):
                params["p"] = (prefix / np.linalg.norm(prefix)).astype(np.float32)
        return params


def search_sql(
    table: str, dim: int, k: int, shortlist: Stage | None, final: Stage, wanted: dict[str, list[Any]] | None,
    pgvector_version: tuple[int, ...],
) -> Query:
    """The statements of a search: exact when ``shortlist`` is ``None``, else shortlist then re-rank."""
    where, filter_params = filter_sql(wanted)
    t = sql.Identifier(table)
    distance = _rerank_distance(final.codec, dim)
    exact = sql.SQL(
        "SELECT id, text, {distance} AS distance FROM {table} WHERE {where} ORDER BY distance, seq LIMIT {k}"
    ).format(distance=distance, table=t, where=where, k=sql.Literal(k))
    if shortlist is None:
        return Query(None, final, filter_params, exact, exact, [sql.SQL("SET LOCAL enable_indexscan = off")])
    d = shortlist.dim
    funnel = sql.SQL(
        "SELECT id, text, {distance} AS distance FROM ("
        "SELECT id, seq, text, embedding FROM {table} WHERE {where} "
        "ORDER BY {prefix} {op} {query} LIMIT {keep}"
        ") AS shortlist ORDER BY distance, seq LIMIT {k}"
    ).format(
        distance=distance, table=t, where=where, prefix=prefix_expression(shortlist.codec, d),
        op=sql.SQL("<~>" if shortlist.codec == "binary" else "<=>"),
        query=_prefix_query(shortlist.codec, d), keep=sql.Literal(shortlist.keep), k=sql.Literal(k),
    )
    ef_search = min(max(shortlist.keep, _MIN_EF_SEARCH), _MAX_EF_SEARCH)
    settings: list[sql.Composable] = [sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search))]
    if pgvector_version >= ITERATIVE_SCAN_PGVECTOR:
        # keeps scanning the graph until `keep` rows pass the filter (order is restored by the re-rank)
        settings.append(sql.SQL("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    return Query(shortlist, final, filter_params, exact, funnel, settings)


def prefix_sql(table: str, k: int, stage: Stage, wanted: dict[str, list[Any]] | None) -> Query:
    """An exact scan ranked by one prefix view alone (``stage.dim`` values in ``stage.codec``)."""
    where, filter_params = filter_sql(wanted)
    d = stage.dim
    op = sql.SQL("<~>" if stage.codec == "binary" else "<=>")
    statement = sql.SQL(
        "SELECT id, text, {prefix} {op} {query} AS distance FROM {table} WHERE {where} ORDER BY distance, seq LIMIT {k}"
    ).format(prefix=prefix_expression(stage.codec, d), op=op, query=_prefix_query(stage.codec, d),
             table=sql.Identifier(table), where=where, k=sql.Literal(k))
    settings: list[sql.Composable] = [sql.SQL("SET LOCAL enable_indexscan = off")]
    return Query(stage, stage, filter_params, statement, statement, settings,
                 hamming=d if stage.codec == "binary" else 0)


def query_rows(queries: np.ndarray, dim: int) -> np.ndarray:
    """Query rows as unit float32 (one row for a 1-D query).

    Raises:
        DimensionError: wrong width.
        InputError: NaN/inf, or a zero row.
    """
    array = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if array.ndim != 2 or array.shape[1] != dim:
        raise DimensionError(f"queries must have {dim} dims (shape (count, {dim})), got shape {np.shape(queries)}")
    if not np.isfinite(array).all():
        raise InputError("queries hold NaN or inf")
    if (np.linalg.norm(array, axis=1) == 0).any():
        raise InputError("a zero query vector has no direction to search")
    return unit_rows(array)
