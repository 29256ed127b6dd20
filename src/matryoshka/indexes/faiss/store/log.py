"""The vector log: rows appended to an index streamed into its ``vectors.bin`` while they are ingested."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from matryoshka.errors import IndexCorruptError, StaleLogError
from matryoshka.indexes.faiss.store import layout
from matryoshka.indexes.faiss.store.files import bytes_of, little_endian
from matryoshka.indexes.faiss.store.layout import VECTORS, read_manifest
from matryoshka.indexes.faiss.store.tails import open_tail

_LOG_QUEUE = 64  # appends a VectorLog holds before an append waits for the disk


class Mark:
    """A point in a :class:`VectorLog`'s stream: set once every row before it is on disk (synced)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def wait(self) -> dict[str, Any]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry


class VectorLog:
    """Streams rows appended to an index into its ``vectors.bin`` while they are ingested.

    A background thread writes each appended block after the committed bytes (with ``O_DIRECT``
    where the file system allows it, see :class:`DirectTail`; else through the page cache, starting
    writeback every 16 MiB) and hashes it chunk by chunk, so by the next save most of the new rows are
    on disk already and a save links the file into its new directory (see the module docstring)
    instead of writing it.
    Nothing written here counts until a save commits a manifest that lists it.

    Raises (on construction):
        OSError: the file cannot be opened, another process (or index) holds its lock, or the platform
            has no ``flock``.
        StaleLogError: the index at ``target`` does not list ``committed`` for its vectors any more.
    """

    def __init__(self, target: str | os.PathLike[str], committed: dict[str, Any]) -> None:
        try:
            import fcntl
        except ImportError as exc:  # pragma: no cover - not on POSIX
            raise OSError(f"no flock here: {exc}") from None
        self.target = Path(target)
        self.committed = committed
        chunk = self._chunk_bytes = layout.CHUNK_BYTES  # the manifest's chunk_bytes, fixed for the log's life
        fd = os.open(self.target / VECTORS, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stat = os.fstat(fd)
            self._inode = (stat.st_dev, stat.st_ino)
            self.check_current()
            if committed["chunk_bytes"] != chunk:
                raise StaleLogError(f"{self.target / VECTORS} is checksummed in other chunks: saves rewrite it")
            size = committed["bytes"]
            if stat.st_size < size:
                raise StaleLogError(f"{self.target / VECTORS} is shorter than its manifest says")
            os.ftruncate(fd, size)  # an append that no save committed
            full = size // chunk
            self._chunks: list[str] = list(committed["sha256_chunks"][:full])
            self._partial = hashlib.sha256(os.pread(fd, size - full * chunk, full * chunk))
            if size % chunk and self._partial.hexdigest() != committed["sha256_chunks"][full]:
                raise StaleLogError(f"{self.target / VECTORS} does not match its manifest")
            self._tail = open_tail(self.target / VECTORS, fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closed = False
        self._offset = size
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_LOG_QUEUE)
        self._thread = threading.Thread(target=self._run, name="matryoshka-vector-log", daemon=True)
        self._thread.start()

    def append(self, rows: np.ndarray) -> None:
        """Queue ``rows`` (kept, not copied: the caller must not change them) to be written after the rest."""
        self._queue.put(("rows", np.ascontiguousarray(rows, dtype=little_endian(rows.dtype))))

    def mark(self) -> Mark:
        """A mark after every row appended so far (its :meth:`Mark.wait` gives the manifest entry)."""
        mark = Mark()
        self._queue.put(("mark", mark))
        return mark

    def link(self, mark: Mark, dest: Path, nbytes: int) -> dict[str, Any]:
        """Wait for ``mark``, hard-link the file to ``dest``; the manifest entry of its first ``nbytes``.

        Raises:
            StaleLogError: the file at the target is not this log's any more, or holds other rows.
            OSError: writing failed earlier, or the file system has no hard links.
        """
        entry = mark.wait()
        if entry["bytes"] != nbytes:
            raise StaleLogError(f"the log holds {entry['bytes']} bytes of vectors, the save {nbytes}")
        os.link(self.target / VECTORS, dest)
        stat = os.stat(dest)
        if (stat.st_dev, stat.st_ino) != self._inode:
            raise StaleLogError(f"{self.target / VECTORS} was replaced by another writer")
        return entry

    def check_current(self) -> None:
        """Raise :class:`StaleLogError` unless the index at the target still lists :attr:`committed` in this file."""
        try:
            manifest = read_manifest(self.target)
            stat = os.stat(self.target / VECTORS)
        except (OSError, IndexCorruptError) as exc:
            raise StaleLogError(str(exc)) from None
        if manifest["files"].get(VECTORS) != self.committed or (stat.st_dev, stat.st_ino) != self._inode:
            raise StaleLogError(f"the index at {self.target} was replaced by another writer")

    def close(self, discard: bool = False) -> None:
        """Stop the thread and release the file (rows not committed by a save are dropped by the next log).

        ``discard``: skip the rows still queued instead of writing them.
        """
        if self._closed:
            return
        self._closed = True
        if discard and self._error is None:
            self._error = StaleLogError("the log was closed")
        if self._thread.is_alive():
            self._queue.put(("stop", None))
            self._thread.join()
        self._tail.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            if kind == "stop":
                return
            try:
                if self._error is not None:
                    raise self._error
                if kind == "rows":
                    self._write(bytes_of(item))
                else:
                    self._tail.sync()
                    tail = [self._partial.hexdigest()] if self._offset % self._chunk_bytes else []
                    item.entry = {"bytes": self._offset, "chunk_bytes": self._chunk_bytes, "sha256_chunks": self._chunks + tail}
            except BaseException as exc:  # noqa: BLE001 - reported to the next save
                self._error = exc
                if kind == "mark":
                    item.error = exc
            finally:
                if kind == "mark":
                    item.done.set()

    def _write(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            room = self._chunk_bytes - self._offset % self._chunk_bytes
            piece = data[pos : pos + room]
            self._tail.write(piece)
            self._partial.update(piece)
            self._offset += len(piece)
            pos += len(piece)
            if self._offset % self._chunk_bytes == 0:
                self._chunks.append(self._partial.hexdigest())
                self._partial = hashlib.sha256()
