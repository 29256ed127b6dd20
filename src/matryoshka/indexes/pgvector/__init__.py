"""PostgreSQL + pgvector: full vectors in one table, Matryoshka prefixes as expression indexes.

- :mod:`.connection`: the ``postgresql://`` URL, the connection pool (``psycopg_pool``, with
  pgvector-python's type adapters registered);
- :mod:`.schema`: the table layout, migrations and the ``matryoshka_meta`` row (dim, model, default funnel);
- :mod:`.queries`: the SQL of a funnel search and of metadata filters;
- :mod:`.rebuild`: :meth:`PgVectorIndex.replace_all`, a new table swapped in by rename in one transaction;
- :mod:`.index`: :class:`PgVectorIndex`, the :class:`~matryoshka.retrieval.protocol.VectorIndex`.

Prefix views are never stored: a shortlist stage is an HNSW index on an expression of the full
vector, and a funnel runs as one statement (shortlist by the prefix, re-rank by the full vector).
Exact search (no stages) is a true exact scan (index scans off). ``int8`` stages are not supported
(pgvector has no int8 vectors). Needs pgvector >= 0.7 (>= 0.8 for iterative index scans, so a
filtered shortlist still yields ``keep`` rows) and psycopg 3.

Writes: :meth:`PgVectorIndex.upsert` streams a batch with binary ``COPY``, one transaction per call,
so an interrupted load never leaves half a batch; a re-run skips ``existing`` ids.
:meth:`PgVectorIndex.replace_all` (what ``matryoshka index build`` runs) replaces every row in one
transaction: readers see the old rows until it commits, and a failure leaves them.

Your own server: create the database, have a superuser run ``CREATE EXTENSION vector`` once if the
application role may not, and point the URL at it. HNSW builds are faster with a larger
``maintenance_work_mem``; build indexes after a bulk load (``matryoshka index build`` does).

Citus (sharded; not covered by the tests): point the URL at the coordinator and open once with
``create=True``, then run ``SELECT create_distributed_table('matryoshka_documents', 'id')``; set
``citus.propagate_set_commands = 'local'`` so the per-search ``SET LOCAL hnsw.*`` settings reach the
workers. Read replicas: open a second index on the replica URL with ``create=False`` (it never writes).

Example:
    >>> index = PgVectorIndex.open("postgresql://app:secret@db:5432/search?table=docs", dim=384,
    ...                            stages="64:float32:400,full:float32:10")
    >>> index.upsert(ids, vectors, texts)
    >>> index.prepare()              # the HNSW index of the 64-dim prefix, after the bulk load
    >>> index.search(queries, k=10)
"""

from matryoshka.indexes.pgvector.connection import DEFAULT_TABLE
from matryoshka.indexes.pgvector.index import DEFAULT_POOL_SIZE, PgVectorIndex
from matryoshka.indexes.pgvector.schema import META_TABLE, SCHEMA_VERSION

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_TABLE", "META_TABLE", "SCHEMA_VERSION", "PgVectorIndex"]
