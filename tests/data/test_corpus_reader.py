"""``--corpus`` reads CSV, TSV, Parquet, JSONL and text files by the column rules of ``train --data``,
and refuses binary files, unknown types and missing text columns with one error line."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from matryoshka.cli.index import index_app
from matryoshka.data.corpus import jsonl_metadata, read_corpus, read_documents, read_text_file
from matryoshka.errors import DataError, InputError
from matryoshka.ingest.stream import _check_documents

runner = CliRunner()
CSV = "id,text,year\nd1,a cat sat on the mat,2019\nd2,\"a dog, barking\",2020\nd3,black holes,\n"


@pytest.fixture(autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(1)


def test_csv_with_a_header_gives_ids_texts_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "small.csv").write_text(CSV, encoding="utf-8")
    assert read_corpus(tmp_path / "small.csv") == (["d1", "d2", "d3"], ["a cat sat on the mat", "a dog, barking", "black holes"])
    docs = read_documents(str(tmp_path / "small.csv"))
    assert [d[2] for d in docs] == [{"year": "2019"}, {"year": "2020"}, None]  # CSV cells are strings; empty is none


def test_tsv_and_gzipped_csv(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("_id\ttitle\ttext\n7\tTitle\tthe body, with a comma\n8\t\tplain\n", encoding="utf-8")
    assert read_corpus(tmp_path / "t.tsv") == (["7", "8"], ["Title the body, with a comma", "plain"])
    with gzip.open(tmp_path / "small.csv.gz", "wt", encoding="utf-8") as f:
        f.write(CSV)
    assert read_corpus(tmp_path / "small.csv.gz")[0] == ["d1", "d2", "d3"]


def test_parquet_keeps_types_and_leaves_out_lists(tmp_path: Path) -> None:
    table = pa.table({"id": [10, 11], "text": ["first doc", "second doc"], "year": [2019, None],
                      "score": [0.5, 1.5], "tags": [["a"], ["b", "c"]]})
    pq.write_table(table, tmp_path / "c.parquet")
    docs = read_documents(tmp_path / "c.parquet")
    assert docs == [("10", "first doc", {"year": 2019, "score": 0.5}), ("11", "second doc", {"score": 1.5})]


def test_a_single_string_column_is_the_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"n": [1, 2], "sentence": ["one", "two"]}), tmp_path / "s.parquet")
    assert read_corpus(tmp_path / "s.parquet") == ([None, None], ["one", "two"])
    (tmp_path / "one.csv").write_text("doc_id,body\nx,hello\ny,world\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"2 columns of text \(doc_id, body\)"):
        read_corpus(tmp_path / "one.csv")
    assert read_corpus(tmp_path / "one.csv", id_column="doc_id") == (["x", "y"], ["hello", "world"])


def test_txt_is_one_text_per_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("first line\n\n  second, with a comma  \r\nid,text\n", encoding="utf-8")
    assert read_corpus(tmp_path / "t.txt") == ([None, None, None], ["first line", "second, with a comma", "id,text"])
    assert [d[:2] for d in read_documents(tmp_path / "t.txt")] == [("0", "first line"), ("1", "second, with a comma"),
                                                                     ("2", "id,text")]
    assert jsonl_metadata(tmp_path / "t.txt", 3) == [None, None, None]


def test_text_and_id_column_options(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("key,id,body,text\nk1,i1,the body,not this\nk2,i2,other body,nor this\n", encoding="utf-8")
    assert read_corpus(tmp_path / "c.csv") == (["i1", "i2"], ["not this", "nor this"])
    docs = read_documents(tmp_path / "c.csv", text_column="body", id_column="key")
    assert docs == [("k1", "the body", {"id": "i1", "text": "not this"}), ("k2", "other body", {"id": "i2", "text": "nor this"})]
    with pytest.raises(DataError, match=r"no column 'content' \(--text-column\); the columns are \['key', 'id', 'body', 'text'\]"):
        read_corpus(tmp_path / "c.csv", text_column="content")
    with pytest.raises(DataError, match=r"no column 'doc' \(--id-column\)"):
        read_corpus(tmp_path / "c.csv", id_column="doc")


def test_jsonl_rules_are_the_same(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = ['"a plain string"', json.dumps({"_id": "a", "title": "T", "text": "body", "lang": "en", "refs": [1]}),
            json.dumps({"id": 5, "text": "five", "lang": "de"})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert read_documents(path) == [("6", "a plain string", None), ("a", "T body", {"lang": "en"}), ("5", "five", {"lang": "de"})]
    assert read_text_file(path) == ([None, "a", "5"], ["a plain string", "T body", "five"])
    explicit = tmp_path / "m.jsonl"  # a metadata object, where there is one, is the whole metadata
    explicit.write_text(json.dumps({"text": "x", "lang": "en", "metadata": {"year": 2020}}) + "\n" + json.dumps({"text": "y"}) + "\n")
    assert [d[2] for d in read_documents(explicit)] == [{"year": 2020}, None]
    assert jsonl_metadata(explicit, 2) == [{"year": 2020}, None]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("random.txt", bytes(range(128, 256)) * 4, r"random.txt: not UTF-8 text \(a binary file\?\)"),
        ("nul.txt", b"text\x00\x01\x02\n", r"nul.txt, line 1: a NUL byte: not a text file"),
        ("nul.csv", b"id,text\n1,a\x00b\n", r"nul.csv, line 2: a NUL byte: not a text file"),
        ("vectors.bin", b"\x00\x01binary", r"vectors.bin: unknown file type '.bin'; use .jsonl, .csv, .tsv, .parquet or .txt"),
        ("fake.parquet", b"PAR1 not really", "fake.parquet: cannot read Parquet"),
        ("nodot", b"text\n", r"unknown file type '\(none\)'"),
        ("no-text.csv", b"id,body,year\n1,x,2020\n", r"no 'text' column and 2 columns of text \(body, year\) among the "
                                                    r"columns \['id', 'body', 'year'\]: name the text with --text-column"),
        ("empty.csv", b"id,text\n", "no rows: the file is empty"),
        ("blank.csv", b"id,text\n1,  \n", r"blank.csv, line 2: empty or missing value in column 'text'"),
        ("dup.csv", b"id,text\n1,a\n1,b\n", r"dup.csv, line 3: duplicate id '1' \(first on line 2\)"),
        ("noid.csv", b"id,text\n,a\n", r"line 2: column 'id': an id must be a non-empty string or integer"),
        ("num.jsonl", b'{"text": 3}\n', r"line 1: column 'text' must hold text, got int"),
        ("list.jsonl", b"[1]\n", r"line 1: expected a JSON object or string, got list"),
        ("meta.jsonl", b'{"text": "x", "metadata": {"a": [1]}}\n', r"line 1: bad metadata"),
    ],
)
def test_errors_are_one_line_and_name_the_file(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_documents(tmp_path / name)
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)


def test_a_float_id_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1.5], "text": ["x"]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f.parquet, line 1: column 'id': an id must be a non-empty string or integer"):
        read_corpus(tmp_path / "f.parquet")


def test_missing_sources_and_beir_sets(tmp_path: Path) -> None:
    for missing in (tmp_path / "nothing.csv", tmp_path / "nothing"):
        with pytest.raises(DataError, match="no such file"):
            read_corpus(missing)
    with pytest.raises(DataError, match="cannot load hub data set 'nobody/no-such-set'"):
        read_corpus("nobody/no-such-set")
    ids, texts = read_corpus("scifact")
    assert len(ids) == 5183 and ids[0] == "4983"
    with pytest.raises(DataError, match="a BEIR set has fixed columns"):
        read_corpus("scifact", text_column="text")


def test_ingest_reads_the_columns(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("doc,body\nx,hello\ny,world\n", encoding="utf-8")
    assert _check_documents(tmp_path / "c.csv", "body", "doc") == {"x": ("hello", None), "y": ("world", None)}
    with pytest.raises(InputError, match="apply to a corpus read from a file"):
        _check_documents([("1", "text")], text_column="body")


def _build(corpus: Path, out: Path, *options: str):
    return runner.invoke(index_app, ["build", "--corpus", str(corpus), "--out", f"faiss://{out}", *options])


def test_index_build_refuses_a_binary_corpus_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "random.txt").write_bytes(os.urandom(64) + b"\xff\xfe")
    result = _build(tmp_path / "random.txt", tmp_path / "ix")
    assert result.exit_code == 1 and "not UTF-8 text" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    (tmp_path / "no-text.csv").write_text("id,body,year\n1,x,2020\n", encoding="utf-8")
    result = _build(tmp_path / "no-text.csv", tmp_path / "ix")
    assert result.exit_code == 1 and "['id', 'body', 'year']" in result.output.replace("\n", "")
    assert not (tmp_path / "ix").exists()


def test_index_build_from_csv_and_parquet(tmp_path: Path) -> None:
    from matryoshka.indexes.faiss import FunnelIndex

    (tmp_path / "small.csv").write_text(CSV, encoding="utf-8")
    result = _build(tmp_path / "small.csv", tmp_path / "csv-index")
    assert result.exit_code == 0, result.output
    assert "3 vectors" in result.output
    index = FunnelIndex.load(tmp_path / "csv-index")
    assert index.ids == ["d1", "d2", "d3"] and index.metadata("d2") == {"year": "2020"}
    search = runner.invoke(index_app, ["search", str(tmp_path / "csv-index"), "a dog, barking", "--k", "1", "--json"])
    assert search.exit_code == 0, search.output
    hit = json.loads(search.stdout)["hits"][0]
    assert (hit["id"], hit["text"]) == ("d2", "a dog, barking")

    pq.write_table(pa.table({"key": ["p", "q"], "body": ["quantum physics", "baking bread"], "year": [2001, 2002]}),
                   tmp_path / "c.parquet")
    result = _build(tmp_path / "c.parquet", tmp_path / "pq-index", "--text-column", "body", "--id-column", "key")
    assert result.exit_code == 0, result.output
    index = FunnelIndex.load(tmp_path / "pq-index")
    assert index.ids == ["p", "q"] and index.metadata("q") == {"year": 2002}



def test_encode_loads_a_parquet_corpus_by_its_columns(tmp_path: Path) -> None:
    from matryoshka.cli.app import app
    from matryoshka.indexes.faiss import FunnelIndex

    pq.write_table(pa.table({"key": ["p", "q"], "body": ["quantum physics", "baking bread"], "year": [2001, 2002]}),
                   tmp_path / "c.parquet")
    url = f"faiss://{tmp_path / 'ix'}"
    alone = runner.invoke(app, ["encode", "--text-column", "body"])
    assert alone.exit_code == 1 and "needs both --corpus and --index" in alone.output
    result = runner.invoke(app, ["encode", "--corpus", str(tmp_path / "c.parquet"), "--index", url,
                                 "--text-column", "body", "--id-column", "key"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 of 2 documents" in result.output
    index = FunnelIndex.load(tmp_path / "ix")
    assert index.ids == ["p", "q"] and index.metadata("p") == {"year": 2001}
