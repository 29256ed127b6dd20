"""Training data the user brings: JSONL, CSV or Parquet files, a hub data set, or a BEIR directory.

Three shapes are understood, named by their columns:

- ``anchor``, ``positive`` and optionally ``negative``, ``negative_2``... : rows of texts for a
  ranking objective (a query and its relevant document, plus hard negatives);
- one text column (``text``, or the file's only column): texts for self-distillation;
- a BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): each judged
  (query, relevant document) becomes an (anchor, positive) row.

Every problem is a :class:`~matryoshka.data.errors.DataError` that names the file, and where it
applies the line and the column.

Example:
    >>> data = load_training_data("pairs.jsonl")  # doctest: +SKIP
    >>> data.kind, data.columns, len(data.rows)  # doctest: +SKIP
    ('pairs', ('anchor', 'positive'), 919)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from matryoshka.data.errors import DataError
from matryoshka.data.local import read_jsonl_records, read_lines

Kind = Literal["pairs", "texts"]
#: File suffixes read locally; ``.gz`` may follow ``.jsonl`` and ``.csv``.
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass
class TrainingData:
    """Rows of texts and their shape: ``pairs`` rows are (anchor, positive, negatives...), ``texts`` rows one text."""

    kind: Kind
    rows: list[tuple[str, ...]]
    columns: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.rows)


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    records = list(read_jsonl_records(path))
    columns = list(dict.fromkeys(key for _, record in records for key in record))
    return columns, records


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    lines = [line for _, line in read_lines(path)]
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    if len(set(columns)) != len(columns):
        raise DataError(f"duplicate column names in the header {columns}", path, 1)
    records = []
    for row in reader:
        if None in row:
            raise DataError(f"more fields than the {len(columns)} header columns", path, reader.line_num)
        records.append((reader.line_num, dict(row)))
    return columns, records


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"cannot read Parquet: {exc}", path) from None
    return list(table.column_names), [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def _read_hub(name: str, split: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
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


def _rows(records: Sequence[tuple[int, dict[str, Any]]], columns: tuple[str, ...], source: str) -> list[tuple[str, ...]]:
    rows = []
    for line, record in records:
        values = []
        for column in columns:
            value = record.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"empty or missing value in column {column!r}", source, line)
            if not isinstance(value, str):
                raise DataError(f"column {column!r} must hold text, got {type(value).__name__} {value!r:.40}", source, line)
            values.append(value)
        rows.append(tuple(values))
    return rows


def load_training_data(source: str | os.PathLike[str], split: str = "train") -> TrainingData:
    """Read training rows from a file, a BEIR directory or a hub data set (``split`` for the latter two).

    Raises:
        DataError: the source is missing, empty, malformed, or its columns fit no known shape.
    """
    from matryoshka.data.beir import resolve_beir_dir

    path = Path(source).expanduser()
    name = str(source)
    if path.is_dir() or (not path.exists() and _suffix(path) not in SUFFIXES and resolve_beir_dir(name) is not None):
        return beir_training_pairs(name, split)
    if path.exists() and not path.is_file():
        raise DataError("not a regular file", path)
    suffix = _suffix(path)
    if path.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv, ".tsv": _read_csv,
                   ".parquet": _read_parquet}
        if suffix not in readers:
            raise DataError(f"unknown file type {suffix or '(none)'!r}; use .jsonl, .csv, .tsv or .parquet", path)
        columns, records = readers[suffix](path)
    elif suffix in SUFFIXES:
        raise DataError("no such file", path)
    else:
        columns, records = _read_hub(name, split)
    if not records:
        raise DataError("no rows: the file is empty", name)
    kind, used = _shape(columns, name)
    return TrainingData(kind=kind, rows=_rows(records, used, name), columns=used, source=name)


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
