"""A content-addressed cache of an upstream's full-size vectors: (model, text) hashes -> float32 bytes.

One SQLite file (stdlib ``sqlite3``, WAL mode, a busy timeout) per cache directory, so two processes (an
``adapt`` and an ``index build``, or two servers) can read and write it at once. Rows are keyed by the
SHA-256 of the model's label (``<url>#<model>``) and of the text: the file holds neither a text, nor a
URL, nor any key; vectors are raw little-endian float32 (no pickle). Only vectors from answers that
passed the client's checks are written.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matryoshka.errors import InputError

__all__ = ["CACHE_FILE", "VectorCache", "text_key"]

#: The cache's file inside its directory.
CACHE_FILE = "vectors.sqlite3"
#: Keys per ``SELECT ... IN (...)`` (SQLite's variable limit is far above; statements stay short).
LOOKUP_CHUNK = 500
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

    def __init__(self, directory: str | Path, label: str) -> None:
        self.path = Path(directory).expanduser() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._model = hashlib.sha256(label.encode()).digest()
        self._lock = threading.Lock()
        self._dim: int | None = None  # the width recorded in the models table by this process
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

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of ``keys`` (from :func:`text_key`) that are present."""
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = list(keys[start : start + LOOKUP_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT text, vector FROM vectors WHERE model = ? AND text IN ({marks})",
                                        (self._model, *chunk))
                for key, blob in rows:
                    found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def put(self, items: Iterable[tuple[bytes, np.ndarray]], dim: int) -> None:
        """Store ``(key, vector)`` pairs of width ``dim`` in one transaction."""
        rows = [(self._model, key, np.asarray(vector, dtype="<f4").tobytes()) for key, vector in items]
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

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (self._model,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
