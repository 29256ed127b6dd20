"""Find the local data directory and open its (optionally gzipped) text files."""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matryoshka.errors import DataError

#: Environment variable naming a directory laid out like ``shared/data`` (stsb/, snli/, scifact/...).
DATA_ENV = "MATRYOSHKA_DATA"


def data_root() -> Path | None:
    """The local data directory from ``MATRYOSHKA_DATA``, or ``None`` to use the hub."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"{DATA_ENV} points to {root}, which is not a directory")
    return root


def find_file(directory: Path, stem: str) -> Path:
    """Return ``directory/stem`` or ``directory/stem.gz``, whichever exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing data file {stem}[.gz]", path=directory / stem)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with line endings (LF or CRLF) stripped; gzip by extension. Bytes
    that are not UTF-8, or a NUL byte (a binary file), raise :class:`DataError` naming the file."""
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            for number, line in enumerate(text, start=1):
                if "\x00" in line:
                    raise DataError("a NUL byte: not a text file (a binary file?)", path=path, line=number)
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (a binary file?): {exc.reason} at byte {exc.object[exc.start]:#04x}",
                        path=path) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read file: {exc}", path=path) from exc


def read_jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file; anything that is
    not a JSON object raises :class:`DataError` naming the file and line."""
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=number) from None
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
        yield number, record
