"""Training data the user brings: JSONL, CSV or Parquet files, a hub data set, or a BEIR directory.

Three shapes are understood, named by their columns:

- ``anchor``, ``positive`` and optionally ``negative``, ``negative_2``... : rows of texts for a
  ranking objective (a query and its relevant document, plus hard negatives);
- one text column (``text``, or the file's only column): texts for self-distillation;
- a BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): each judged
  (query, relevant document) becomes an (anchor, positive) row.

The file formats are read by :func:`read_table`, which ``--corpus`` (:mod:`matryoshka.data.corpus`)
shares, so both options take the same files: ``.jsonl`` (objects, or strings read as a ``text``
column), ``.csv``/``.tsv`` with a header, ``.parquet``, ``.txt`` (one ``text`` per line; ``.gz`` may
follow every text format), or a hub data set by ``owner/name``.

Every problem is a :class:`~matryoshka.errors.DataError` that names the file, and where it
applies the line and the column.

Example:
    >>> data = load_training_data("pairs.jsonl")  # doctest: +SKIP
    >>> data.kind, data.columns, len(data.rows)  # doctest: +SKIP
    ('pairs', ('anchor', 'positive'), 919)
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from matryoshka.data.local import read_lines
from matryoshka.errors import DataError

Kind = Literal["pairs", "texts"]
#: File suffixes read locally; ``.gz`` may follow all but ``.parquet``.
SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")
#: One record of a table: its line (a row number in Parquet and hub sets) and its values by column.
Record = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Table:
    """Rows read from a file or hub data set: ``columns`` in first-seen order, ``records`` as
    ``(line, {column: value})``, and ``source`` (the path or name) for error messages."""

    columns: list[str]
    records: list[Record]
    source: str


@dataclass
class TrainingData:
    """Rows of texts and their shape: ``pairs`` rows are (anchor, positive, negatives...), ``texts`` rows one text."""

    kind: Kind
    rows: list[tuple[str, ...]]
    columns: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.rows)


def file_suffix(path: Path) -> str:
    """The lower-case suffix that names a file's format: ``.csv`` for ``x.CSV.gz``, ``""`` for none."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_jsonl(path: Path) -> tuple[list[str], list[Record]]:
    records: list[Record] = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path, number) from None
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object or string, got {type(record).__name__}", path, number)
        records.append((number, record))
    columns = list(dict.fromkeys(key for _, record in records for key in record))
    return columns, records


def _read_txt(path: Path) -> tuple[list[str], list[Record]]:
    records: list[Record] = []
    for number, line in read_lines(path):
        if line.strip():
            records.append((number, {"text": line.strip()}))
    return ["text"], records


def _read_csv(path: Path) -> tuple[list[str], list[Record]]:
    delimiter = "\t" if file_suffix(path) == ".tsv" else ","
    lines = [line for _, line in read_lines(path)]
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    if len(set(columns)) != len(columns):
        raise DataError(f"duplicate column names in the header {columns}", path, 1)
    records: list[Record] = []
    for row in reader:
        if None in row:
            raise DataError(f"more fields than the {len(columns)} header columns", path, reader.line_num)
        records.append((reader.line_num, dict(row)))
    return columns, records


def _read_parquet(path: Path) -> tuple[list[str], list[Record]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"cannot read Parquet: {exc}", path) from None
    return list(table.column_names), [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def _read_hub(name: str, split: str) -> tuple[list[str], list[Record]]:
    from datasets import load_dataset

    try:
        rows = load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001  (the hub client raises many unrelated types; all mean "not loadable")
        offline = " (no hub access: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(f"cannot load hub data set {name!r} split {split!r}{offline}: {exc}", name) from None
    return list(rows.column_names), [(i + 1, row) for i, row in enumerate(rows)]


def _shape(columns: Sequence[str], source: str) -> tuple[Kind, tuple[str, ...]]:
    if "anchor" in columns or "positive" in columns:
        for needed in ("anchor", "positive"):
            if needed not in columns:
                raise DataError(f"missing column {needed!r}: pairs need 'anchor' and 'positive' (found {list(columns)})", source)
        negatives = sorted((c for c in columns if c == "negative" or c.startswith("negative_")),
                           key=lambda c: (c != "negative", c))
        return "pairs", ("anchor", "positive", *negatives)
    if "text" in columns:
        return "texts", ("text",)
    if len(columns) == 1:
        return "texts", (columns[0],)
    raise DataError(
        f"cannot tell the shape from the columns {list(columns)}: give 'anchor' and 'positive' "
        "(pairs), or one 'text' column (self-distillation)", source,
    )


def text_value(record: dict[str, Any], column: str, source: str, line: int) -> str:
    """The text in ``record[column]``; a missing, blank or non-string value is a :class:`DataError`
    naming the source, the line and the column (the one rule for training rows and corpus texts)."""
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"empty or missing value in column {column!r}", source, line)
    if not isinstance(value, str):
        raise DataError(f"column {column!r} must hold text, got {type(value).__name__} {value!r:.40}", source, line)
    return value


def _rows(records: Sequence[Record], columns: tuple[str, ...], source: str) -> list[tuple[str, ...]]:
    return [tuple(text_value(record, column, source, line) for column in columns) for line, record in records]


def read_table(source: str | os.PathLike[str], split: str = "train") -> Table:
    """Read the rows of a local file (format by suffix, see :data:`SUFFIXES`) or, for a name that is
    no local path, of a hub data set's ``split``: the one reader behind ``train --data`` and ``--corpus``.

    Raises:
        DataError: the file is missing, not a regular file, of an unknown type, unreadable (binary,
            not UTF-8), malformed (naming the line), or holds no rows; or the hub set cannot be loaded.
    """
    path = Path(source).expanduser()
    name = str(source)
    suffix = file_suffix(path)
    if path.exists() and not path.is_file():
        raise DataError("not a regular file", path)
    if path.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
                   ".tsv": _read_csv, ".parquet": _read_parquet, ".txt": _read_txt}
        if suffix not in readers:
            raise DataError(f"unknown file type {suffix or '(none)'!r}; use .jsonl, .csv, .tsv, .parquet or .txt", path)
        columns, records = readers[suffix](path)
    elif suffix in SUFFIXES or path.is_absolute() or name.startswith((".", "~")):
        raise DataError("no such file", path)
    else:
        columns, records = _read_hub(name, split)
    if not records:
        raise DataError("no rows: the file is empty", name)
    return Table(columns=columns, records=records, source=name)


def load_training_data(source: str | os.PathLike[str], split: str = "train") -> TrainingData:
    """Read training rows from a file, a BEIR directory or a hub data set (``split`` for the latter two).

    Raises:
        DataError: the source is missing, empty, malformed, or its columns fit no known shape.
    """
    from matryoshka.data.beir import resolve_beir_dir

    path = Path(source).expanduser()
    name = str(source)
    if path.is_dir() or (not path.exists() and file_suffix(path) not in SUFFIXES and resolve_beir_dir(name) is not None):
        return beir_training_pairs(name, split)
    table = read_table(source, split)
    kind, used = _shape(table.columns, name)
    return TrainingData(kind=kind, rows=_rows(table.records, used, name), columns=used, source=name)


def beir_training_pairs(name_or_path: str | os.PathLike[str], split: str = "train") -> TrainingData:
    """(query, relevant document) rows from a BEIR set's ``split`` qrels; documents as ``title text``."""
    from matryoshka.data.beir import load_beir

    dataset = load_beir(name_or_path, split=split)
    rows = [
        (dataset.queries[query], dataset.corpus[doc])
        for query, judged in dataset.qrels.items()
        if query in dataset.queries
        for doc, relevance in judged.items()
        if relevance > 0 and doc in dataset.corpus
    ]
    if not rows:
        raise DataError(f"no judged (query, document) pairs in split {split!r}", str(name_or_path))
    return TrainingData(kind="pairs", rows=list(rows), columns=("anchor", "positive"), source=str(name_or_path))
