"""Read a corpus to encode: a file of texts, a hub data set, or a BEIR data set by name or directory.

Shared by ``index build``, ``index add``, ``adapt`` and ``encode --corpus``, so every command that
takes a corpus reads the same sources the same way. Files are read by
:func:`matryoshka.data.user.read_table`, the reader of ``train --data``: ``.jsonl``, ``.csv``, ``.tsv``,
``.parquet`` and ``.txt`` (one text per line, no ids), ``.gz`` after any but ``.parquet``; a name that is
no local path is a BEIR set (``scifact``, ``BeIR/scifact``) or, as ``owner/name``, a hub data set
(split ``train``).

Columns of a file or hub data set:

- **text**: ``text_column`` when given; else ``text`` (after ``title`` when there is one, as BEIR
  does); else the only column of strings besides the ids. Anything else is a :class:`DataError`
  listing the columns.
- **id**: ``id_column`` when given; else each record's ``_id``, or its ``id``. Ids are non-empty
  strings or integers and unique; records without one get their position (:func:`read_documents`).
- **metadata** (kept for search filters): a record's ``metadata`` object where the source has that
  column (JSONL); otherwise its other columns whose values are strings, numbers or booleans (columns
  of lists, objects or dates are left out, as are empty values). CSV/TSV cells are strings, so a
  ``year`` column filters as ``{"year": "2020"}``; Parquet and JSONL keep their types. ``.txt`` files
  and BEIR sets carry no metadata.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from matryoshka.data.user import SUFFIXES, Table, file_suffix, read_table, text_value
from matryoshka.errors import DataError

#: The column of a record that holds its text, and the one put before it.
TEXT_COLUMN, TITLE_COLUMN = "text", "title"
#: Columns holding a record's id, in the order they are looked for.
ID_COLUMNS = ("_id", "id")
#: The column holding a record's metadata object.
METADATA_COLUMN = "metadata"
#: A corpus as read: ``(ids, texts, metadata)``, one entry per document (an id may be ``None``).
Columns = tuple[list[str | None], list[str], list[dict[str, Any] | None]]


def read_corpus(
    source: str | os.PathLike[str], text_column: str | None = None, id_column: str | None = None
) -> tuple[list[str | None], list[str]]:
    """``(ids, texts)`` of a corpus file, hub data set or BEIR set (see the module docstring for the
    column rules); an id is ``None`` where the source gives none.

    Raises:
        DataError: the source is missing, unreadable (binary), of an unknown type or malformed, or its
            text or id column is missing or ambiguous (the message lists the columns).
    """
    ids, texts, _ = _read(source, text_column, id_column)
    return ids, texts


def read_documents(
    source: str | os.PathLike[str], text_column: str | None = None, id_column: str | None = None
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(id, text, metadata)`` of each document of a corpus, read as :func:`read_corpus` reads it; texts
    without an id get their position (``"0"``, ``"1"``...), stable across re-runs.

    Raises:
        DataError: as :func:`read_corpus`, or a metadata value the filters cannot match (names the line).
    """
    ids, texts, metadata = _read(source, text_column, id_column)
    return list(zip(fill_ids(ids, existing=[]), texts, metadata, strict=True))


def read_text_file(path: Path) -> tuple[list[str | None], list[str]]:
    """``(ids, texts)`` of a corpus file (any format :func:`read_corpus` reads, not a data set name).

    Raises:
        DataError: the file is missing, empty or malformed (the message names the line).
    """
    if not Path(path).is_file():
        raise DataError("no such file", path=path)
    return read_corpus(path)


def jsonl_metadata(path: str | os.PathLike[str], count: int) -> list[dict[str, Any] | None]:
    """The metadata of each document of a corpus file, as :func:`read_documents` keeps it (``None`` for
    each of ``count`` documents where ``path`` is no file, e.g. a BEIR directory)."""
    if not Path(path).is_file():
        return [None] * count
    return _read(path, None, None)[2]


def fill_ids(ids: list[str | None], existing: list[str]) -> list[str]:
    """Give texts without an id the next free integers (after the largest numeric id in use)."""
    numeric = [int(i) for i in [*existing, *ids] if i is not None and i.isdigit()]
    next_id = max(numeric) + 1 if numeric else len(existing)
    filled = []
    for doc_id in ids:
        if doc_id is None:
            doc_id, next_id = str(next_id), next_id + 1
        filled.append(doc_id)
    return filled


def _read(source: str | os.PathLike[str], text_column: str | None, id_column: str | None) -> Columns:
    """The corpus at ``source``: a BEIR set (a directory, or a name that is no file) or a table."""
    path = Path(source).expanduser()
    if path.is_dir() or (not path.exists() and _is_beir_name(str(source))):
        if text_column is not None or id_column is not None:
            raise DataError("a BEIR set has fixed columns: drop --text-column and --id-column", str(source))
        return _read_beir(str(source))
    return documents_of(read_table(source), text_column, id_column)


def _is_beir_name(name: str) -> bool:
    """Whether a name that is no local path means a BEIR set: found under ``$MATRYOSHKA_DATA``, or a
    bare name or ``BeIR/<name>`` for the hub (``owner/name`` is a hub data set)."""
    from matryoshka.data.beir import resolve_beir_dir

    if file_suffix(Path(name)) in SUFFIXES:
        return False
    return resolve_beir_dir(name) is not None or "/" not in name or name.lower().startswith("beir/")


def _read_beir(name: str) -> Columns:
    from matryoshka.data.beir import load_beir, read_beir_corpus, resolve_beir_dir
    from matryoshka.data.local import find_file

    directory = resolve_beir_dir(name)
    corpus = read_beir_corpus(find_file(directory, "corpus.jsonl")) if directory else load_beir(name).corpus
    return list(corpus), list(corpus.values()), [None] * len(corpus)


def documents_of(table: Table, text_column: str | None = None, id_column: str | None = None) -> Columns:
    """``(ids, texts, metadata)`` of a table's records under the column rules of the module docstring.

    Raises:
        DataError: a named column is missing, the text column is ambiguous, or a record's text, id or
            metadata is malformed (naming the line); a repeated id names both lines.
    """
    columns, source = table.columns, table.source
    for option, name in (("--text-column", text_column), ("--id-column", id_column)):
        if name is not None and name not in columns:
            raise DataError(f"no column {name!r} ({option}); the columns are {columns}", source)
    id_columns = (id_column,) if id_column is not None else tuple(c for c in ID_COLUMNS if c in columns)
    text = text_column or _text_column(table, id_columns)
    title = TITLE_COLUMN if text == TEXT_COLUMN and TITLE_COLUMN in columns else None
    used = {text, *id_columns, *([title] if title else [])}
    explicit = METADATA_COLUMN in columns and METADATA_COLUMN not in used
    kept = [] if explicit else [c for c in columns if c not in used and _scalar_column(table, c)]
    ids: list[str | None] = []
    texts: list[str] = []
    metadata: list[dict[str, Any] | None] = []
    first_line: dict[str, int] = {}
    for line, record in table.records:
        heading = record.get(title) if title else None
        if heading is not None and not isinstance(heading, str):
            raise DataError(f"column {title!r} must hold text, got {type(heading).__name__} {heading!r:.40}",
                            source, line)
        raw = record.get(text)
        titled = bool(heading and heading.strip()) and isinstance(raw, str)  # a title alone is a text (BEIR)
        body = raw.strip() if titled and isinstance(raw, str) else text_value(record, text, source, line).strip()
        doc_id = _record_id(record, id_columns, source, line)
        if doc_id is not None:
            if doc_id in first_line:
                raise DataError(f"duplicate id {doc_id!r} (first on line {first_line[doc_id]})", source, line)
            first_line[doc_id] = line
        ids.append(doc_id)
        texts.append(f"{heading or ''} {body}".strip())
        found = record.get(METADATA_COLUMN) if explicit else _flat(record, kept)
        metadata.append(_checked_metadata(found, source, line))
    return ids, texts, metadata


def _text_column(table: Table, id_columns: tuple[str, ...]) -> str:
    """``text``, else the only column of strings that is not an id column."""
    if TEXT_COLUMN in table.columns:
        return TEXT_COLUMN
    strings = [c for c in table.columns if c not in id_columns and _string_column(table, c)]
    if len(strings) == 1:
        return strings[0]
    found = f"{len(strings)} columns of text ({', '.join(strings)})" if strings else "no column of text"
    raise DataError(
        f"no 'text' column and {found} among the columns {table.columns}: name the text with --text-column "
        "(and the ids with --id-column)", table.source,
    )


def _string_column(table: Table, column: str) -> bool:
    values = [record.get(column) for _, record in table.records]
    return any(v is not None for v in values) and all(v is None or isinstance(v, str) for v in values)


def _scalar_column(table: Table, column: str) -> bool:
    """Whether every value of ``column`` can be metadata: a string, number, boolean or nothing."""
    return all(isinstance(record.get(column), (str, int, float, type(None))) for _, record in table.records)


def _flat(record: dict[str, Any], columns: list[str]) -> dict[str, Any] | None:
    """The record's non-empty values of ``columns`` (``None`` when there are none)."""
    values = {c: record[c] for c in columns if not _empty(record.get(c))}
    return values or None


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _record_id(record: dict[str, Any], id_columns: tuple[str, ...], source: str, line: int) -> str | None:
    """The record's id from the first of ``id_columns`` it holds; ``None`` when it holds none."""
    for column in id_columns:
        value = record.get(column)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            raise DataError(f"column {column!r}: an id must be a non-empty string or integer, got {value!r:.40}",
                            source, line)
        return str(value)
    return None


def _checked_metadata(metadata: Any, source: str, line: int) -> dict[str, Any] | None:
    from matryoshka.data.documents import check_metadata

    try:
        return check_metadata(metadata)
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad metadata: {exc}", source, line) from None
