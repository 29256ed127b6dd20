"""The one index interface: :class:`VectorIndex`, which every engine implements directly.

- :class:`~matryoshka.indexes.faiss.index.FunnelIndex`: the embedded FAISS index (in memory, or a
  ``faiss://`` directory it saves to);
- :class:`~matryoshka.indexes.pgvector.PgVectorIndex`: PostgreSQL + pgvector;
- :class:`~matryoshka.indexes.qdrant.QdrantIndex`: Qdrant (a server or local mode).

:func:`matryoshka.indexes.open_index` opens any of them by URL. The CLI, the server, the demo, the
advisor and the benchmarks hold a ``VectorIndex`` and never ask which engine is behind it.

A document is an id (string), a full unit-length vector, an optional text and optional flat metadata
(see :mod:`matryoshka.retrieval.filters`). A search runs a funnel of
:class:`~matryoshka.retrieval.stages.Stage` passes and returns hits plus one
:class:`~matryoshka.retrieval.types.StageTiming` per stage; an engine that runs the whole funnel as one
request reports its time on the last stage and ``0`` seconds on earlier ones.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import numpy as np

from matryoshka.retrieval.filters import Filter, Metadata
from matryoshka.retrieval.stages import Stage
from matryoshka.retrieval.types import Hit, IndexInfo, StageTiming

__all__ = ["VectorIndex"]


class VectorIndex(abc.ABC):
    """A store of unit vectors searched through a funnel.

    Attributes:
        url: where it lives (``faiss:///dir``, ``postgresql://...`` with the password masked,
            ``qdrant://...``; ``memory:`` for an unsaved in-memory index).
        dim: full vector dimension.
        model_name: the label of the model that made the vectors ("" when unknown).
    """

    url: str
    dim: int
    model_name: str

    @property
    @abc.abstractmethod
    def stages(self) -> list[Stage]:
        """The default funnel: what a search without ``stages`` runs."""

    @abc.abstractmethod
    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id; vectors of any norm are stored at unit length.

        Raises:
            ValueError: shapes or lengths differ, an id is empty or repeats, a vector is zero or not
                finite, or metadata is not a flat JSON object. Nothing is written then.
        """

    @abc.abstractmethod
    def replace_all(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Make these documents the whole index at once (what ``matryoshka index build`` runs).

        A reader sees the old documents or all of the new ones, never an empty or half-loaded
        index, and a failure or a crash part way leaves the old ones: ``clear`` then ``upsert``
        would not. Each engine says how it keeps that promise (Qdrant: where it cannot, and what
        it keeps instead). Documents written by others while it runs are replaced with the rest.

        Raises:
            ValueError: as :meth:`upsert`; nothing is written then.
        """

    @abc.abstractmethod
    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many existed (unknown ids are ignored)."""

    @abc.abstractmethod
    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored (what a resumed load skips)."""

    @abc.abstractmethod
    def search_with_timings(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> tuple[list[list[Hit]], list[StageTiming]]:
        """Top ``k`` hits per query row (full-size vectors) through ``stages`` (default :attr:`stages`),
        restricted to documents whose metadata passes ``filter``; plus one timing per stage."""

    def search(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """The hits of :meth:`search_with_timings`."""
        return self.search_with_timings(queries, k=k, stages=stages, filter=filter)[0]

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of stored documents (kept by the index, not counted per call)."""

    def info(self) -> IndexInfo:
        """Model label, dimension, default funnel, count and engine details; reads no vectors."""
        return IndexInfo(self.url, self.model_name, self.dim, self.stages, len(self), self.details())

    def details(self) -> dict[str, object]:
        """Engine-specific facts for :meth:`info` (storage, table, collection...)."""
        return {}

    @abc.abstractmethod
    def scan_codecs(self, dim: int) -> tuple[str, ...]:
        """The codecs (of ``float32``, ``float16``, ``int8``, ``binary``) that a one-stage search ranking by
        the ``dim``-value prefix alone can use, as the demo's chosen side runs it; empty when this engine
        cannot rank by that prefix (``dim`` outside ``1 … self.dim``, or a prefix it does not store)."""

    def metadata_keys(self) -> set[str] | None:
        """Every metadata key some document has, or ``None`` when the engine cannot list them cheaply."""
        return None

    def prepare(self, stages: Sequence[Stage] | None = None) -> None:  # noqa: B027 - nothing to build by default
        """Build what searches through ``stages`` (default :attr:`stages`) read, e.g. prefix indexes,
        so the first search is not slowed by it; call it after a bulk load."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every document (the dimension, model and default funnel stay); to load a new set of
        documents in its place, use :meth:`replace_all`, which never leaves the index empty."""

    def flush(self) -> None:  # noqa: B027 - engines that commit every write need nothing here
        """Make every acknowledged write durable now (a no-op where each write already is)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release connections and files; the data stays."""

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
