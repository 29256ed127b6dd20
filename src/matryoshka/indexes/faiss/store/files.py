"""Checksummed plain files of an index directory: JSON lists, the raw vectors file, and the system
calls that put them on disk (``fsync``, ``fdatasync``, functions of the C library)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from matryoshka.errors import IndexCorruptError
from matryoshka.indexes.faiss.store import layout
from matryoshka.indexes.faiss.store.layout import MANIFEST

_HASH_CHUNK = 8 << 20


def first_non_finite_row(vectors: np.ndarray, block: int = 65_536) -> int | None:
    """The first row holding NaN or inf, checked block by block (a mapped file is not read in whole)."""
    for start in range(0, len(vectors), block):
        finite = np.isfinite(vectors[start : start + block]).all(axis=1)
        if not finite.all():
            return start + int(np.flatnonzero(~finite)[0])
    return None


def libc(name: str) -> Any:
    """The Linux C library's function ``name`` (errno kept), or ``None`` elsewhere or when it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None


class HashingWriter:
    """File wrapper that hashes and counts what is written through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)


def write_file(path: Path, write: Any) -> dict[str, Any]:
    with open(path, "wb") as handle:
        writer = HashingWriter(handle)
        write(writer)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": writer.sha256.hexdigest(), "bytes": writer.size}


def little_endian(dtype: Any) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("<")


def bytes_of(array: np.ndarray) -> memoryview:
    """The raw bytes of a C-contiguous array, without a copy."""
    return array.reshape(-1).data.cast("B") if array.size else memoryview(b"")


def write_vectors(path: Path, vectors: np.ndarray) -> dict[str, Any]:
    """Write ``vectors`` as raw little-endian rows; the manifest entry (size, sha256 per chunk)."""
    data = bytes_of(np.ascontiguousarray(vectors, dtype=little_endian(vectors.dtype)))
    chunk = layout.CHUNK_BYTES  # read here, not bound at import, so the log and this writer always agree
    chunks = []
    with open(path, "wb") as handle:
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            handle.write(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": len(data), "chunk_bytes": chunk, "sha256_chunks": chunks}


def read_vectors(
    path: Path, meta: dict[str, Any], shape: tuple[int, int], storage: str, mmap: bool, verify: bool
) -> np.ndarray:
    """The committed prefix of ``vectors.bin`` (read, or mapped read-only), each chunk checked when ``verify``."""
    if not path.is_file():
        raise IndexCorruptError(f"{path} is missing (listed in {MANIFEST})")
    size, expected = path.stat().st_size, meta["bytes"]
    if size < expected:
        raise IndexCorruptError(f"{path} is {size} bytes, {MANIFEST} says {expected} (truncated or replaced)")
    dtype = little_endian(storage)
    array = np.empty(shape, dtype=dtype) if not mmap or not shape[0] else None
    target = None if array is None else bytes_of(array)
    chunk = meta["chunk_bytes"]
    if verify or target is not None:
        with open(path, "rb") as handle:
            for i, start in enumerate(range(0, expected, chunk)):
                length = min(chunk, expected - start)
                if target is not None:
                    piece = target[start : start + length]
                    got = handle.readinto(piece)
                    while got < length:
                        more = handle.readinto(piece[got:])
                        if not more:
                            raise IndexCorruptError(f"{path} ended early (truncated while being read)")
                        got += more
                else:
                    piece = memoryview(handle.read(length))
                if verify and hashlib.sha256(piece).hexdigest() != meta["sha256_chunks"][i]:
                    raise IndexCorruptError(
                        f"{path} does not match its sha256 in {MANIFEST} (chunk {i}: the file was changed or damaged)"
                    )
    if array is not None:
        return array
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def write_json(path: Path, value: Any, indent: int | None = None) -> dict[str, Any]:
    data = json.dumps(value, ensure_ascii=False, indent=indent).encode("utf-8")
    return write_file(path, lambda out: out.write(data))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def check_file(path: Path, meta: Any, verify: bool) -> None:
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
        raise IndexCorruptError(f"manifest entry for {path.name} must hold 'sha256' and 'bytes'")
    if not path.is_file():
        raise IndexCorruptError(f"{path} is missing (listed in {MANIFEST})")
    size = path.stat().st_size
    if size != meta["bytes"]:
        raise IndexCorruptError(f"{path} is {size} bytes, {MANIFEST} says {meta['bytes']} (truncated or replaced)")
    if verify:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != meta["sha256"]:
            raise IndexCorruptError(f"{path} does not match its sha256 in {MANIFEST} (the file was changed or damaged)")


def read_json_list(path: Path, count: int) -> list[Any]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, list) or len(value) != count:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise IndexCorruptError(f"{path} must be a JSON list of {count} entries, got {got}")
    return value
