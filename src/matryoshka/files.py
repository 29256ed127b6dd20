"""Writing files so that readers never see half of one, with the permissions of an ordinary file.

Stdlib only, so that training, the index store and the evaluation writers can share it without
importing each other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
