"""Vector backends: the same funnel search on the embedded index, PostgreSQL + pgvector or Qdrant.

A backend is chosen by a URL-like string:

- ``faiss:///path/to/dir`` or a plain path: the embedded :class:`~matryoshka.retrieval.FunnelIndex`
  directory (:mod:`matryoshka.backends.embedded`);
- ``postgresql://user@host:5432/db?table=docs``: PostgreSQL with pgvector
  (:mod:`matryoshka.backends.pgvector`);
- ``qdrant://host:6333/collection`` (``qdrants://`` for HTTPS) or ``qdrant+local:///path?collection=docs``
  for qdrant-client's local mode (:mod:`matryoshka.backends.qdrant`).

Every backend implements :class:`VectorBackend`: ``upsert``, ``delete``, ``existing``, ``search``
(with the same :class:`~matryoshka.retrieval.Stage` lists and metadata filters) and ``close``.

Example:
    >>> backend = open_backend("postgresql://localhost/search?table=docs", dim=384)
    >>> backend.upsert(["a", "b"], vectors, texts=["first", "second"], metadata=[{"lang": "en"}, None])
    >>> backend.search(query_vectors, k=10, stages=parse_stages("64:float32:400,full:float32:10"))
"""

from __future__ import annotations

from typing import Any

from matryoshka.backends.base import BackendError, VectorBackend

__all__ = ["BackendError", "VectorBackend", "backend_kind", "open_backend"]

_KINDS = {
    "faiss": "faiss",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "qdrant": "qdrant",
    "qdrants": "qdrant",
    "qdrant+local": "qdrant",
}


def backend_kind(url: str) -> str:
    """``"faiss"``, ``"postgresql"`` or ``"qdrant"`` for a backend URL (a plain path means ``faiss``).

    Raises:
        ValueError: the URL names a scheme no backend handles.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a backend URL must be a non-empty string")
    scheme, sep, _ = url.partition("://")
    if not sep:
        if url.startswith("qdrant+local:"):
            return "qdrant"
        return "faiss"
    kind = _KINDS.get(scheme.lower())
    if kind is None:
        raise ValueError(
            f"unknown backend scheme {scheme!r} in {url!r}: use faiss://PATH, postgresql://..., qdrant://HOST/COLLECTION "
            "or qdrant+local://PATH"
        )
    return kind


def open_backend(url: str, dim: int | None = None, model_name: str = "", create: bool = True, **options: Any) -> Any:
    """Open (or create, given ``dim``) the backend that ``url`` names; ``options`` go to its ``open``.

    Raises:
        ValueError: unknown scheme, or ``dim``/``model_name`` differ from what is stored.
        BackendError: the engine cannot be reached or refuses the operation.
        ImportError: the engine's client library is missing (with the pip extra to install).
    """
    kind = backend_kind(url)
    if kind == "faiss":
        from matryoshka.backends.embedded import EmbeddedBackend

        return EmbeddedBackend.open(url, dim=dim, model_name=model_name, create=create, **options)
    if kind == "postgresql":
        try:
            from matryoshka.backends.pgvector import PgVectorBackend
        except ImportError as exc:
            raise ImportError(f"the PostgreSQL backend needs psycopg: pip install 'matryoshka[postgres]' ({exc})") from exc
        return PgVectorBackend.open(url, dim=dim, model_name=model_name, create=create, **options)
    try:
        from matryoshka.backends.qdrant import QdrantBackend
    except ImportError as exc:
        raise ImportError(f"the Qdrant backend needs qdrant-client: pip install 'matryoshka[qdrant]' ({exc})") from exc
    return QdrantBackend.open(url, dim=dim, model_name=model_name, create=create, **options)
