"""When an index saved to a directory saves, and the vectors file its appends stream into meanwhile.

Writes are kept in memory and saved atomically at checkpoints: every ``checkpoint_vectors`` written
vectors, or ``checkpoint_seconds``, whichever comes first (and on ``flush``/``close``). A time
checkpoint waits at least :data:`_SAVE_SHARE` times as long as the last save took, which keeps saving
to a bounded share of a load. Appended rows are streamed to the directory's ``vectors.bin`` as they
come (:class:`~matryoshka.indexes.faiss.store.VectorLog`), so a save after appends links that file
and writes only the small ones.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from matryoshka.errors import StaleLogError
from matryoshka.indexes.faiss.store import VECTORS, VectorLog, write_index

#: Default of :attr:`FunnelIndex.checkpoint_seconds` for an index saved to a directory.
CHECKPOINT_SECONDS = 60.0
#: A time checkpoint waits at least this many times as long as the last save took.
_SAVE_SHARE = 4.0


class Checkpoints:
    """The save state of one index: writes since its last save, and the log streaming its appended rows.

    It shares the index's ``lock``; :meth:`stream`, :meth:`drop_log` and :meth:`rows_removed` are
    called with it held.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.pending = 0  # vectors written (or deletes) since the last save
        self._saved_at = time.monotonic()
        self._took = 0.0
        # (directory, rows, vectors.bin manifest entry): the first ``rows`` stored vectors are committed there
        self.saved: tuple[Path, int, dict[str, Any]] | None = None
        self.log: VectorLog | None = None  # streams appended rows into that vectors.bin
        self._log_rows = 0  # rows the log holds (committed + streamed)
        self._log_closer: Callable[[], Any] = lambda: None
        self._log_failed = False  # the log could not be opened; retried after the next save
        self._epoch = 0  # bumped whenever stored rows are removed or reordered
        self._save_lock = threading.Lock()  # one save at a time

    def due(self, count: int, vectors: int | None, seconds: float | None) -> bool:
        """Count ``count`` writes; whether a checkpoint of every ``vectors`` writes or ``seconds`` is due."""
        self.pending += count
        due = vectors is not None and self.pending >= vectors
        if not due and seconds is not None:
            waited = time.monotonic() - self._saved_at
            due = waited >= max(seconds, _SAVE_SHARE * self._took)
        return due

    def flushed(self, started: float) -> None:
        """A save that began at ``started`` (``time.monotonic()``) has committed every pending write."""
        self._took = time.monotonic() - started
        self._saved_at, self.pending = time.monotonic(), 0

    def stream(self, path: Path | None, vectors: np.ndarray, rows: np.ndarray, start: int) -> None:
        """Hand ``rows``, appended at row ``start`` after the stored ``vectors``, to the log that writes
        them into ``path``'s vectors file ahead of the next save (opening it when the file is ours)."""
        if self.log is None:
            if path is None or self.saved is None or self._log_failed or self.saved[0] != path:
                return
            _, saved_rows, entry = self.saved
            try:
                log = VectorLog(path, entry)
            except (OSError, StaleLogError):
                self._log_failed = True  # another writer holds it, or no flock: saves write the file in full
                return
            self._log_closer = weakref.finalize(self, log.close, True)  # an index dropped unclosed frees its file
            self.log, self._log_rows = log, saved_rows
            if saved_rows < start:
                log.append(vectors[saved_rows:start])
                self._log_rows = start
        if self._log_rows != start:  # pragma: no cover - every append goes through here
            self.drop_log()
            return
        self.log.append(rows)
        self._log_rows = start + len(rows)

    def drop_log(self) -> None:
        """Close the log, dropping the rows it has not written (a save writes the file in full then)."""
        if self.log is not None:
            self._log_closer()  # log.close(discard=True), once
            self.log = None

    def rows_removed(self) -> None:
        """Stored rows were removed or replaced: the vectors file on disk is no longer a prefix of them."""
        self._epoch += 1
        self.saved = None
        self.drop_log()

    def save(self, target: Path, home: Path | None, contents: Callable[[], dict[str, Any]]) -> None:
        """Write the index directory ``target`` atomically from ``contents()`` (taken under the lock: the
        keyword arguments of :func:`~matryoshka.indexes.faiss.store.write_index`).

        Saving to ``home`` (the index's own directory) after appends only links the vectors file the
        log has been streaming into and writes the small files; anything else writes it in full.
        """
        with self._save_lock:
            with self._lock:
                data = contents()
                count = len(data["vectors"])
                epoch = self._epoch
                log = self.log if target == home and self._log_rows == count else None
                mark = log.mark() if log is not None else None
                if log is None and target == home:
                    self.drop_log()
                    self.saved = None  # no log opens on the file this save replaces
            streamable = True
            try:
                manifest = write_index(target, log=log, mark=mark, **data)
            except (OSError, StaleLogError) as exc:
                if log is None:
                    raise
                # a write or the hard link failed: stop streaming here; a replaced index may be streamed again
                streamable = isinstance(exc, StaleLogError)
                with self._lock:  # the streamed file cannot be used (replaced by another writer, a write failed)
                    if self.log is log:
                        self.drop_log()
                    self.saved = None
                manifest = write_index(target, **data)
            if target == home:
                with self._lock:
                    self._log_failed = not streamable
                    if epoch == self._epoch:
                        self.saved = (target, count, manifest["files"][VECTORS])
