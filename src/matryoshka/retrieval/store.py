"""Index directories on disk: plain files, checksummed, replaced atomically, never pickled.

An index directory holds::

    manifest.json   format, version, model name, dim, count, storage dtype, stages, sha256 per file
    vectors.npy     (count, dim) unit vectors, float32 or float16
    ids.json        JSON list of ``count`` document ids
    texts.json      JSON list of ``count`` texts or nulls (only when texts were given)
    metadata.json   JSON list of ``count`` flat objects or nulls (only when metadata was given)

A save writes a complete new directory next to the target and swaps it into place, so a crash at
any moment leaves either the old index or the new one, never half of one. A load checks every
file against the manifest and raises :class:`IndexCorruptError` on any difference.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from matryoshka.errors import IndexCorruptError
from matryoshka.files import ordinary_mode
from matryoshka.retrieval.filters import check_metadata
from matryoshka.retrieval.stages import (
    Stage,
    format_stages,
    parse_stages,
    validate_stages,
)

FORMAT = "matryoshka-funnel-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
IDS = "ids.json"
TEXTS = "texts.json"
METADATA = "metadata.json"
_STORAGES = ("float32", "float16")
_HASH_CHUNK = 8 << 20


@dataclass
class StoredIndex:
    """What :func:`read_index` returns: validated arrays and the manifest they came with."""

    vectors: np.ndarray
    ids: list[str]
    texts: list[str | None] | None
    model_name: str
    storage: str
    stages: list[Stage]
    manifest: dict[str, Any]
    metadata: list[dict[str, Any] | None] | None = None


def write_index(
    path: str | os.PathLike[str],
    vectors: np.ndarray,
    ids: Sequence[str],
    texts: Sequence[str | None] | None,
    model_name: str,
    storage: str,
    stages: Sequence[Stage],
    metadata: Sequence[dict[str, Any] | None] | None = None,
) -> None:
    """Write an index directory at ``path``, replacing an existing index only once the new one is complete.

    Raises:
        FileExistsError: ``path`` is a file, or a non-empty directory that is not an index.
    """
    target = Path(path).expanduser().absolute()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        staging.chmod(ordinary_mode(directory=True))
        files = {VECTORS: _write_npy(staging / VECTORS, vectors), IDS: _write_json(staging / IDS, list(ids))}
        if texts is not None:
            files[TEXTS] = _write_json(staging / TEXTS, list(texts))
        if metadata is not None:
            files[METADATA] = _write_json(staging / METADATA, list(metadata))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "dim": int(vectors.shape[1]),
            "count": int(vectors.shape[0]),
            "storage": storage,
            "stages": format_stages(stages),
            "files": files,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _write_json(staging / MANIFEST, manifest, indent=2)
        _fsync_dir(staging)
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: A staging folder that names no writer (written before writers put their pid in the name) is
#: removed once it has not changed for this long.
STALE_UNNAMED_S = 3600


def remove_stale_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden folders that killed saves of ``target`` left next to it; return what was removed.

    A save stages into ``.<name>.tmp-<pid>-<random>`` and, on systems without an atomic directory swap,
    parks the previous index in ``.<name>.old-<random>`` for a moment. A staging folder whose writer
    process is gone is garbage (its save never committed); one whose writer is alive is left alone, so
    two concurrent saves never delete each other's work. ``.old-`` folders are leftovers of a swap
    that completed, so they go too.
    """
    target = Path(target).expanduser().absolute()
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in siblings:
        name = entry.name
        if not entry.is_dir() or entry.is_symlink():
            continue
        if name.startswith(f".{target.name}.old-"):
            stale = True
        elif name.startswith(f".{target.name}.tmp-"):
            stale = _staging_is_stale(entry, name.removeprefix(f".{target.name}.tmp-"))
        else:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _staging_is_stale(entry: Path, suffix: str) -> bool:
    pid_text, sep, _ = suffix.partition("-")
    if sep and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False  # this process may be saving it right now (another thread)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, someone else's
        return False
    try:
        return time.time() - entry.stat().st_mtime > STALE_UNNAMED_S
    except OSError:
        return False


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` of the index at ``path`` (no data files are opened)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no index at {root}")
    if not root.is_dir():
        raise IndexCorruptError(f"{root} is not an index directory")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise IndexCorruptError(f"{manifest_path} is missing: {root} is not an index, or its save never finished")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{manifest_path} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise IndexCorruptError(f"{manifest_path}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise IndexCorruptError(
            f"{manifest_path}: format version {version} is newer than this matryoshka reads ({FORMAT_VERSION})"
        )
    expected = {"model_name": str, "dim": int, "count": int, "storage": str, "stages": str, "files": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IndexCorruptError(f"{manifest_path}: field {key!r} is missing or not a {kind.__name__}")
    if manifest["dim"] < 1 or manifest["count"] < 0:
        raise IndexCorruptError(f"{manifest_path}: dim {manifest['dim']} / count {manifest['count']} out of range")
    if manifest["storage"] not in _STORAGES:
        raise IndexCorruptError(f"{manifest_path}: unknown storage {manifest['storage']!r}")
    unknown = set(manifest["files"]) - {VECTORS, IDS, TEXTS, METADATA}
    if unknown or not {VECTORS, IDS} <= set(manifest["files"]):
        raise IndexCorruptError(
            f"{manifest_path}: files must list {VECTORS}, {IDS} and optionally {TEXTS}, {METADATA}"
        )
    return manifest


def read_index(path: str | os.PathLike[str], mmap: bool = False, verify: bool = True) -> StoredIndex:
    """Load and validate the index directory at ``path``.

    Args:
        mmap: map ``vectors.npy`` read-only instead of reading it into memory.
        verify: compare each file's sha256 with the manifest (reads every byte once).

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        IndexCorruptError: a file is missing, has the wrong size or checksum, or its content does
            not match the manifest's count, dim, storage or stages.
    """
    root = Path(path).expanduser()
    manifest = read_manifest(root)
    for name, meta in manifest["files"].items():
        _check_file(root / name, meta, verify)
    count, dim, storage = manifest["count"], manifest["dim"], manifest["storage"]
    try:
        vectors = np.load(root / VECTORS, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"{root / VECTORS} cannot be read as a .npy array: {exc}") from None
    if vectors.shape != (count, dim) or vectors.dtype != np.dtype(storage):
        raise IndexCorruptError(
            f"{root / VECTORS} holds {vectors.dtype} {vectors.shape}, manifest says {storage} ({count}, {dim})"
        )
    bad = _first_non_finite_row(vectors)
    if bad is not None:
        raise IndexCorruptError(
            f"{root / VECTORS} holds NaN or infinite values (row {bad}); its checksum matches, so it was written that way"
        )
    ids = _read_json_list(root / IDS, count)
    if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise IndexCorruptError(f"{root / IDS} must hold {count} distinct non-empty strings")
    texts = None
    if TEXTS in manifest["files"]:
        texts = _read_json_list(root / TEXTS, count)
        if not all(t is None or isinstance(t, str) for t in texts):
            raise IndexCorruptError(f"{root / TEXTS} must hold strings or nulls")
    metadata = None
    if METADATA in manifest["files"]:
        metadata = _read_json_list(root / METADATA, count)
        try:
            metadata = [check_metadata(m) for m in metadata]
        except (TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{root / METADATA}: {exc}") from None
    try:
        stages = validate_stages(parse_stages(manifest["stages"]), dim)
    except ValueError as exc:
        raise IndexCorruptError(f"{root / MANIFEST}: bad stages {manifest['stages']!r}: {exc}") from None
    return StoredIndex(vectors, ids, texts, manifest["model_name"], storage, stages, manifest, metadata)


def _first_non_finite_row(vectors: np.ndarray, block: int = 65_536) -> int | None:
    """The first row holding NaN or inf, checked block by block (a mapped file is not read in whole)."""
    for start in range(0, len(vectors), block):
        finite = np.isfinite(vectors[start : start + block]).all(axis=1)
        if not finite.all():
            return start + int(np.flatnonzero(~finite)[0])
    return None


def _check_replaceable(target: Path) -> None:
    if target.is_file() or target.is_symlink():
        raise FileExistsError(f"{target} is a file; an index is a directory")
    if target.is_dir() and not (target / MANIFEST).exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is a non-empty directory that is not an index; refusing to replace it")


def _commit(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` directory to ``target``, swapping out an existing index."""
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous index
    else:
        previous = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
        os.rename(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


class _HashingWriter:
    """File wrapper that hashes and counts what is written through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)


def _write_file(path: Path, write: Any) -> dict[str, Any]:
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        write(writer)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": writer.sha256.hexdigest(), "bytes": writer.size}


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    return _write_file(
        path, lambda out: np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    )


def _write_json(path: Path, value: Any, indent: int | None = None) -> dict[str, Any]:
    data = json.dumps(value, ensure_ascii=False, indent=indent).encode("utf-8")
    return _write_file(path, lambda out: out.write(data))


def _fsync_dir(path: Path) -> None:
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


def _check_file(path: Path, meta: Any, verify: bool) -> None:
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


def _read_json_list(path: Path, count: int) -> list[Any]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, list) or len(value) != count:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise IndexCorruptError(f"{path} must be a JSON list of {count} entries, got {got}")
    return value
