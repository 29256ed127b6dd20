"""The error every data loader raises for missing or malformed files."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and, where known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.path = Path(path) if path is not None else None
        self.line = line
