"""The one exception hierarchy: every expected failure of the toolkit is a :class:`MatryoshkaError`.

The command line turns any of them into a one-line ``error: ...`` and exit status 1 (see
:func:`matryoshka.cli_errors.expected_errors`). Classes also subclass the builtin that older callers
caught (``ValueError`` for bad input, ``RuntimeError`` for engines and models), so ``except ValueError``
keeps working.

- :class:`DataError`: a data file is missing or malformed (names the file and line).
- :class:`DimensionError`: a dimension is not a valid prefix length of the vectors.
- :class:`IndexStoreError`: an index cannot be opened, read or written; :class:`IndexCorruptError` (an
  index directory fails its checks) and :class:`BackendError` (a database engine refused or failed)
  are its kinds.
- :class:`ModelError`: a model cannot be found, loaded, or does not match an index.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackendError",
    "DataError",
    "DimensionError",
    "IndexCorruptError",
    "IndexStoreError",
    "InputError",
    "MatryoshkaError",
    "ModelError",
]


class MatryoshkaError(Exception):
    """Base of every error the toolkit raises on purpose; its message is one line for the user."""


class InputError(MatryoshkaError, ValueError):
    """An argument or request is invalid (bad ids, shapes, filters, stages...)."""


class DataError(MatryoshkaError, ValueError):
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


class DimensionError(MatryoshkaError, ValueError):
    """A requested dimension is not a valid prefix length of the model's vectors."""


class IndexStoreError(MatryoshkaError, RuntimeError):
    """An index (a directory or a database table/collection) cannot be opened, read or written."""


class IndexCorruptError(IndexStoreError):
    """An index directory is incomplete, truncated, edited or inconsistent with its manifest."""


class BackendError(IndexStoreError):
    """The engine behind an index refused or failed an operation (with the engine's own message)."""


class ModelError(MatryoshkaError, RuntimeError):
    """A model cannot be found or loaded, or it is not the model an index was built with."""
