"""The embedded backend: a :class:`~matryoshka.retrieval.FunnelIndex` directory behind the backend API.

``faiss:///abs/dir`` or a plain path opens (or creates) an index directory. Writes go to memory and
are saved atomically to the directory after every ``save_every`` write calls (default: each call,
so an acknowledged write survives a crash); a bulk load can pass a larger ``save_every`` and call
:meth:`EmbeddedBackend.flush` at the end. A load that dies between saves loses only the unsaved
calls, and a resumed load (which skips :meth:`existing` ids) writes them again, never twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matryoshka.backends.base import Filter, Hit, Metadata, check_batch
from matryoshka.retrieval.index import FunnelIndex
from matryoshka.retrieval.stages import Stage
from matryoshka.retrieval.store import MANIFEST, read_manifest


class EmbeddedBackend:
    """A funnel index directory on local disk (FAISS scans), with upsert, delete and metadata filters."""

    def __init__(self, index: FunnelIndex, path: Path, save_every: int = 1) -> None:
        if save_every < 1:
            raise ValueError(f"save_every must be at least 1, got {save_every}")
        self.index = index
        self.path = path
        self.url = f"faiss://{path}"
        self.save_every = save_every
        self._pending = 0

    @property
    def dim(self) -> int:
        """Full vector dimension."""
        return self.index.dim

    @property
    def model_name(self) -> str:
        """The model recorded in the index manifest."""
        return self.index.model_name

    @classmethod
    def open(
        cls, location: str | Path, dim: int | None = None, model_name: str = "", create: bool = True, save_every: int = 1
    ) -> EmbeddedBackend:
        """Open the index directory at ``location`` (``faiss://`` prefix optional), creating it if asked.

        Raises:
            FileNotFoundError: no index there and ``create`` is false.
            ValueError: ``dim`` or ``model_name`` differ from the stored index, or ``dim`` is missing
                for a new one.
        """
        path = Path(str(location).removeprefix("faiss://")).expanduser().absolute()
        if (path / MANIFEST).exists():
            manifest = read_manifest(path)
            if dim is not None and dim != manifest["dim"]:
                raise ValueError(f"{path} holds {manifest['dim']}-dim vectors, not {dim}")
            if model_name and manifest["model_name"] and model_name != manifest["model_name"]:
                raise ValueError(f"{path} was built with model {manifest['model_name']!r}, not {model_name!r}")
            return cls(FunnelIndex.load(path), path, save_every)
        if not create:
            raise FileNotFoundError(f"no index at {path}")
        if dim is None or dim < 1:
            raise ValueError(f"creating an index at {path} needs its vector dimension (dim)")
        index = FunnelIndex.from_vectors(np.zeros((0, dim), dtype=np.float32), [], model_name=model_name)
        backend = cls(index, path, save_every)
        backend.flush()
        return backend

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id."""
        ids, rows, texts, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        if not ids:
            return
        self.index.delete(ids)
        self.index.add(rows, ids, texts, meta)
        self._written()

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many existed."""
        removed = self.index.delete([str(i) for i in ids])
        if removed:
            self._written()
        return removed

    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored."""
        return {str(i) for i in ids if str(i) in self.index}

    def search(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Funnel search (default: exact full-size search, whatever the index's own default funnel is)."""
        plan = list(stages) if stages is not None else [Stage(0, "float32", k)]
        return self.index.search(queries, k=k, stages=plan, filter=filter)

    def flush(self) -> None:
        """Save the index directory now (atomically)."""
        self.index.save(self.path)
        self._pending = 0

    def __len__(self) -> int:
        return len(self.index)

    def close(self) -> None:
        """Save unsaved writes."""
        if self._pending:
            self.flush()

    def _written(self) -> None:
        self._pending += 1
        if self._pending >= self.save_every:
            self.flush()

    def __repr__(self) -> str:
        return f"EmbeddedBackend({self.url!r}, count={len(self)}, dim={self.dim})"
