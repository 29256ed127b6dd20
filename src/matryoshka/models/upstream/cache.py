"""A content-addressed cache of an upstream's full-size vectors: (model, text) hashes -> float32 bytes.

One SQLite file (stdlib ``sqlite3``, WAL mode, a busy timeout) per cache directory, so two processes (an
``adapt`` and an ``index build``, or two servers) can read and write it at once. Rows are keyed by the
SHA-256 of the model's label (``<url>#<model>``) and of the text: the file holds neither a text, nor a
URL, nor any key; vectors are raw little-endian float32 (no pickle). Only vectors from answers that
passed the client's checks are written.

The most recently used vectors are also kept in memory (``memory_bytes``), so a text seen again costs a
dictionary lookup instead of a read transaction on the file: a server answers such a request on its event
loop (:meth:`VectorCache.remembered`). Entries never go stale: a key is a hash of the model and the text.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matryoshka.errors import InputError

__all__ = ["CACHE_FILE", "VectorCache", "text_key"]

#: The cache's file inside its directory.
CACHE_FILE = "vectors.sqlite3"
#: Keys per ``SELECT ... IN (...)`` (SQLite's variable limit is far above; statements stay short).
LOOKUP_CHUNK = 500
#: Bytes of vectors kept in memory beside the file, the most recently used first (64 MiB: ~44k 384-d vectors).
MEMORY_BYTES = 64 * 2**20
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model BLOB NOT NULL, text BLOB NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, text)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS models (model BLOB PRIMARY KEY, dim INTEGER NOT NULL);
"""


def text_key(text: str) -> bytes:
    """The SHA-256 digest a text is cached under."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class VectorCache:
    """The vectors one upstream model (by label) gave, in ``directory``; thread-safe within a process."""

    def __init__(self, directory: str | Path, label: str, memory_bytes: int = MEMORY_BYTES) -> None:
        self.path = Path(directory).expanduser() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._model = hashlib.sha256(label.encode()).digest()
        self._lock = threading.Lock()
        self._dim: int | None = None  # the width recorded in the models table by this process
        self._memory: OrderedDict[bytes, np.ndarray] = OrderedDict()  # read-only rows, least recently used first
        self._memory_limit = memory_bytes
        self._memory_held = 0
        self._memory_lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            self._setup()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} is not a usable vector cache ({exc}); delete it or use --no-cache") from None

    def __repr__(self) -> str:
        return f"VectorCache({str(self.path)!r})"

    def _setup(self) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:  # switching to WAL takes a lock the busy timeout does not always wait for
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def dim(self) -> int | None:
        """The width of this model's cached vectors (``None``: nothing cached yet)."""
        with self._lock:
            row = self._db.execute("SELECT dim FROM models WHERE model = ?", (self._model,)).fetchone()
        return int(row[0]) if row else None

    def remembered(self, keys: Sequence[bytes]) -> list[np.ndarray] | None:
        """The vectors of ``keys`` if every one is held in memory (read-only rows), else ``None``; no file access."""
        with self._memory_lock:
            rows = [self._memory.get(key) for key in keys]
            if any(row is None for row in rows):
                return None
            for key in keys:
                self._memory.move_to_end(key)
        return rows  # type: ignore[return-value]

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of ``keys`` (from :func:`text_key`) that are present: from memory, then the file."""
        with self._memory_lock:
            found = {key: row for key in keys if (row := self._memory.get(key)) is not None}
        wanted = [key for key in dict.fromkeys(keys) if key not in found]
        read: dict[bytes, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT text, vector FROM vectors WHERE model = ? AND text IN ({marks})",
                                        (self._model, *chunk))
                for key, blob in rows:
                    read[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        self._remember(read.items())
        return {**found, **read}

    def _remember(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Hold ``(key, vector)`` pairs in memory as read-only rows, dropping the least recently used past the limit."""
        with self._memory_lock:
            for key, vector in items:
                if key in self._memory:
                    self._memory.move_to_end(key)
                    continue
                row = np.array(vector, dtype=np.float32)
                row.flags.writeable = False
                self._memory[key] = row
                self._memory_held += row.nbytes
            while self._memory_held > self._memory_limit and self._memory:
                self._memory_held -= self._memory.popitem(last=False)[1].nbytes

    def put(self, items: Iterable[tuple[bytes, np.ndarray]], dim: int) -> None:
        """Store ``(key, vector)`` pairs of width ``dim`` in one transaction (and in memory once it committed)."""
        pairs = list(items)
        rows = [(self._model, key, np.asarray(vector, dtype="<f4").tobytes()) for key, vector in pairs]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._dim != dim:  # once per process and width, not per call
                    self._db.execute("INSERT OR IGNORE INTO models (model, dim) VALUES (?, ?)", (self._model, dim))
                self._db.executemany("INSERT OR REPLACE INTO vectors (model, text, vector) VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._dim = dim
        self._remember(pairs)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (self._model,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
