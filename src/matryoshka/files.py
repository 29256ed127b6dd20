"""Writing files so that readers never see half of one, with the permissions of an ordinary file.

Stdlib and numpy only, so that training, adapt, the index store and the evaluation writers can share
it without importing each other.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np


def ordinary_mode(directory: bool = False) -> int:
    """The permissions ``open``/``mkdir`` would give under the current umask.

    ``tempfile`` creates private (0600 / 0700) files and directories; what is renamed into place
    from there should be as readable as any other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, ordinary_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (never pickled) atomically, as :func:`write_atomic` does."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue())


class SavesToDirectory(Protocol):
    """Anything that writes itself into a directory, as ``SentenceTransformer.save(path)`` does."""

    def save(self, path: str) -> object: ...


def save_model_atomic(model: SavesToDirectory, output_dir: str | os.PathLike[str]) -> Path:
    """Save ``model`` so that ``output_dir`` holds either the old model or the complete new one.

    Every file and folder gets the permissions of an ordinary one (some writers, safetensors among
    them, create private 0600 files).
    """
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        model.save(str(staging))
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(ordinary_mode(directory=path.is_dir()))
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
