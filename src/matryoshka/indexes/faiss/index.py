"""A funnel index over Matryoshka embeddings: scan a cheap prefix, re-rank the shortlist at full size.

The index stores each full vector once (unit length, float32 or float16) in a growable buffer
(:mod:`.buffer`). Every other view is derived from it: a ``d``-dim prefix re-normalized to unit
length, its sign bits, or int8 codes. Views that a first stage scans are built on first use and
cached within a budget (:mod:`.views`); later stages compute their view from the stored vectors of
the few candidates they re-score, or read a cached one too (int8 codes; the neighbour graph of a
``graph`` stage). :mod:`.scoring` runs the funnel. An index saved to a directory (:meth:`FunnelIndex.open`,
or ``faiss://DIR`` through :func:`matryoshka.indexes.open_index`) keeps its writes in memory and saves
them atomically at checkpoints (:mod:`.checkpoints`; the format is :mod:`.store`).

Example:
    >>> index = FunnelIndex.build(model, texts, stages=parse_stages("64:float32:400,full:float32:10"))
    >>> hits = index.search(encode(model, ["a question"]), k=5)
    >>> hits[0][0].id, hits[0][0].score
    ('17', 0.61)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matryoshka.data.documents import Metadata
from matryoshka.embeddings.vectors import encode
from matryoshka.errors import DimensionError, InputError
from matryoshka.indexes.base import check_batch
from matryoshka.indexes.faiss import records
from matryoshka.indexes.faiss.buffer import appended
from matryoshka.indexes.faiss.checkpoints import CHECKPOINT_SECONDS, Checkpoints
from matryoshka.indexes.faiss.prefixes import finite_unit_rows
from matryoshka.indexes.faiss.records import STORAGES, Storage
from matryoshka.indexes.faiss.scoring import Snapshot, run_funnel
from matryoshka.indexes.faiss.store import VECTORS, existing_manifest, read_index
from matryoshka.indexes.faiss.views import VIEW_CACHE_BYTES, ViewCache
from matryoshka.retrieval.filters import Filter, check_filter, matches
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import PRESETS, Stage, as_float_scan, format_stages, validate_stages
from matryoshka.retrieval.types import Hit, StageTiming

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["CHECKPOINT_SECONDS", "STORAGES", "VIEW_CACHE_BYTES", "FunnelIndex", "Storage"]


class FunnelIndex(VectorIndex):
    """Full vectors stored once, searched through a funnel of :class:`Stage` passes: the embedded
    :class:`~matryoshka.retrieval.protocol.VectorIndex`.

    Create one with :meth:`from_vectors`, :meth:`build`, :meth:`load` or :meth:`open`. ``stages`` is
    the default funnel (``PRESETS["exact"]`` unless given); every search may pass its own.

    Attributes:
        model_name: the model that produced the vectors (recorded in the manifest).
        dim: full vector dimension.
        storage: ``"float32"`` or ``"float16"``, the dtype of the stored full vectors.
        path: the directory writes are saved to (``None``: in memory only).
        checkpoint_vectors: save after this many written vectors (``None``: no count checkpoint).
        checkpoint_seconds: save when this long has passed since the last save (``None``: never by time).
    """

    def __init__(
        self,
        vectors: np.ndarray,
        ids: list[str],
        texts: list[str | None] | None,
        model_name: str,
        stages: Sequence[Stage] | None,
        storage: Storage,
        metadata: list[dict[str, Any] | None] | None = None,
    ) -> None:
        # Trusted constructor: vectors are unit rows of dtype ``storage``; public paths validate first.
        self._vectors = vectors
        self._buffer: np.ndarray | None = None  # writable storage that _vectors is the head of
        self._ids = ids
        self._texts = texts
        self._metadata = metadata
        self._rows = {doc_id: row for row, doc_id in enumerate(ids)}
        self._cache = ViewCache()
        self._lock = threading.RLock()
        self.view_cache_bytes = VIEW_CACHE_BYTES
        self.model_name = model_name
        self.dim = int(vectors.shape[1])
        self.storage: Storage = storage
        self.stages = list(PRESETS["exact"]) if stages is None else list(stages)
        self.path: Path | None = None
        self.checkpoint_vectors: int | None = None
        self.checkpoint_seconds: float | None = CHECKPOINT_SECONDS
        self._checkpoints = Checkpoints(self._lock)

    @property
    def url(self) -> str:  # type: ignore[override]
        """``faiss://DIR`` of the directory it saves to, ``memory:`` when it has none."""
        return f"faiss://{self.path}" if self.path is not None else "memory:"

    @property
    def stages(self) -> list[Stage]:
        """The default funnel used when a search passes no stages."""
        return list(self._stages)

    @stages.setter
    def stages(self, stages: Sequence[Stage]) -> None:
        self._stages = validate_stages(stages, self.dim)

    @property
    def ids(self) -> list[str]:
        """Document ids in insertion order."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._rows

    def __repr__(self) -> str:
        return (
            f"FunnelIndex(count={len(self)}, dim={self.dim}, storage={self.storage!r}, "
            f"model_name={self.model_name!r}, stages={format_stages(self._stages)!r})"
        )

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str | None] | None = None,
        model_name: str = "",
        stages: Sequence[Stage] | None = None,
        storage: Storage = "float32",
        metadata: Sequence[Metadata | None] | None = None,
    ) -> FunnelIndex:
        """Index full-size embeddings (any norm; they are scaled to unit length and stored once).

        ``metadata`` (one flat JSON object or ``None`` per vector) is what search filters match.

        Raises:
            InputError: shapes, ids, texts or metadata do not match, an id repeats, or vectors hold NaN/inf.
        """
        records.check_storage(storage)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] < 1:
            raise InputError(f"vectors must be a 2-d array (count, dim), got shape {array.shape}")
        ids, texts, meta = records.check_documents(ids, texts, metadata, len(array))
        return cls(finite_unit_rows(array, storage), ids, texts, model_name, stages, storage, meta)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        dim: int | None = None,
        model_name: str = "",
        create: bool = True,
        stages: Sequence[Stage] | None = None,
        storage: Storage = "float32",
        checkpoint_vectors: int | None = None,
        checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
        mmap: bool = False,
    ) -> FunnelIndex:
        """Open the index directory at ``location`` (``faiss://`` prefix optional), or start a new one there.

        A new index is saved at once (empty), so the directory exists from then on. Writes are saved
        at checkpoints (see :mod:`~matryoshka.indexes.faiss.checkpoints`), on :meth:`flush` and on :meth:`close`.

        Raises:
            FileNotFoundError: nothing at ``location`` and ``create`` is false.
            InputError: ``dim`` or ``model_name`` differ from the stored index, or ``dim`` is missing
                for a new one (:class:`DimensionError` for ``dim``).
            IndexCorruptError: the directory fails its checks, or (``create`` false) it is there
                without its ``manifest.json``.
        """
        if checkpoint_vectors is not None and checkpoint_vectors < 1:
            raise InputError(f"checkpoint_vectors must be at least 1, got {checkpoint_vectors}")
        path = Path(str(location).removeprefix("faiss://")).expanduser().absolute()
        if existing_manifest(path, dim, model_name, create) is not None:
            index = cls.load(path, mmap=mmap)
            fresh = (model_name and not index.model_name) or (stages is not None and list(stages) != index.stages)
            if not create and fresh:
                raise InputError(f"{path}: recording a model or stages needs create=True")
            index.model_name = index.model_name or model_name
            if stages is not None:
                index.stages = stages
        else:
            shape = (0, dim)  # existing_manifest refused a dim that is not a positive integer
            index = cls.from_vectors(np.zeros(shape, np.float32), [], model_name=model_name,  # type: ignore[arg-type]
                                     stages=stages, storage=storage)
            fresh = True
        index.path = path
        index.checkpoint_vectors = checkpoint_vectors
        index.checkpoint_seconds = checkpoint_seconds
        if fresh:
            index.flush(force=True)
        return index

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray], model_name: str) -> FunnelIndex:
        """A new index of the same documents whose vectors are ``transform(vectors)``, e.g. an adaptor
        applied to them, so a rotated or adapted model is searched without encoding the corpus again."""
        with self._lock:
            vectors = transform(np.asarray(self._vectors, dtype=np.float32))
            return FunnelIndex.from_vectors(vectors, self._ids, self._texts, model_name, self._stages, self.storage,
                                            self._metadata)

    @classmethod
    def build(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        model_name: str = "",
        stages: Sequence[Stage] | None = None,
        storage: Storage = "float32",
        batch_size: int = 64,
        show_progress_bar: bool = True,
    ) -> FunnelIndex:
        """Encode ``texts`` at full size with ``model`` and index them (ids default to ``"0", "1", ...``)."""
        texts = list(texts)
        ids = [str(i) for i in range(len(texts))] if ids is None else list(ids)
        vectors = encode(model, texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return cls.from_vectors(vectors, ids, texts, model_name=model_name, stages=stages, storage=storage)

    def search_with_timings(
        self, queries: np.ndarray, k: int = 10, stages: Sequence[Stage] | None = None, filter: Filter | None = None
    ) -> tuple[list[list[Hit]], list[StageTiming]]:
        """The ``k`` best hits per query row (full-size vectors; normalized here), plus one dict per stage:
        ``dim, codec, keep, candidates, seconds``.

        Ties are broken by insertion order, so results are deterministic. ``filter`` (see
        :mod:`matryoshka.retrieval.filters`) restricts the search to documents whose metadata matches.

        ``candidates`` is how many vectors the stage scored per query; ``seconds`` covers the whole
        batch and leaves out building a cached view on first use (see :meth:`prepare`).
        """
        query = finite_unit_rows(np.atleast_2d(np.asarray(queries)), "float32")
        if query.shape[1] != self.dim:
            raise DimensionError(f"queries have {query.shape[1]} dims but the index holds {self.dim}-dim vectors")
        wanted = check_filter(filter)
        if wanted is not None:
            # the matching rows are scanned exactly: a graph over a one-off subset would cost more than it saves
            scanned = [as_float_scan(s) for s in (self._stages if stages is None else stages)]
            return self._matching(wanted).search_with_timings(queries, k=k, stages=scanned)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        snap, plan = self._snapshot(self._stages if stages is None else stages, k)
        return run_funnel(snap, query, plan)

    def prepare(self, stages: Sequence[Stage] | None = None) -> None:
        """Build the cached views that ``stages`` scan, so the first search is not slowed by it."""
        self._snapshot(self._stages if stages is None else stages, 1)

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Append vectors under new ids; cached views are extended, nothing is rebuilt.

        The stored vectors live in a buffer reserved for millions of rows (doubling beyond that), so
        ``n`` vectors added in any number of calls cost ``O(n)`` copies in all.

        Raises:
            InputError: an id is already in the index or repeats, or shapes do not match.
        """
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InputError(f"expected vectors of shape (count, {self.dim}), got {array.shape}")
        self._append(finite_unit_rows(array, self.storage), *records.check_documents(ids, texts, metadata, len(array)))

    def _append(
        self,
        rows: np.ndarray,
        new_ids: list[str],
        new_texts: list[str | None] | None,
        new_meta: list[dict[str, Any] | None] | None,
    ) -> None:
        """Append validated unit rows (dtype ``storage``) under new ids."""
        with self._lock:
            taken = [doc_id for doc_id in new_ids if doc_id in self._rows]
            if taken:
                more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
                raise InputError(f"id {taken[0]!r}{more} is already in the index; delete it first to replace it")
            # Lists grow in place: a search in flight holds the old vectors array and reads only rows below
            # its length, so it never sees the appended entries.
            start = len(self._ids)
            self._texts = records.grown(self._texts, new_texts, start, len(rows))
            self._metadata = records.grown(self._metadata, new_meta, start, len(rows))
            views = self._cache.extended(rows)
            self._checkpoints.stream(self.path, self._vectors, rows, start)
            self._vectors, self._buffer = appended(self._vectors, self._buffer, rows, self.storage)
            self._ids.extend(new_ids)
            self._rows.update({doc_id: start + i for i, doc_id in enumerate(new_ids)})
            self._cache.views = views
        self._written(len(rows))

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id (a replaced document moves to the end of the insertion order).

        Raises:
            InputError: shapes, ids, texts or metadata do not match, an id repeats, or a vector is zero or not finite.
        """
        ids, rows, texts, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        if not ids:
            return
        with self._lock:
            self._delete(ids, save=False)
            self._append(rows.astype(self.storage, copy=False), ids, texts, meta)

    def replace_all(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Make these documents the whole index in one step (see :meth:`VectorIndex.replace_all`).

        The new contents are checked and built aside, then swapped in under the lock, so a search
        sees the old documents or the new ones and a refused batch changes nothing. A directory is
        written at the next checkpoint, :meth:`flush` or :meth:`close` by an atomic save of the
        complete new index; a crash before that leaves the old directory as it was.

        Raises:
            InputError: as :meth:`upsert`; nothing changes then.
        """
        ids, rows, texts_out, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        stored = np.ascontiguousarray(rows.astype(self.storage, copy=False))
        kept_texts = None if all(text is None for text in texts_out) else texts_out
        kept_meta = None if all(m is None for m in meta) else meta
        with self._lock:
            self._vectors, self._buffer = stored, None
            self._ids, self._texts, self._metadata, self._cache.views = ids, kept_texts, kept_meta, {}
            self._rows = {doc_id: row for row, doc_id in enumerate(ids)}
            self._checkpoints.rows_removed()
        self._written(max(len(ids), 1))

    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored."""
        return {str(i) for i in ids if str(i) in self._rows}

    def clear(self) -> None:
        """Remove every document; saved at the next checkpoint or :meth:`flush` (the old directory stays until then)."""
        with self._lock:
            self._vectors = np.zeros((0, self.dim), dtype=self.storage)
            self._buffer = None
            self._ids, self._texts, self._metadata, self._rows, self._cache.views = [], None, None, {}, {}
            self._checkpoints.rows_removed()
        self._written(1)

    def flush(self, force: bool = False) -> None:
        """Save unsaved writes to :attr:`path` now, atomically (``force``: even when nothing changed)."""
        if self.path is None or not (self._checkpoints.pending or force):
            return
        started = time.monotonic()
        self.save(self.path)
        self._checkpoints.flushed(started)

    def close(self) -> None:
        """Save unsaved writes and release the vectors file (an in-memory index has nothing to release)."""
        self.flush()
        with self._lock:
            self._checkpoints.drop_log()

    def details(self) -> dict[str, object]:
        """The storage dtype."""
        return {"storage": self.storage}

    def scan_codecs(self, dim: int) -> tuple[str, ...]:
        """Every scan codec at any prefix; ``binary`` needs a multiple of 8 values."""
        if not 0 < dim <= self.dim:
            return ()
        return ("float32", "float16", "int8", "binary") if dim % 8 == 0 else ("float32", "float16", "int8")

    def _written(self, count: int) -> None:
        """Count a write and save when a checkpoint is due."""
        if self.path is not None and self._checkpoints.due(count, self.checkpoint_vectors, self.checkpoint_seconds):
            self.flush()

    def delete(self, ids: Iterable[str] | str) -> int:
        """Remove the given ids; return how many were found (unknown ids are ignored)."""
        return self._delete([ids] if isinstance(ids, str) else [str(i) for i in ids], save=True)

    def _delete(self, wanted: list[str], save: bool) -> int:
        with self._lock:
            rows = sorted({self._rows[doc_id] for doc_id in wanted if doc_id in self._rows})
            if not rows:
                return 0
            keep = np.ones(len(self._ids), dtype=bool)
            keep[rows] = False
            self._vectors = np.ascontiguousarray(self._vectors[keep])
            self._ids = [doc_id for doc_id, flag in zip(self._ids, keep) if flag]
            self._texts, self._metadata = records.kept(self._texts, keep), records.kept(self._metadata, keep)
            self._rows = {doc_id: row for row, doc_id in enumerate(self._ids)}
            self._cache.views = {}
            self._buffer = None
            self._checkpoints.rows_removed()
        if save:
            self._written(len(rows))
        return len(rows)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index directory atomically (see :mod:`matryoshka.indexes.faiss.store`).

        Saving to :attr:`path` after appends only links the vectors file the log has been streaming
        into (its new rows are mostly on disk already) and writes the small files; anything else
        writes the vectors file in full.
        """
        target = Path(path).expanduser().absolute()
        self._checkpoints.save(target, self.path, self._contents)

    def _contents(self) -> dict[str, Any]:
        """What a save writes (see :func:`~matryoshka.indexes.faiss.store.write_index`); called with the lock held."""
        count = len(self._vectors)  # lists grow in place: copy what belongs to these vectors
        return {
            "vectors": self._vectors, "ids": self._ids[:count],
            "texts": None if self._texts is None else self._texts[:count],
            "metadata": None if self._metadata is None else self._metadata[:count],
            "model_name": self.model_name, "storage": self.storage, "stages": self._stages,
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = False, verify: bool = True) -> FunnelIndex:
        """Read an index directory; ``mmap`` maps the vectors instead of reading them into memory.

        Raises:
            IndexCorruptError: a file is missing, truncated, edited or does not match the manifest.
        """
        stored = read_index(path, mmap=mmap, verify=verify)
        index = cls(
            stored.vectors, stored.ids, stored.texts, stored.model_name, stored.stages, stored.storage,  # type: ignore[arg-type]
            stored.metadata,
        )
        if VECTORS in stored.manifest["files"]:
            index._checkpoints.saved = (Path(path).expanduser().absolute(), len(index), stored.manifest["files"][VECTORS])
        return index

    def memory_bytes(self) -> int:
        """Bytes held by the stored vectors and every cached view."""
        return int(self._vectors.nbytes) + self._cache.nbytes(len(self))

    def view_bytes(self, stages: Sequence[Stage] | None = None) -> int:
        """Bytes of the cached views ``stages`` search through (``None``: every cached view): the size of a
        funnel's search structure beside the stored vectors. Views not built yet count as zero."""
        with self._lock:
            count = len(self._ids)
            wanted = None if stages is None else self._cache.plan(stages, 1, self.dim, count, self.view_cache_bytes)[1]
            return self._cache.nbytes(count, wanted)

    def metadata_keys(self) -> set[str]:
        """Every metadata key stored with at least one document (what a filter can match on)."""
        with self._lock:
            return {key for meta in self._metadata or [] if meta for key in meta}

    def metadata(self, doc_id: str) -> dict[str, Any] | None:
        """The metadata stored with ``doc_id`` (``None`` when it has none).

        Raises:
            KeyError: ``doc_id`` is not in the index.
        """
        with self._lock:
            row = self._rows[doc_id]
            return None if self._metadata is None else self._metadata[row]

    def _matching(self, wanted: dict[str, list[Any]]) -> FunnelIndex:
        """A temporary index over the rows whose metadata passes ``wanted`` (a filtered search scans only them)."""
        with self._lock:
            meta = self._metadata or [None] * len(self._ids)
            rows = [row for row, m in enumerate(meta) if matches(m, wanted)]
            texts = None if self._texts is None else [self._texts[r] for r in rows]
            subset = FunnelIndex(
                self._vectors[rows], [self._ids[r] for r in rows], texts, self.model_name, self._stages,
                self.storage, [meta[r] for r in rows],
            )
            subset.view_cache_bytes = 0  # searched once: a column copy of its full vectors would not pay
            return subset

    def _snapshot(self, stages: Sequence[Stage], k: int) -> tuple[Snapshot, list[Stage]]:
        """A consistent view of the data and the search plan for it, building missing views."""
        with self._lock:
            plan, views = self._cache.take(stages, k, self._vectors, self.view_cache_bytes)
            return Snapshot(self._vectors, self._ids, self._texts, views), plan
