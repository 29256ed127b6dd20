"""Replacing every row of a table at once (:meth:`PgVectorIndex.replace_all`), inside the caller's transaction.

Either way the whole replacement is one transaction: readers see the old rows until it commits, and
a failure or a crash at any point (the server's too) leaves the old rows and nothing else.

- :func:`swap_in`, for a table as matryoshka makes it: the rows are copied into a new table made
  ``LIKE`` the old one (columns, defaults, constraints), which then gets every index of the old one
  (same definitions, built after the load as a bulk load should), its grants, owner, comment and
  id sequence; the old table is dropped and the new one takes its name, its indexes and
  constraints the old names. Only that last step takes the table's exclusive lock, so searches
  are held up for moments, not for the load. The ``matryoshka_meta`` row is keyed by the table
  name and stays as it is.
- :func:`replace_in_place`, for a table with something a swap would lose (see :func:`read_facts`:
  views or foreign keys that depend on it, triggers, rules, row-level security, a publication,
  inheritance, column grants, storage settings, another tablespace, a Citus distribution) or one
  this role may not drop: ``DELETE`` every row and copy the new ones, with writers locked out
  meanwhile. Readers still see the old rows until commit; the dead rows wait for (auto)vacuum.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from matryoshka.errors import EngineError

__all__ = ["Load", "TableFacts", "read_facts", "replace_in_place", "swap_in"]

#: Copies the new rows into the table it is given (the caller's COPY, on the same connection).
Load = Callable[[sql.Identifier], None]

_PRIVILEGE = re.compile(r"[A-Z]+")
_INDEX_DEF = re.compile(r"CREATE (UNIQUE )?INDEX .+? ON (?:ONLY )?\S+ (USING .+)", re.DOTALL)

# Why a table cannot be swapped: each line names what the swap would lose or cannot do.
_FACTS = """
SELECT c.oid, n.nspname, pg_get_userbyid(c.relowner), current_user, obj_description(c.oid, 'pg_class'),
  array_remove(ARRAY[
    CASE WHEN c.relkind <> 'r' THEN 'it is not a plain table' END,
    CASE WHEN c.relispartition OR c.relhassubclass OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
      THEN 'inheritance or partitions' END,
    CASE WHEN c.relrowsecurity OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
      THEN 'row-level security' END,
    CASE WHEN EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) THEN 'triggers' END,
    CASE WHEN EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid) THEN 'rules' END,
    CASE WHEN EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prrelid = c.oid) THEN 'a publication' END,
    CASE WHEN EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
                      AND d.deptype = 'n') THEN 'objects that depend on it (views, foreign keys)' END,
    CASE WHEN c.reloptions IS NOT NULL THEN 'storage settings' END,
    CASE WHEN c.reltablespace <> 0 OR EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                              WHERE x.indrelid = c.oid AND i.reltablespace <> 0)
      THEN 'another tablespace' END,
    CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)
      THEN 'column privileges' END,
    CASE WHEN NOT pg_has_role(c.relowner, 'MEMBER') THEN 'another role owns it' END,
    CASE WHEN NOT has_schema_privilege(n.oid, 'CREATE') THEN 'no CREATE privilege on its schema' END
  ], NULL)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""

_INDEXES = """
SELECT i.relname, pg_get_indexdef(x.indexrelid), c.conname, pg_get_constraintdef(c.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid AND c.contype IN ('p', 'u', 'x')
WHERE x.indrelid = %s::oid ORDER BY i.relname
"""

_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE c.oid = %s::oid AND a.grantee <> c.relowner
"""


@dataclass(frozen=True)
class TableFacts:
    """What a replacement needs to know about the table: where it is, who owns it, what a swap would lose."""

    oid: int
    schema: str
    owner: str
    user: str
    comment: str | None
    obstacles: tuple[str, ...]

    @property
    def swappable(self) -> bool:
        """Whether :func:`swap_in` keeps everything the table has."""
        return not self.obstacles


def read_facts(conn: psycopg.Connection[Any], table: str, url: str) -> TableFacts:
    """Read the table's place, owner and the obstacles to a swap (empty: it can be swapped).

    Raises:
        EngineError: the table is gone.
    """
    row = conn.execute(_FACTS, [sql.Identifier(table).as_string(conn)]).fetchone()
    if row is None:
        raise EngineError(f"no table {table!r} at {url} any more (dropped while it was open?)")
    oid, schema, owner, user, comment, obstacles = row
    found = list(obstacles or [])
    citus = conn.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL").fetchone()
    if citus and citus[0]:
        distributed = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid::oid = %s::oid)", [oid]
        ).fetchone()
        if distributed and distributed[0]:
            found.append("a Citus distribution")
    return TableFacts(int(oid), str(schema), str(owner), str(user), comment, tuple(found))


def swap_in(conn: psycopg.Connection[Any], table: str, facts: TableFacts, load: Load) -> None:
    """Load the rows into a new table built like ``table``, then put it in its place (see the module docstring)."""
    old = sql.Identifier(facts.schema, table)
    staging = f"matryoshka_rebuild_{facts.oid}"  # not a valid matryoshka table name (those are <= 40 chars)
    new = sql.Identifier(facts.schema, staging)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)").format(new, old))
    load(new)
    renames: list[sql.Composed] = []
    for number, (name, definition, constraint, constraint_def) in enumerate(conn.execute(_INDEXES, [facts.oid]).fetchall()):
        built = f"{staging}_{number}"
        if constraint is not None:  # a primary key (or unique/exclusion constraint) and its index
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new, sql.Identifier(built), sql.SQL(constraint_def)))
            renames.append(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                old, sql.Identifier(built), sql.Identifier(constraint)))
            built = constraint  # renaming the constraint renames its index
        else:
            match = _INDEX_DEF.fullmatch(definition)
            if match is None:  # pragma: no cover - pg_get_indexdef always has this shape
                raise EngineError(f"cannot rebuild index {name!r} of {table!r}: unexpected definition {definition!r}")
            conn.execute(sql.SQL("CREATE {}INDEX {} ON {} {}").format(
                sql.SQL(match.group(1) or ""), sql.Identifier(built), new, sql.SQL(match.group(2))))
        if built != name:
            renames.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(facts.schema, built), sql.Identifier(name)))
    for grantee, privilege, grantable in conn.execute(_GRANTS, [facts.oid]).fetchall():
        if not _PRIVILEGE.fullmatch(privilege):  # pragma: no cover - aclexplode names privileges in capitals
            raise EngineError(f"cannot copy privilege {privilege!r} of {table!r}")
        conn.execute(sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
            sql.SQL(privilege), new, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if facts.comment is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(new, sql.Literal(facts.comment)))
    if facts.owner != facts.user:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(new, sql.Identifier(facts.owner)))
    sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'seq')", [old.as_string(conn)]).fetchone()
    if sequence and sequence[0]:  # the new rows took their seq from it; it must outlive the old table
        conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.seq").format(sql.SQL(sequence[0]), new))
    conn.execute(sql.SQL("ANALYZE {}").format(new))
    conn.execute(sql.SQL("DROP TABLE {}").format(old))  # the exclusive lock, held until commit
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(table)))
    for statement in renames:
        conn.execute(statement)


def replace_in_place(conn: psycopg.Connection[Any], table: str, facts: TableFacts, load: Load) -> None:
    """Delete every row of ``table`` and load the new ones, writers locked out (readers are not)."""
    target = sql.Identifier(facts.schema, table)
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
    conn.execute(sql.SQL("DELETE FROM {}").format(target))
    load(target)
