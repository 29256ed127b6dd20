"""Where an index lives, by URL: :func:`open_index` returns a :class:`~matryoshka.retrieval.protocol.VectorIndex`.

- ``faiss:///path/to/dir`` or a plain path: the embedded :class:`~matryoshka.indexes.faiss.index.FunnelIndex`
  directory (FAISS scans in this process);
- ``postgresql://user@host:5432/db?table=docs`` (or ``postgres://``): PostgreSQL with pgvector
  (:mod:`matryoshka.indexes.pgvector`);
- ``qdrant://host:6333/collection`` (``qdrants://`` for HTTPS) or ``qdrant+local:///path?collection=docs``
  for qdrant-client's local mode (:mod:`matryoshka.indexes.qdrant`).

Every one offers the same ``upsert``, ``delete``, ``existing``, ``search``/``search_with_timings`` (the
same :class:`~matryoshka.retrieval.stages.Stage` lists and metadata filters), ``len``, ``info`` and
``close``.

Example:
    >>> index = open_index("postgresql://localhost/search?table=docs", dim=384, model_name="all-MiniLM-L6-v2")
    >>> index.upsert(["a", "b"], vectors, texts=["first", "second"], metadata=[{"lang": "en"}, None])
    >>> index.search(query_vectors, k=10, stages=parse_stages("64:float32:400,full:float32:10"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matryoshka.errors import EngineError, InputError, MissingDependencyError
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import Stage

__all__ = ["EngineError", "VectorIndex", "backend_kind", "open_index"]

_KINDS = {
    "faiss": "faiss",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "qdrant": "qdrant",
    "qdrants": "qdrant",
    "qdrant+local": "qdrant",
}


def backend_kind(url: str) -> str:
    """``"faiss"``, ``"postgresql"`` or ``"qdrant"`` for an index URL (a plain path means ``faiss``).

    Raises:
        InputError: the URL names a scheme no engine handles.
    """
    if not isinstance(url, str) or not url.strip():
        raise InputError("an index URL must be a non-empty string")
    scheme, sep, _ = url.partition("://")
    if not sep:
        if url.startswith("qdrant+local:"):
            return "qdrant"
        return "faiss"
    kind = _KINDS.get(scheme.lower())
    if kind is None:
        raise InputError(
            f"unknown index scheme {scheme!r} in {url!r}: use faiss://PATH (or a path), postgresql://..., "
            "qdrant://HOST/COLLECTION or qdrant+local://PATH"
        )
    return kind


def open_index(
    url: str,
    dim: int | None = None,
    model_name: str = "",
    create: bool | None = None,
    stages: Sequence[Stage] | None = None,
    storage: str = "float32",
    **options: Any,
) -> VectorIndex:
    """Open the index ``url`` names; with ``create`` (default: when ``dim`` is given) make it when missing.

    ``stages`` is the default funnel to record (with ``create``); ``storage`` the dtype of the stored
    full vectors (``float16`` only on ``faiss://``); ``options`` go to the engine's ``open``
    (``checkpoint_vectors``/``checkpoint_seconds``/``mmap`` for
    ``faiss://``, ``pool_size``/``index_stages`` for PostgreSQL, ``prefix_dims``/``binary`` for Qdrant).

    Raises:
        InputError: unknown scheme, or ``dim``/``model_name`` differ from what is stored.
        FileNotFoundError: no index directory there (``faiss://`` without ``create``).
        IndexStoreError: the index is corrupt, or the engine cannot be reached or refuses
            (:class:`~matryoshka.errors.EngineError`).
        MissingDependencyError: the engine's client library is missing (with the pip extra to install).
    """
    kind = backend_kind(url)
    create = dim is not None if create is None else create
    if kind == "faiss":
        from matryoshka.indexes.faiss.index import FunnelIndex

        return FunnelIndex.open(url, dim=dim, model_name=model_name, create=create, stages=stages,
                                storage=storage, **options)  # type: ignore[arg-type]
    if storage != "float32":
        raise InputError(f"{kind} stores float32 vectors; storage={storage!r} is for faiss:// indexes")
    if kind == "postgresql":
        try:
            from matryoshka.indexes.pgvector import PgVectorIndex
        except ImportError as exc:
            raise MissingDependencyError(f"the PostgreSQL backend needs psycopg: pip install 'matryoshka[postgres]' ({exc})") from exc
        return PgVectorIndex.open(url, dim=dim, model_name=model_name, create=create, stages=stages, **options)
    try:
        from matryoshka.indexes.qdrant import QdrantIndex
    except ImportError as exc:
        raise MissingDependencyError(f"the Qdrant backend needs qdrant-client: pip install 'matryoshka[qdrant]' ({exc})") from exc
    return QdrantIndex.open(url, dim=dim, model_name=model_name, create=create, stages=stages, **options)
