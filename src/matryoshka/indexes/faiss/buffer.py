"""The growable buffer that holds an index's stored vectors, so appends write each row once.

Appended rows go into an array whose address space is reserved up front (:func:`reserve`): a bulk
load of ``n`` vectors in any number of calls costs ``O(n)`` row copies, and the buffer is copied
only when it outgrows its reservation (then it grows by :data:`GROWTH`).
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np

#: Capacity factor when the vector buffer grows past its reservation.
GROWTH = 2.0
#: Address space the vector buffer reserves at least (pages use memory only once rows are written).
RESERVE_BYTES = 8 << 30
_MAP_NORESERVE = 0x4000  # Linux's MAP_NORESERVE, which the mmap module of Python 3.11 does not name


def reserve(rows: int, dim: int, dtype: str) -> np.ndarray:
    """A writable ``(capacity, dim)`` array, ``capacity >= rows``, for the growable vector buffer.

    It lies on an anonymous mapping of at least :data:`RESERVE_BYTES` whose pages are faulted in
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
    capacity = max(rows, RESERVE_BYTES // row_bytes)
    flags = mmap.MAP_PRIVATE | (_MAP_NORESERVE if sys.platform.startswith("linux") else 0)
    try:
        mapping = mmap.mmap(-1, capacity * row_bytes, flags=flags)
    except (OSError, OverflowError, ValueError):
        return np.empty((rows, dim), dtype=dtype)
    return np.frombuffer(mapping, dtype=dtype, count=capacity * dim).reshape(capacity, dim)


def appended(
    vectors: np.ndarray, buffer: np.ndarray | None, rows: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors with rows after them, the buffer of dtype ``dtype`` they now head)``.

    ``vectors`` must be ``buffer[:len(vectors)]`` whenever ``buffer`` is given; a new buffer is
    reserved (and ``vectors`` copied into it) only when there is none or it is too small.
    """
    count, need = len(vectors), len(vectors) + len(rows)
    if buffer is None or len(buffer) < need:
        capacity = max(need, int(count * GROWTH) + 1024)
        buffer = reserve(capacity, vectors.shape[1], dtype)
        buffer[:count] = vectors
    buffer[count:need] = rows
    return buffer[:need], buffer
