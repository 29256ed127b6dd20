"""A funnel index over Matryoshka embeddings: scan a cheap prefix, re-rank the shortlist at full size.

The index stores each full vector once (unit length, float32 or float16). Every other view is
derived from it: a ``d``-dim prefix re-normalized to unit length, its sign bits, or int8 codes.
Derived views that a first stage scans are built on first use and cached in memory; later stages
compute their view from the stored vectors of the few candidates they re-score, or read a cached
one too (int8 codes; the neighbour graph of a ``graph`` stage).

An index saved to a directory (:meth:`open` with a path, or ``faiss://DIR`` through
:func:`matryoshka.indexes.open_index`) keeps its writes in memory and saves them atomically at
checkpoints (every ``checkpoint_vectors`` written vectors, or ``checkpoint_seconds``, whichever comes
first) and on :meth:`flush`/:meth:`close`. Appends go into a buffer whose address space is reserved
up front (:func:`_reserve`), so a bulk load of ``n`` vectors writes each row once, ``O(n)``; they are
streamed to the directory's ``vectors.bin`` as they come
(:class:`~matryoshka.indexes.faiss.store.VectorLog`), so a save after appends writes only the small
files; a time checkpoint waits at least four times as long as the last save took, which keeps saving
to a bounded share of a load.

Example:
    >>> index = FunnelIndex.build(model, texts, stages=parse_stages("64:float32:400,full:float32:10"))
    >>> hits = index.search(encode(model, ["a question"]), k=5)
    >>> hits[0][0].id, hits[0][0].score
    ('17', 0.61)
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import faiss
import numpy as np

from matryoshka.data.documents import Metadata, check_metadata
from matryoshka.embeddings.vectors import encode
from matryoshka.indexes.faiss.approximate import ApproxView
from matryoshka.indexes.faiss.exact import ColumnBlocks, serial_when_small, top_k_inner_product
from matryoshka.indexes.faiss.neighbours import NeighbourGraph
from matryoshka.indexes.faiss.prefixes import prefix_blocks, prefixes, unit_rows
from matryoshka.retrieval.filters import Filter, check_filter, matches
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import APPROXIMATE, PRESETS, Stage, as_float_scan, resolve_stages, validate_stages
from matryoshka.retrieval.types import Hit, StageTiming, stage_timing

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka.indexes.faiss.store import VectorLog

Storage = Literal["float32", "float16"]
STORAGES: tuple[str, ...] = get_args(Storage)

_RERANK_BYTES = 32 << 20  # gathered candidate vectors per re-rank chunk
_PLANS = 64  # resolved search plans remembered per index
_INT8_TRAIN_ROWS = 262_144  # rows (evenly spaced) that set the int8 ranges
#: Default budget for cached first-stage views (prefixes, sign bits, int8 codes). Every distinct
#: ``(codec, dim)`` a first stage scans gets a view of ``count x dim`` values; a server whose clients ask
#: for many dimensions would otherwise cache one per dimension and grow without end. Exact full-size
#: scans use a dimension-major copy of the vectors when it takes at most half of it (raise
#: :attr:`FunnelIndex.view_cache_bytes` to give a large index that copy: batched exact search ran 1.6x at 1M x 384).
VIEW_CACHE_BYTES = 256 << 20
#: :func:`_int8_decoding` of each int8 view in use (dropped with the view).
_INT8_DECODINGS: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


#: Default of :attr:`FunnelIndex.checkpoint_seconds` for an index saved to a directory.
CHECKPOINT_SECONDS = 60.0
#: A time checkpoint waits at least this many times as long as the last save took.
_SAVE_SHARE = 4.0
_GROWTH = 2.0  # capacity factor when the vector buffer grows
#: Address space the vector buffer reserves at least (pages use memory only once rows are written).
_RESERVE_BYTES = 8 << 30
_MAP_NORESERVE = 0x4000  # Linux's MAP_NORESERVE, which the mmap module of Python 3.11 does not name


class _Snapshot(NamedTuple):
    vectors: np.ndarray
    ids: list[str]
    texts: list[str | None] | None
    views: dict[Any, Any]


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
        self._views: dict[tuple[str, int], Any] = {}  # insertion order = least recently used first
        self._cache_checked: tuple[int, int] | None = None  # (count, budget) at which the views last fit
        self._plans: dict[Any, tuple[list[Stage], set[tuple[str, int]]]] = {}  # see _plan
        self._lock = threading.RLock()
        self.view_cache_bytes = VIEW_CACHE_BYTES
        self.model_name = model_name
        self.dim = int(vectors.shape[1])
        self.storage: Storage = storage
        self.stages = list(PRESETS["exact"]) if stages is None else list(stages)
        self.path: Path | None = None
        self.checkpoint_vectors: int | None = None
        self.checkpoint_seconds: float | None = CHECKPOINT_SECONDS
        self._pending = 0  # vectors written (or deletes) since the last save
        self._saved_at = time.monotonic()
        self._save_took = 0.0
        # (directory, rows, vectors.bin manifest entry): the first ``rows`` stored vectors are committed there
        self._saved: tuple[Path, int, dict[str, Any]] | None = None
        self._log: VectorLog | None = None  # streams appended rows into that vectors.bin (see store.VectorLog)
        self._log_rows = 0  # rows the log holds (committed + streamed)
        self._log_closer: Callable[[], Any] = lambda: None
        self._log_failed = False  # the log could not be opened; retried after the next save
        self._epoch = 0  # bumped whenever stored rows are removed or reordered
        self._save_lock = threading.Lock()  # one save at a time

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
        from matryoshka.retrieval.stages import format_stages

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
            ValueError: shapes, ids, texts or metadata do not match, an id repeats, or vectors hold NaN/inf.
        """
        _check_storage(storage)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] < 1:
            raise ValueError(f"vectors must be a 2-d array (count, dim), got shape {array.shape}")
        ids = _check_ids(ids, len(array))
        texts = _check_texts(texts, len(array))
        meta = _check_metadata_list(metadata, len(array))
        return cls(unit_rows(array, storage), ids, texts, model_name, stages, storage, meta)

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
        at checkpoints (see the module docstring), on :meth:`flush` and on :meth:`close`.

        Raises:
            FileNotFoundError: nothing at ``location`` and ``create`` is false.
            ValueError: ``dim`` or ``model_name`` differ from the stored index, or ``dim`` is missing
                for a new one.
            IndexCorruptError: the directory fails its checks, or (``create`` false) it is there
                without its ``manifest.json``.
        """
        from matryoshka.indexes.faiss.store import MANIFEST, read_manifest

        if checkpoint_vectors is not None and checkpoint_vectors < 1:
            raise ValueError(f"checkpoint_vectors must be at least 1, got {checkpoint_vectors}")
        path = Path(str(location).removeprefix("faiss://")).expanduser().absolute()
        if (path / MANIFEST).exists():
            manifest = read_manifest(path)
            if dim is not None and dim != manifest["dim"]:
                raise ValueError(f"{path} holds {manifest['dim']}-dim vectors, not {dim}")
            if model_name and manifest["model_name"] and model_name != manifest["model_name"]:
                raise ValueError(f"{path} was built with model {manifest['model_name']!r}, not {model_name!r}")
            index = cls.load(path, mmap=mmap)
            fresh = (model_name and not index.model_name) or (stages is not None and list(stages) != index.stages)
            if not create and fresh:
                raise ValueError(f"{path}: recording a model or stages needs create=True")
            index.model_name = index.model_name or model_name
            if stages is not None:
                index.stages = stages
        elif not create:
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                read_manifest(path)  # raises IndexCorruptError saying what is there instead (files, no manifest)
            raise FileNotFoundError(f"no index at {path}")
        else:
            if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"creating an index at {path} needs its vector dimension (dim), got {dim!r}")
            index = cls.from_vectors(np.zeros((0, dim), np.float32), [], model_name=model_name, stages=stages,
                                     storage=storage)
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
        query = unit_rows(np.atleast_2d(np.asarray(queries)), "float32")
        if query.shape[1] != self.dim:
            raise ValueError(f"queries have {query.shape[1]} dims but the index holds {self.dim}-dim vectors")
        wanted = check_filter(filter)
        if wanted is not None:
            # the matching rows are scanned exactly: a graph over a one-off subset would cost more than it saves
            scanned = [as_float_scan(s) for s in (self._stages if stages is None else stages)]
            return self._matching(wanted).search_with_timings(queries, k=k, stages=scanned)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        snap, plan = self._snapshot(self._stages if stages is None else stages, k)
        count = len(snap.ids)
        if count == 0 or len(query) == 0:
            timings = [_timing(s, 0, 0.0) for s in plan]
            return [[] for _ in range(len(query))], timings
        timings = []
        start = time.perf_counter()
        scores, rows = self._scan(snap, query, plan[0], ordered=len(plan) == 1)
        timings.append(_timing(plan[0], count, time.perf_counter() - start))
        for position, stage in enumerate(plan[1:], start=2):
            candidates = rows.shape[1]
            start = time.perf_counter()
            scores, rows = self._rerank(snap, query, rows, stage, ordered=position == len(plan))
            timings.append(_timing(stage, candidates, time.perf_counter() - start))
        texts = snap.texts
        ids = snap.ids
        hits = [
            [Hit(ids[r], s, texts[r] if texts is not None else None) for s, r in zip(srow, rrow)]
            for srow, rrow in zip(scores.tolist(), rows.tolist())
        ]
        return hits, timings

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
            ValueError: an id is already in the index or repeats, or shapes do not match.
        """
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (count, {self.dim}), got {array.shape}")
        new_ids = _check_ids(ids, len(array))
        new_texts = _check_texts(texts, len(array))
        new_meta = _check_metadata_list(metadata, len(array))
        self._append(unit_rows(array, self.storage), new_ids, new_texts, new_meta)

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
                raise ValueError(f"id {taken[0]!r}{more} is already in the index; delete it first to replace it")
            # Lists grow in place: a search in flight holds the old vectors array and reads only rows below
            # its length, so it never sees the appended entries.
            start = len(self._ids)
            # All-None lists (what ``upsert`` passes when none were given) store nothing, so an index that
            # never held texts or metadata writes no texts.json or metadata.json.
            if new_texts is not None and all(text is None for text in new_texts):
                new_texts = None
            if new_meta is not None and all(meta is None for meta in new_meta):
                new_meta = None
            if self._texts is None and new_texts is not None:
                self._texts = [None] * start
            if self._texts is not None:
                self._texts.extend(new_texts if new_texts is not None else [None] * len(rows))
            if self._metadata is None and new_meta is not None:
                self._metadata = [None] * start
            if self._metadata is not None:
                self._metadata.extend(new_meta if new_meta is not None else [None] * len(rows))
            extended = {key: _extend_view(key, view, rows, self.dim) for key, view in self._views.items()}
            views = {key: view for key, view in extended.items() if view is not None}  # None: rebuilt on use
            self._stream(rows, start)
            self._vectors = self._appended(rows)
            self._ids.extend(new_ids)
            self._rows.update({doc_id: start + i for i, doc_id in enumerate(new_ids)})
            self._views = views
        self._written(len(rows))

    def _stream(self, rows: np.ndarray, start: int) -> None:
        """Hand appended rows (at row ``start``) to the log that writes them to disk ahead of the next save."""
        from matryoshka.indexes.faiss.store import StaleLogError, VectorLog

        if self._log is None:
            if self.path is None or self._saved is None or self._log_failed or self._saved[0] != self.path:
                return
            _, saved_rows, entry = self._saved
            try:
                log = VectorLog(self.path, entry)
            except (OSError, StaleLogError):
                self._log_failed = True  # another writer holds it, or no flock: saves write the file in full
                return
            self._log_closer = weakref.finalize(self, log.close, True)  # an index dropped unclosed frees its file
            self._log, self._log_rows = log, saved_rows
            if saved_rows < start:
                log.append(self._vectors[saved_rows:start])
                self._log_rows = start
        if self._log_rows != start:  # pragma: no cover - every append goes through here
            self._drop_log()
            return
        self._log.append(rows)
        self._log_rows = start + len(rows)

    def _drop_log(self) -> None:
        if self._log is not None:
            self._log_closer()  # log.close(discard=True), once
            self._log = None

    def _appended(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors with ``rows`` after them, in the reserved buffer (copied only when it outgrows it)."""
        count, need = len(self._vectors), len(self._vectors) + len(rows)
        buffer = self._buffer
        if buffer is None or len(buffer) < need:  # invariant: _vectors is buffer[:count] whenever buffer is set
            capacity = max(need, int(count * _GROWTH) + 1024)
            buffer = _reserve(capacity, self.dim, self.storage)
            buffer[:count] = self._vectors
            self._buffer = buffer
        buffer[count:need] = rows
        return buffer[:need]

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> None:
        """Insert or replace documents by id (a replaced document moves to the end of the insertion order).

        Raises:
            ValueError: shapes, ids, texts or metadata do not match, an id repeats, or a vector is zero or not finite.
        """
        from matryoshka.indexes.base import check_batch

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
            ValueError: as :meth:`upsert`; nothing changes then.
        """
        from matryoshka.indexes.base import check_batch

        ids, rows, texts_out, meta = check_batch(ids, vectors, self.dim, texts, metadata)
        stored = np.ascontiguousarray(rows.astype(self.storage, copy=False))
        kept_texts = None if all(text is None for text in texts_out) else texts_out
        kept_meta = None if all(m is None for m in meta) else meta
        with self._lock:
            self._vectors, self._buffer = stored, None
            self._ids, self._texts, self._metadata, self._views = ids, kept_texts, kept_meta, {}
            self._rows = {doc_id: row for row, doc_id in enumerate(ids)}
            self._rows_removed()
        self._written(max(len(ids), 1))

    def existing(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that is stored."""
        return {str(i) for i in ids if str(i) in self._rows}

    def clear(self) -> None:
        """Remove every document; saved at the next checkpoint or :meth:`flush` (the old directory stays until then)."""
        with self._lock:
            self._vectors = np.zeros((0, self.dim), dtype=self.storage)
            self._buffer = None
            self._ids, self._texts, self._metadata, self._rows, self._views = [], None, None, {}, {}
            self._rows_removed()
        self._written(1)

    def flush(self, force: bool = False) -> None:
        """Save unsaved writes to :attr:`path` now, atomically (``force``: even when nothing changed)."""
        if self.path is None or not (self._pending or force):
            return
        started = time.monotonic()
        self.save(self.path)
        self._save_took = time.monotonic() - started
        self._saved_at, self._pending = time.monotonic(), 0

    def close(self) -> None:
        """Save unsaved writes and release the vectors file (an in-memory index has nothing to release)."""
        self.flush()
        with self._lock:
            self._drop_log()

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
        if self.path is None:
            return
        self._pending += count
        due = self.checkpoint_vectors is not None and self._pending >= self.checkpoint_vectors
        if not due and self.checkpoint_seconds is not None:
            waited = time.monotonic() - self._saved_at
            due = waited >= max(self.checkpoint_seconds, _SAVE_SHARE * self._save_took)
        if due:
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
            self._ids = [doc_id for doc_id, kept in zip(self._ids, keep) if kept]
            if self._texts is not None:
                self._texts = [text for text, kept in zip(self._texts, keep) if kept]
            if self._metadata is not None:
                self._metadata = [meta for meta, kept in zip(self._metadata, keep) if kept]
            self._rows = {doc_id: row for row, doc_id in enumerate(self._ids)}
            self._views = {}
            self._buffer = None
            self._rows_removed()
        if save:
            self._written(len(rows))
        return len(rows)

    def _rows_removed(self) -> None:
        """Stored rows were removed: the vectors file on disk is no longer a prefix of them."""
        self._epoch += 1
        self._saved = None
        self._drop_log()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index directory atomically (see :mod:`matryoshka.indexes.faiss.store`).

        Saving to :attr:`path` after appends only links the vectors file the log has been streaming
        into (its new rows are mostly on disk already) and writes the small files; anything else
        writes the vectors file in full.
        """
        from matryoshka.indexes.faiss.store import VECTORS, StaleLogError, write_index

        target = Path(path).expanduser().absolute()
        with self._save_lock:
            with self._lock:
                count = len(self._vectors)  # lists grow in place: copy what belongs to these vectors
                vectors, ids = self._vectors, self._ids[:count]
                texts = None if self._texts is None else self._texts[:count]
                metadata = None if self._metadata is None else self._metadata[:count]
                epoch = self._epoch
                log = self._log if target == self.path and self._log_rows == count else None
                mark = log.mark() if log is not None else None
                if log is None and target == self.path:
                    self._drop_log()
                    self._saved = None  # no log opens on the file this save replaces
            kwargs: dict[str, Any] = dict(model_name=self.model_name, storage=self.storage, stages=self._stages,
                                          metadata=metadata)
            streamable = True
            try:
                manifest = write_index(target, vectors, ids, texts, log=log, mark=mark, **kwargs)
            except (OSError, StaleLogError) as exc:
                if log is None:
                    raise
                # a write or the hard link failed: stop streaming here; a replaced index may be streamed again
                streamable = isinstance(exc, StaleLogError)
                with self._lock:  # the streamed file cannot be used (replaced by another writer, a write failed)
                    if self._log is log:
                        self._drop_log()
                    self._saved = None
                manifest = write_index(target, vectors, ids, texts, **kwargs)
            if target == self.path:
                with self._lock:
                    self._log_failed = not streamable
                    if epoch == self._epoch:
                        self._saved = (target, count, manifest["files"][VECTORS])

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = False, verify: bool = True) -> FunnelIndex:
        """Read an index directory; ``mmap`` maps the vectors instead of reading them into memory.

        Raises:
            IndexCorruptError: a file is missing, truncated, edited or does not match the manifest.
        """
        from matryoshka.indexes.faiss.store import VECTORS, read_index

        stored = read_index(path, mmap=mmap, verify=verify)
        index = cls(
            stored.vectors, stored.ids, stored.texts, stored.model_name, stored.stages, stored.storage,  # type: ignore[arg-type]
            stored.metadata,
        )
        if VECTORS in stored.manifest["files"]:
            index._saved = (Path(path).expanduser().absolute(), len(index), stored.manifest["files"][VECTORS])
        return index

    def memory_bytes(self) -> int:
        """Bytes held by the stored vectors and every cached view."""
        total = int(self._vectors.nbytes)
        for (codec, dim), view in list(self._views.items()):
            total += _view_bytes(codec, dim, view, len(self))
        return total

    def view_bytes(self, stages: Sequence[Stage] | None = None) -> int:
        """Bytes of the cached views ``stages`` search through (``None``: every cached view): the size of a
        funnel's search structure beside the stored vectors. Views not built yet count as zero."""
        with self._lock:
            count = len(self._ids)
            views = dict(self._views)
            if stages is not None:
                plan = resolve_stages(stages, self.dim, 1, max(count, 1))
                wanted = _views_for(plan, self.dim, count, self.view_cache_bytes)
                views = {key: view for key, view in views.items() if key in wanted}
        return sum(_view_bytes(codec, dim, view, count) for (codec, dim), view in views.items())

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

    # -- internals -------------------------------------------------------------------------------

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

    def _snapshot(self, stages: Sequence[Stage], k: int) -> tuple[_Snapshot, list[Stage]]:
        """A consistent view of the data and the search plan for it, building missing views."""
        with self._lock:
            count = len(self._ids)
            plan, needed = self._plan(stages, k, count)
            built = False
            for key in needed:
                if key in self._views:
                    view = self._views.pop(key)
                else:
                    view, built = _build_view(key, self._vectors), True
                self._views[key] = view  # most recently used last
            # views change only when one is built here or rows are added or removed, which changes the count
            if built or self._cache_checked != (count, self.view_cache_bytes):
                self._evict_views(keep=needed)
            views = {key: self._views[key] for key in needed}  # searches in flight keep theirs if evicted later
            return _Snapshot(self._vectors, self._ids, self._texts, views), plan

    def _plan(self, stages: Sequence[Stage], k: int, count: int) -> tuple[list[Stage], set[tuple[str, int]]]:
        """The resolved plan of a search and the views it reads, remembered for repeated searches
        (resolving and checking a funnel took about 7 us of every search)."""
        key: Any = (tuple(stages), k, count, self.view_cache_bytes)
        try:
            known = self._plans.get(key)
        except TypeError:  # an unhashable stage: resolve_stages says what is wrong with it
            known, key = None, None
        if known is None:
            plan = resolve_stages(stages, self.dim, k, max(count, 1))
            known = (plan, _views_for(plan, self.dim, count, self.view_cache_bytes))
            if key is not None:
                if len(self._plans) >= _PLANS:
                    self._plans.clear()
                self._plans[key] = known
        return list(known[0]), known[1]

    def _evict_views(self, keep: set[Any]) -> None:
        """Drop least recently used views until the cache fits ``view_cache_bytes`` (views in ``keep`` stay)."""
        count = len(self._ids)
        total = sum(_view_bytes(codec, dim, view, count) for (codec, dim), view in self._views.items())
        for key in list(self._views):
            if total <= self.view_cache_bytes:
                break
            if key in keep:
                continue
            total -= _view_bytes(key[0], key[1], self._views.pop(key), count)
        # within budget: nothing to check again until a view is built or the count or budget changes
        self._cache_checked = (count, self.view_cache_bytes) if total <= self.view_cache_bytes else None

    def _scan(self, snap: _Snapshot, query: np.ndarray, stage: Stage, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top ``stage.keep`` of every vector; sorted (score, then insertion order) only when ``ordered``."""
        dim, keep = stage.dim, stage.keep
        prefix = _unit_prefix(query, dim)
        key = (stage.codec, dim)
        if stage.codec == "float32":
            # a prefix always has its view; the full size has one when it fits the view budget
            scores, rows = top_k_inner_product(prefix, snap.views.get(key, snap.vectors), keep)
        elif stage.codec in APPROXIMATE:
            scores, rows = snap.views[key].search(prefix, keep, stage.probe)
            lost = np.flatnonzero(rows[:, -1] < 0)  # the index found fewer than keep: scan those queries
            if len(lost):
                prefixes = _build_view(("float32", dim), snap.vectors)
                scores[lost], rows[lost] = top_k_inner_product(prefix[lost], prefixes, keep)
        elif stage.codec == "binary":
            with serial_when_small(len(query) * len(snap.ids)):
                distances, rows = snap.views[key].search(np.packbits(prefix > 0, axis=1), keep)
            scores = np.cos(np.pi * distances / dim).astype(np.float32)
        else:
            with serial_when_small(len(query) * len(snap.ids)):
                scores, rows = snap.views[key].search(prefix, keep)
        return _sort_hits(scores, rows) if ordered else (scores, rows)

    def _rerank(
        self, snap: _Snapshot, query: np.ndarray, rows: np.ndarray, stage: Stage, ordered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``stage.keep`` of each query's candidate ``rows`` by ``stage``'s view; sorted only when
        ``ordered`` (a later stage re-scores them anyway)."""
        if stage.codec == "graph":
            return self._expand(snap, query, rows, stage, ordered)
        dim, keep = stage.dim, min(stage.keep, rows.shape[1])
        prefix = _unit_prefix(query, dim)
        chunk = max(1, _RERANK_BYTES // max(1, rows.shape[1] * dim * 4))
        out_scores = np.empty((len(rows), keep), dtype=np.float32)
        out_rows = np.empty((len(rows), keep), dtype=np.int64)
        for start in range(0, len(rows), chunk):
            cand = rows[start : start + chunk]
            queries = prefix[start : start + len(cand)]
            if stage.codec == "int8":  # scored on the stored codes: a quarter of the float prefix's reads
                scores = _int8_scores(snap.views[("int8", dim)], cand, queries)
            else:
                scores = _gathered_scores(snap.vectors, cand, queries, stage.codec)
            out_scores[start : start + len(cand)], out_rows[start : start + len(cand)] = _top(scores, cand, keep, ordered)
        return out_scores, out_rows

    def _expand(
        self, snap: _Snapshot, query: np.ndarray, rows: np.ndarray, stage: Stage, ordered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``stage.keep`` of each query's candidate ``rows`` and their graph neighbours, by the
        full vectors (a ``graph`` stage)."""
        graph: NeighbourGraph = snap.views[("graph", self.dim)]
        keep = min(stage.keep, rows.shape[1])
        out_scores = np.empty((len(rows), keep), dtype=np.float32)
        out_rows = np.empty((len(rows), keep), dtype=np.int64)
        for i, (vector, candidates) in enumerate(zip(query, rows)):
            wide = np.unique(np.concatenate([candidates, graph.neighbours(candidates).ravel()]))
            if len(wide) and wide[0] < 0:  # -1 pads rows with fewer neighbours (sorted first)
                wide = wide[1:]
            scores = _gather_prefix(snap.vectors, wide, self.dim) @ vector
            top_scores, top_rows = _top(scores[None], wide[None], keep, ordered)
            out_scores[i], out_rows[i] = top_scores[0], top_rows[0]
        return out_scores, out_rows


def _gathered_scores(vectors: np.ndarray, rows: np.ndarray, prefix: np.ndarray, codec: str) -> np.ndarray:
    """Scores of ``prefix`` (one row per query) against the stored vectors' prefixes of ``rows`` (its
    candidates) under ``codec`` (``float32``, ``float16`` or ``binary``)."""
    (n_q, n_c), dim = rows.shape, prefix.shape[1]
    gathered = _gather_prefix(vectors, rows.ravel(), dim)
    if codec == "float16":
        gathered = gathered.astype(np.float16).astype(np.float32)
    if codec == "binary":
        codes = np.packbits(gathered > 0, axis=1).reshape(n_q, n_c, -1)
        q_codes = np.packbits(prefix > 0, axis=1)
        distances = _POPCOUNT[codes ^ q_codes[:, None, :]].sum(axis=2)
        return np.cos(np.pi * distances / dim).astype(np.float32)
    if n_q == 1:  # a matrix-vector product; numpy's stacked matmul does not reach BLAS for it
        return (gathered @ prefix[0])[None]
    return np.matmul(gathered.reshape(n_q, n_c, dim), prefix[:, :, None])[..., 0]


def _int8_scores(view: Any, rows: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Inner products of ``prefix`` (one row per query) with the decoded int8 codes of ``rows`` (its candidates).

    FAISS's 8-bit scalar quantizer decodes code ``c`` of dimension ``i`` as ``vmin[i] + (c + 0.5) / 255 *
    vdiff[i]``, so a score is one product with the gathered codes plus a per-query constant; the codes
    are read in place, not decoded into a float copy (``sa_decode`` of every candidate cost more than
    the scan it saves).
    """
    codes, scale, shift = _int8_decoding(view)
    weights = prefix * scale
    offsets = prefix @ shift
    scores = np.empty(rows.shape, dtype=np.float32)
    for i, (candidates, weight) in enumerate(zip(rows, weights)):  # one matrix-vector product per query
        np.matmul(np.take(codes, candidates, axis=0).astype(np.float32), weight, out=scores[i])
    return scores + offsets[:, None]


def _int8_decoding(view: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An int8 view's codes (a read-only array over FAISS's own buffer) and its decoding ``scale`` and
    ``shift`` per dimension (value = shift + code · scale), read from FAISS once per view.

    Safe to keep because a view takes no rows once built (appends go to a copy, see
    :func:`_extend_view`), so the buffer never moves; reading them on every re-rank cost 0.03-0.05 ms
    a query. FAISS objects refuse new attributes, so they are kept in a weak map instead.
    """
    cached = _INT8_DECODINGS.get(view)
    if cached is None:
        dim = view.d
        trained = faiss.vector_to_array(view.sq.trained)
        vmin, vdiff = trained[:dim], trained[dim : 2 * dim]
        codes = faiss.rev_swig_ptr(view.codes.data(), view.ntotal * view.code_size).reshape(view.ntotal, view.code_size)
        codes.flags.writeable = False
        cached = (codes, (vdiff / 255.0).astype(np.float32), (vmin + 0.5 * vdiff / 255.0).astype(np.float32))
        _INT8_DECODINGS[view] = cached
    return cached


def _timing(stage: Stage, candidates: int, seconds: float) -> StageTiming:
    return stage_timing(stage, candidates, seconds)


def _reserve(rows: int, dim: int, dtype: str) -> np.ndarray:
    """A writable ``(capacity, dim)`` array, ``capacity >= rows``, for the growable vector buffer.

    It lies on an anonymous mapping of at least :data:`_RESERVE_BYTES` whose pages are faulted in
    only as rows are written, so a load of millions of vectors writes each row once instead of copying
    the buffer at every doubling. ``np.empty`` is not used because numpy advises transparent huge pages
    for large arrays: where free memory is fragmented (a full page cache) each 2 MB fault then compacts
    memory, and filling 1.5 GB that way ran 1.6-2.5 us per 384-d vector against 0.2 at 150 MB, so
    bulk loads slowed per vector as they grew; small pages fault at about 0.6 us per vector at every
    size (``benchmarks/ingest.py``). Where the mapping is refused (strict overcommit), a plain array
    of ``rows`` rows is returned.
    """
    if os.name != "posix":
        return np.empty((rows, dim), dtype=dtype)
    row_bytes = dim * np.dtype(dtype).itemsize
    capacity = max(rows, _RESERVE_BYTES // row_bytes)
    flags = mmap.MAP_PRIVATE | (_MAP_NORESERVE if sys.platform.startswith("linux") else 0)
    try:
        mapping = mmap.mmap(-1, capacity * row_bytes, flags=flags)
    except (OSError, OverflowError, ValueError):
        return np.empty((rows, dim), dtype=dtype)
    return np.frombuffer(mapping, dtype=dtype, count=capacity * dim).reshape(capacity, dim)


def _check_storage(storage: str) -> None:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")


def _check_ids(ids: Sequence[str], count: int) -> list[str]:
    if isinstance(ids, str):
        raise ValueError("ids must be a sequence of strings, not one string")
    ids = list(ids)
    if len(ids) != count:
        raise ValueError(f"got {len(ids)} ids for {count} vectors")
    bad = [doc_id for doc_id in ids if not isinstance(doc_id, str) or not doc_id]
    if bad:
        raise ValueError(f"ids must be non-empty strings, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(doc_id for doc_id in ids if doc_id in seen or seen.add(doc_id))  # type: ignore[func-returns-value]
        raise ValueError(f"id {duplicate!r} appears more than once")
    return ids


def _check_texts(texts: Sequence[str | None] | None, count: int) -> list[str | None] | None:
    if texts is None:
        return None
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    if len(texts) != count:
        raise ValueError(f"got {len(texts)} texts for {count} vectors")
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise ValueError("texts must be strings or None")
    return texts


def _check_metadata_list(metadata: Sequence[Metadata | None] | None, count: int) -> list[dict[str, Any] | None] | None:
    if metadata is None:
        return None
    if isinstance(metadata, (str, bytes)) or len(metadata) != count:
        raise ValueError(f"metadata needs one object (or None) per vector: {count}")
    return [check_metadata(m) for m in metadata]


def _unit_prefix(query: np.ndarray, dim: int) -> np.ndarray:
    """Unit-length ``dim``-prefixes of a search's ``query`` rows, which :func:`unit_rows` has already
    checked and normalized at full size (so the full size is the rows themselves); half the time of
    ``unit_rows`` for one query, which checks every value again."""
    if dim == query.shape[1]:
        return query
    return _scaled_to_unit(query[:, :dim].astype(np.float32))


def _gather_prefix(vectors: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
    """Unit-length ``dim``-prefixes of the stored rows ``rows`` (stored full rows are already unit)."""
    if dim == vectors.shape[1]:
        return np.take(vectors, rows, axis=0).astype(np.float32, copy=False)
    return _scaled_to_unit(vectors[rows, :dim].astype(np.float32, copy=False))  # the fancy index made a copy


def _scaled_to_unit(rows: np.ndarray) -> np.ndarray:
    """``rows`` (a float32 copy of finite values) divided in place by their lengths; zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    rows /= np.where(norms == 0, 1.0, norms)[:, None]
    return rows


def _top(scores: np.ndarray, rows: np.ndarray, keep: int, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best per query by score, ties at the cut-off to the earlier row; sorted (score, then
    row) only when ``ordered``. A partition of the scores' values, which is about twice as fast as an
    indirect ``argpartition``, then the rows above the cut-off value and as many tied ones as fit."""
    count = scores.shape[1]
    if keep < count:
        cutoffs = np.partition(scores, count - keep, axis=1)[:, count - keep]
        top_scores = np.empty((len(scores), keep), dtype=scores.dtype)
        top_rows = np.empty((len(scores), keep), dtype=rows.dtype)
        for i, (row_scores, cutoff) in enumerate(zip(scores, cutoffs)):
            above = np.flatnonzero(row_scores > cutoff)
            tied = np.flatnonzero(row_scores == cutoff)
            if len(above) + len(tied) > keep:
                tied = tied[np.argsort(rows[i][tied], kind="stable")[: keep - len(above)]]
            picked = np.concatenate([above, tied])
            top_scores[i], top_rows[i] = row_scores[picked], rows[i][picked]
        scores, rows = top_scores, top_rows
    return _sort_hits(scores, rows) if ordered else (scores, rows)


def _sort_hits(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score, descending, then by insertion order."""
    order = np.lexsort((rows, -scores), axis=1)
    queries = np.arange(len(scores))[:, None]  # np.take_along_axis took 7 us for ten hits, this 2
    return scores[queries, order], rows[queries, order]


def _views_for(plan: Sequence[Stage], full_dim: int, count: int, budget: int) -> set[tuple[str, int]]:
    """Keys of the views a resolved plan reads: the first stage's scan view, int8 codes for re-ranks
    and the neighbour graph for a ``graph`` stage.

    A float32 scan of the full vectors reads a :class:`ColumnBlocks` copy of them when that takes at
    most half of ``budget`` (it is faster at every batch size, see :mod:`matryoshka.indexes.faiss.exact`;
    the other half leaves room for prefix views, so switching funnels does not rebuild views), else the
    stored vectors themselves.
    """
    first = plan[0]
    scans = {(first.codec, first.dim)}
    if first.codec == "float32" and first.dim == full_dim and 2 * count * full_dim * 4 > budget:
        scans = set()
    return {(s.codec, s.dim) for s in plan[1:] if s.codec in ("int8", "graph")} | scans


def _build_view(key: tuple[str, int], vectors: np.ndarray) -> Any:
    codec, dim = key
    if codec == "float32":
        columns = ColumnBlocks([], dim)
        for block in prefix_blocks(vectors, dim):
            columns = columns.extended(block)
        return columns
    if codec in APPROXIMATE:
        return ApproxView.build(codec, vectors, dim)
    if codec == "graph":
        return NeighbourGraph.build(vectors)
    view: Any
    if codec == "binary":
        view = faiss.IndexBinaryFlat(dim)
    else:
        qtype = faiss.ScalarQuantizer.QT_fp16 if codec == "float16" else faiss.ScalarQuantizer.QT_8bit
        view = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
        if codec == "int8":
            sample = np.linspace(0, max(len(vectors) - 1, 0), min(len(vectors), _INT8_TRAIN_ROWS)).astype(np.int64)
            view.train(unit_rows(vectors[sample, :dim], "float32") if len(sample) else np.zeros((1, dim), "float32"))
    for block in prefix_blocks(vectors, dim):
        view.add(np.packbits(block > 0, axis=1) if codec == "binary" else block)
    return view


def _extend_view(key: tuple[str, int], view: Any, rows: np.ndarray, full_dim: int) -> Any:
    """A copy of ``view`` with ``rows`` appended (searches in flight keep the old one); ``None`` when the
    view should be built again on next use (a graph with too many rows outside it)."""
    codec, dim = key
    if codec == "graph":
        return view.extended(len(rows))
    prefix = prefixes(rows, dim)
    if codec == "float32" or codec in APPROXIMATE:
        return view.extended(prefix)
    extended: Any = faiss.clone_index(view) if codec != "binary" else faiss.clone_binary_index(view)  # type: ignore[attr-defined]
    extended.add(np.packbits(prefix > 0, axis=1) if codec == "binary" else prefix)
    return extended


def _view_bytes(codec: str, dim: int, view: Any, count: int) -> int:
    if codec in ("float32", "graph"):
        return int(view.nbytes)
    if codec in APPROXIMATE:
        return int(view.nbytes())
    return count * {"float16": 2 * dim, "int8": dim, "binary": dim // 8}[codec]
