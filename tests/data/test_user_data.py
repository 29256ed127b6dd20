"""The user's own training data: shapes, formats, and errors that name the file and the column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.data.user import load_training_data, read_table
from matryoshka.errors import DataError


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_with_negatives_from_jsonl(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"anchor": "q1", "positive": "d1", "negative": "n1", "negative_2": "m1"},
                                         {"anchor": "q2", "positive": "d2", "negative": "n2", "negative_2": "m2"}])
    data = load_training_data(path)
    assert data.kind == "pairs" and data.columns == ("anchor", "positive", "negative", "negative_2")
    assert data.rows[1] == ("q2", "d2", "n2", "m2")


def test_csv_tsv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text('anchor,positive\n"a, quoted",doc one\nq2,doc two\n')
    assert load_training_data(tmp_path / "p.csv").rows == [("a, quoted", "doc one"), ("q2", "doc two")]
    (tmp_path / "t.tsv").write_text("text\nfirst sentence\nsecond sentence\n")
    data = load_training_data(tmp_path / "t.tsv")
    assert data.kind == "texts" and data.rows == [("first sentence",), ("second sentence",)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": ["one", "two", "three"]}), tmp_path / "s.parquet")
    data = load_training_data(tmp_path / "s.parquet")
    assert data.kind == "texts" and data.columns == ("sentence",) and len(data) == 3


def test_txt_and_jsonl_strings_are_texts_by_the_shared_reader(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("first sentence\n\nsecond sentence\n", encoding="utf-8")
    data = load_training_data(tmp_path / "t.txt")
    assert data.kind == "texts" and data.rows == [("first sentence",), ("second sentence",)]
    (tmp_path / "s.jsonl").write_text('"one"\n{"text": "two"}\n', encoding="utf-8")
    assert load_training_data(tmp_path / "s.jsonl").rows == [("one",), ("two",)]
    table = read_table(tmp_path / "t.txt")
    assert table.columns == ["text"] and table.records == [(1, {"text": "first sentence"}), (3, {"text": "second sentence"})]
    (tmp_path / "bytes.tsv").write_bytes(b"text\n\xff\xfe\x00\n")
    with pytest.raises(DataError, match=r"bytes.tsv: not UTF-8 text \(a binary file\?\)"):
        load_training_data(tmp_path / "bytes.tsv")


def test_beir_directory_gives_query_document_pairs(data_dir: Path) -> None:
    data = load_training_data(data_dir / "scifact")
    assert data.kind == "pairs" and len(data) == 919
    assert load_training_data("scifact").rows == data.rows


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"anchor": "q"}\n', "missing column 'positive'"),
        ('{"anchor": "q", "positive": 3}\n', r"line 1: column 'positive' must hold text, got int"),
        ('{"anchor": "q", "positive": "d"}\n{"anchor": "q2"}\n', r"line 2: empty or missing value in column 'positive'"),
        ('{"a": "x", "b": "y"}\n', "cannot tell the shape"),
        ("", "no rows"),
        ('{"anchor": "q", \n', "line 1: invalid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_errors_name_the_file_line_and_column(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_training_data(path)
    assert str(path) in str(info.value)


def test_csv_and_file_errors(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text("anchor,positive\nq,d,extra\n")
    with pytest.raises(DataError, match="wide.csv, line 2: more fields"):
        load_training_data(tmp_path / "wide.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'; use .jsonl, .csv, .tsv, .parquet or .txt"):
        load_training_data(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="no such file"):
        load_training_data(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no such file"):  # a path, not a hub name
        load_training_data(tmp_path / "missing")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: cannot read Parquet"):
        load_training_data(tmp_path / "bad.parquet")


def test_an_unknown_hub_name_fails_fast_offline() -> None:
    with pytest.raises(DataError, match="cannot load hub data set 'nobody/no-such-set'"):
        load_training_data("nobody/no-such-set")
