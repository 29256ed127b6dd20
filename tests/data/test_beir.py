"""BEIR loader: the real local SciFact and NPL, name resolution, and malformed files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from matryoshka.data import beir
from matryoshka.data.beir import BeirDataset, load_beir
from matryoshka.errors import DataError

SHARED = Path(os.environ.get("MATRYOSHKA_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
needs_data = pytest.mark.skipif(not (SHARED / "scifact").is_dir(), reason=f"no shared data at {SHARED}")


@pytest.fixture
def local_data(monkeypatch) -> Path:
    monkeypatch.setenv("MATRYOSHKA_DATA", str(SHARED))
    return SHARED


@needs_data
def test_scifact_test_split(local_data: Path) -> None:
    data = load_beir("scifact")
    assert isinstance(data, BeirDataset)
    assert (len(data.corpus), len(data.queries), data.name, data.split) == (5183, 300, "scifact", "test")
    assert sum(len(docs) for docs in data.qrels.values()) == 339
    assert set(data.queries) == set(data.qrels)
    assert data.corpus["4983"].startswith(
        "Microstructural development of human newborn cerebral white matter assessed in vivo"
    )
    assert (
        "white matter assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations of the architecture"
        in data.corpus["4983"]
    )
    assert data.queries["1"] == "0-dimensional biomaterials show inductive properties."
    assert data.qrels["1"] == {"31715818": 1}


@needs_data
def test_scifact_train_split_and_aliases(local_data: Path) -> None:
    train = load_beir("BeIR/scifact", split="train")
    assert (len(train.queries), sum(len(d) for d in train.qrels.values())) == (809, 919)
    assert load_beir(local_data / "scifact").name == "scifact"


@needs_data
def test_npl(local_data: Path) -> None:
    data = load_beir("npl")
    assert (len(data.corpus), len(data.queries), sum(len(d) for d in data.qrels.values())) == (11429, 93, 2083)
    assert data.name == "npl"
    assert data.corpus["1"].startswith("compact memories have flexible capacities")  # empty title: no leading space
    assert data.queries["1"] == "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES"


@needs_data
def test_unknown_split_names_the_available_ones(local_data: Path) -> None:
    with pytest.raises(DataError, match=r"no qrels for split 'dev' \(available: test, train\)"):
        load_beir("scifact", split="dev")


def test_names_go_to_the_hub_without_local_data(monkeypatch) -> None:
    monkeypatch.delenv("MATRYOSHKA_DATA", raising=False)
    calls = []
    monkeypatch.setattr(beir, "_load_hub", lambda name, split: calls.append((name, split)) or "hub")
    assert load_beir("scifact", split="dev") == "hub"
    assert calls == [("scifact", "dev")]


def test_known_name_missing_under_local_data_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MATRYOSHKA_DATA", str(tmp_path))
    with pytest.raises(DataError, match="has no npl-vaswani/ directory"):
        load_beir("npl")


# -- malformed files ---------------------------------------------------------------------------


def write_beir(
    root: Path, corpus: str | None = None, queries: str | None = None, qrels: str | None = None, gz: bool = False
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = (
        corpus if corpus is not None else '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "text": "two"}\n'
    )
    queries = queries if queries is not None else '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "unjudged"}\n'
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td2\t1\n"
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(corpus)
    else:
        (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text(queries, encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_small_directory(tmp_path: Path, gz: bool) -> None:
    data = load_beir(write_beir(tmp_path / "tiny", gz=gz))
    assert data.corpus == {"d1": "T one", "d2": "two"}
    assert data.queries == {"q1": "first"}  # only judged queries
    assert data.qrels == {"q1": {"d2": 1}}
    assert data.name == "tiny"


def test_blank_lines_and_integer_ids_are_accepted(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "ints",
        corpus='{"_id": 7, "text": "seven"}\n\n{"_id": "8", "title": null, "text": "eight"}\n',
        queries='{"_id": 1, "text": " q "}\n',
        qrels="query-id\tcorpus-id\tscore\n1\t7\t2\n\n1\t8\t0\n",
    )
    data = load_beir(root)
    assert data.corpus == {"7": "seven", "8": "eight"}
    assert data.queries == {"1": "q"}
    assert data.qrels == {"1": {"7": 2, "8": 0}}


@pytest.mark.parametrize(
    ("kwargs", "file", "line", "message"),
    [
        ({"corpus": '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'}, "corpus.jsonl", 2, "invalid JSON"),
        ({"corpus": '{"text": "no id"}\n'}, "corpus.jsonl", 1, "missing field '_id'"),
        ({"corpus": '{"_id": "d1"}\n'}, "corpus.jsonl", 1, "missing field 'text'"),
        ({"corpus": '{"_id": "d1", "text": ["a"]}\n'}, "corpus.jsonl", 1, "'text' must be a string"),
        ({"corpus": '{"_id": "d1", "text": "a", "title": 3}\n'}, "corpus.jsonl", 1, "'title' must be a string"),
        (
            {"corpus": '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'},
            "corpus.jsonl",
            2,
            "duplicate document id 'd1'",
        ),
        ({"corpus": '["d1", "text"]\n'}, "corpus.jsonl", 1, "expected a JSON object"),
        (
            {"queries": '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n'},
            "queries.jsonl",
            2,
            "duplicate query id",
        ),
        ({"qrels": "qid\tdid\tscore\nq1\td1\t1\n"}, "test.tsv", 1, "expected the header"),
        ({"qrels": ""}, "test.tsv", 1, "empty qrels file"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, "test.tsv", 2, "expected 3 tab-separated fields, got 2"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n"}, "test.tsv", 3, "score must be an integer"),
        (
            {"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td2\t1\n"},
            "test.tsv",
            3,
            "query id 'q9' has judgements but no text",
        ),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, kwargs: dict, file: str, line: int, message: str) -> None:
    root = write_beir(tmp_path / "bad", **kwargs)
    with pytest.raises(DataError, match=message) as caught:
        load_beir(root)
    assert caught.value.path is not None and caught.value.path.name == file
    assert caught.value.line == line
    assert f"{file}, line {line}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_files(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "nocorpus")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing data file corpus.jsonl\[.gz\]"):
        load_beir(root)
    root = write_beir(tmp_path / "noqrels")
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match="no qrels for split 'test'"):
        load_beir(root)


def test_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "gz",
        corpus="".join(json.dumps({"_id": str(i), "text": "x" * 50}) + "\n" for i in range(2000)),
        gz=True,
    )
    data = (root / "corpus.jsonl.gz").read_bytes()
    (root / "corpus.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corpus.jsonl.gz"):
        load_beir(root)
