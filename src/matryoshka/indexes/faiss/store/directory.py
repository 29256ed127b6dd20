"""Writing and reading a whole index directory: staged next to the target, checked, swapped in atomically."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from matryoshka.data.documents import check_metadata
from matryoshka.errors import IndexCorruptError, InputError
from matryoshka.files import ordinary_mode
from matryoshka.indexes.faiss.store.files import (
    check_file,
    first_non_finite_row,
    fsync_dir,
    libc,
    read_json_list,
    read_vectors,
    write_json,
    write_vectors,
)
from matryoshka.indexes.faiss.store.layout import (
    FORMAT,
    FORMAT_VERSION,
    IDS,
    MANIFEST,
    METADATA,
    TEXTS,
    VECTORS,
    read_manifest,
    vectors_file,
)
from matryoshka.indexes.faiss.store.log import Mark, VectorLog
from matryoshka.retrieval.stages import Stage, format_stages, parse_stages, validate_stages


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
    log: VectorLog | None = None,
    mark: Mark | None = None,
) -> dict[str, Any]:
    """Write an index directory at ``path``, replacing an existing index only once the new one is complete;
    return its manifest.

    With ``log`` (a :class:`VectorLog` on ``path``'s ``vectors.bin`` that holds ``vectors`` up to
    ``mark``), the vectors file is linked from the current index instead of written again.

    Raises:
        FileExistsError: ``path`` is a file, or a non-empty directory that is not an index.
        StaleLogError: ``log`` no longer belongs to the index at ``path`` (nothing was changed).
    """
    target = Path(path).expanduser().absolute()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        staging.chmod(ordinary_mode(directory=True))
        if log is not None and mark is not None:
            files = {VECTORS: log.link(mark, staging / VECTORS, int(vectors.nbytes))}
        else:
            files = {VECTORS: write_vectors(staging / VECTORS, vectors)}
        files[IDS] = write_json(staging / IDS, list(ids))
        if texts is not None:
            files[TEXTS] = write_json(staging / TEXTS, list(texts))
        if metadata is not None:
            files[METADATA] = write_json(staging / METADATA, list(metadata))
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
        write_json(staging / MANIFEST, manifest, indent=2)
        fsync_dir(staging)
        if log is not None:
            log.check_current()
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if log is not None:
        log.committed = files[VECTORS]
    return manifest


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
    name = vectors_file(manifest)
    for file, meta in manifest["files"].items():
        if file != VECTORS:
            check_file(root / file, meta, verify)
    count, dim, storage = manifest["count"], manifest["dim"], manifest["storage"]
    if name == VECTORS:
        vectors = read_vectors(root / VECTORS, manifest["files"][VECTORS], (count, dim), storage, mmap, verify)
    else:
        try:
            vectors = np.load(root / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise IndexCorruptError(f"{root / name} cannot be read as a .npy array: {exc}") from None
        if vectors.shape != (count, dim) or vectors.dtype != np.dtype(storage):
            raise IndexCorruptError(
                f"{root / name} holds {vectors.dtype} {vectors.shape}, manifest says {storage} ({count}, {dim})"
            )
    bad = first_non_finite_row(vectors)
    if bad is not None:
        raise IndexCorruptError(
            f"{root / name} holds NaN or infinite values (row {bad}); its checksum matches, so it was written that way"
        )
    ids = read_json_list(root / IDS, count)
    if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise IndexCorruptError(f"{root / IDS} must hold {count} distinct non-empty strings")
    texts = None
    if TEXTS in manifest["files"]:
        texts = read_json_list(root / TEXTS, count)
        if not all(t is None or isinstance(t, str) for t in texts):
            raise IndexCorruptError(f"{root / TEXTS} must hold strings or nulls")
    metadata = None
    if METADATA in manifest["files"]:
        metadata = read_json_list(root / METADATA, count)
        try:
            metadata = [check_metadata(m) for m in metadata]
        except InputError as exc:
            raise IndexCorruptError(f"{root / METADATA}: {exc}") from None
    try:
        stages = validate_stages(parse_stages(manifest["stages"]), dim)
    except InputError as exc:
        raise IndexCorruptError(f"{root / MANIFEST}: bad stages {manifest['stages']!r}: {exc}") from None
    return StoredIndex(vectors, ids, texts, manifest["model_name"], storage, stages, manifest, metadata)


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
    fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    renameat2 = libc("renameat2")
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")
