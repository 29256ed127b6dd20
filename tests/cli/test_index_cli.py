"""``matryoshka index`` end to end on 50 short real texts with the packaged model, and ``advise``."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import pytest
import typer
from typer.testing import CliRunner

from matryoshka.cli.index import (
    advise_command,
    fill_ids,
    index_app,
    read_corpus,
    read_text_file,
)
from matryoshka.data.beir import read_queries
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.indexes.faiss.store import read_manifest

SHARED = Path(os.environ.get("MATRYOSHKA_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
pytestmark = pytest.mark.skipif(not (SHARED / "scifact").is_dir(), reason=f"no shared data at {SHARED}")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch) -> None:
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("MATRYOSHKA_DATA", str(SHARED))


@pytest.fixture(scope="module")
def claims() -> dict[str, str]:
    """50 SciFact claims (short real sentences), keyed by claim id."""
    return dict(list(read_queries(SHARED / "scifact" / "queries.jsonl.gz").items())[:50])


@pytest.fixture(scope="module")
def built(tmp_path_factory, claims) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "claims.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in claims.items()), encoding="utf-8")
    result = runner.invoke(
        index_app, ["build", "--corpus", str(corpus), "--out", str(folder / "index"), "--stages", "funnel"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "50 vectors × 384" in result.output
    return folder / "index"


def invoke(*args: str):
    return runner.invoke(index_app, [str(a) for a in args])


@pytest.mark.slow
def test_build_writes_an_index(built: Path, claims) -> None:
    manifest = read_manifest(built)
    assert (manifest["count"], manifest["dim"], manifest["model_name"]) == (50, 384, "all-MiniLM-L6-v2")
    assert manifest["stages"] == "64:float32:1000,full:float32:10"
    assert FunnelIndex.load(built).ids == list(claims)


@pytest.mark.slow
def test_search_finds_an_exact_text(built: Path, claims) -> None:
    doc_id, text = list(claims.items())[7]
    result = invoke("search", built, text, "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["query"] == text
    assert row["hits"][0]["id"] == doc_id and row["hits"][0]["text"] == text
    assert row["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [s["codec"] for s in row["stages"]] == ["float32", "float32"]  # the index default: the funnel preset


@pytest.mark.slow
def test_search_tables_with_preset_and_spec(built: Path) -> None:
    result = invoke(
        "search", built, "vitamin D and bone health", "cancer risk", "--k", "2", "--preset", "binary", "--format", "table"
    )
    assert result.exit_code == 0, result.output
    assert "vitamin D and bone health" in result.stdout and "cancer risk" in result.stdout
    assert "binary" in result.stdout and "stages (2 queries)" in result.stdout
    result = invoke("search", built, "vitamin D", "--stages", "128:int8:20,full:float32:5", "--format", "table")
    assert result.exit_code == 0, result.output
    assert "int8" in result.stdout
    result = invoke("search", built, "vitamin D", "--stages", "64:float32:20,full:float32:10,full:graph:10", "--format", "table")
    assert result.exit_code == 0, result.output
    assert "graph" in result.stdout  # the stage's row in the timings table


@pytest.mark.slow
def test_search_option_errors(built: Path, tmp_path: Path) -> None:
    both = invoke("search", built, "x", "--stages", "exact", "--preset", "exact")
    assert both.exit_code == 1 and "not both" in both.output
    bad = invoke("search", built, "x", "--stages", "64:float32")
    assert bad.exit_code == 2 and "dim:codec:keep" in bad.output
    missing = invoke("search", tmp_path / "nowhere", "x")
    assert missing.exit_code == 1 and "no index at" in missing.output


@pytest.mark.slow
def test_add_and_delete(built: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "copy"
    FunnelIndex.load(built).save(index_dir)
    largest = max(int(i) for i in FunnelIndex.load(index_dir).ids)
    new = tmp_path / "new.txt"
    new.write_text("Whales are large marine mammals.\n\nKoalas sleep most of the day.\n", encoding="utf-8")
    result = invoke("add", index_dir, "--texts", new)
    assert result.exit_code == 0, result.output
    index = FunnelIndex.load(index_dir)
    assert len(index) == 52 and index.ids[-2:] == [str(largest + 1), str(largest + 2)]
    found = json.loads(invoke("search", index_dir, "Koalas sleep most of the day.", "--k", "1", "--json").stdout)
    assert found["hits"][0]["id"] == str(largest + 2)

    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text(json.dumps({"_id": index.ids[0], "text": "again"}) + "\n", encoding="utf-8")
    result = invoke("add", index_dir, "--texts", duplicate)
    assert result.exit_code == 1 and "already in the index" in result.output

    result = invoke("delete", index_dir, index.ids[0], str(largest + 1), "nope")
    assert result.exit_code == 0, result.output
    assert "deleted 2 of 3" in result.output and "not in the index: nope" in result.output
    assert len(FunnelIndex.load(index_dir)) == 50


@pytest.mark.slow
def test_info_prints_the_manifest(built: Path) -> None:
    result = invoke("info", built)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["count"] == 50


def test_build_reports_malformed_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    result = invoke("build", "--corpus", bad, "--out", tmp_path / "ix")
    assert result.exit_code == 1 and "bad.jsonl, line 2: invalid JSON" in result.output.replace("\n", "")
    assert not (tmp_path / "ix").exists()


def test_read_text_file_and_ids(tmp_path: Path) -> None:
    lines = tmp_path / "t.jsonl"
    lines.write_text(
        '"plain string"\n{"id": 5, "title": "T", "text": "body"}\n{"_id": "x", "text": "y"}\n', encoding="utf-8"
    )
    assert read_text_file(lines) == ([None, "5", "x"], ["plain string", "T body", "y"])
    assert fill_ids([None, "5", None], existing=["2", "abc"]) == ["6", "5", "7"]
    assert fill_ids([None, None], existing=[]) == ["0", "1"]
    assert fill_ids([None], existing=["a", "b"]) == ["2"]


def test_read_corpus_from_a_beir_name() -> None:
    ids, texts = read_corpus("scifact")
    assert len(ids) == len(texts) == 5183 and ids[0] == "4983"


@pytest.mark.slow
def test_advise_command_writes_a_report(tmp_path: Path) -> None:
    npl = SHARED / "npl-vaswani"
    from matryoshka.data.beir import load_beir

    full = load_beir(npl)
    queries = dict(list(full.queries.items())[:3])
    keep = {d for q in queries for d in full.qrels[q]} | set(list(full.corpus)[:40])
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": full.corpus[d]}) + "\n" for d in keep))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q in queries for d in full.qrels[q])
    )
    app = typer.Typer()
    app.command()(advise_command)
    result = runner.invoke(
        app, ["--dataset", str(root), "--dims", "384,64", "--target", "0.95", "--out", str(tmp_path / "advice")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert report["exact"]["name"] == "384:float32:10" and report["chosen"] is not None
    assert (tmp_path / "advice" / "advice.md").read_text().startswith("# Funnel advice: mini")
    assert "Funnel advice" in result.stdout


@pytest.mark.slow
def test_build_limit_and_progress(tmp_path: Path, claims) -> None:
    corpus = tmp_path / "claims.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in claims.items()), encoding="utf-8")
    result = invoke("build", "--corpus", corpus, "--out", tmp_path / "ix", "--limit", "7", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert len(FunnelIndex.load(tmp_path / "ix")) == 7
    progress = [line for line in result.output.splitlines() if line.startswith("encoded ")]
    assert progress[-1] == "encoded 7/7" and len(progress) >= 2  # piped: progress lines instead of a bar
    assert "reading" in result.output and "loading model" in result.output


@pytest.fixture(scope="module")
def messy(tmp_path_factory, claims) -> Path:
    """An index whose texts hold newlines and tabs, and whose ids are long."""
    folder = tmp_path_factory.mktemp("messy")
    corpus = folder / "messy.jsonl"
    rows = [
        {"_id": f"document-with-a-long-identifier-{n:03d}", "text": f"first line {n}\nsecond\tline\n\nthird " + t}
        for n, t in enumerate(list(claims.values())[:12])
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("build", "--corpus", corpus, "--out", folder / "index")
    assert result.exit_code == 0, result.output
    return folder / "index"


@pytest.mark.slow
def test_search_piped_prints_tsv(messy: Path) -> None:
    result = invoke("search", messy, "second line", "--k", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "query\trank\tid\tscore\ttext" and len(lines) == 6  # one row per hit, newlines folded
    for rank, line in enumerate(lines[1:], start=1):
        query, got_rank, doc_id, score, text = line.split("\t")
        assert (query, int(got_rank)) == ("second line", rank)
        assert doc_id.startswith("document-with-a-long-identifier-") and float(score) <= 1.0001
        assert text.startswith("first line") and "second line third" in text


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 60])
def test_search_table_keeps_rank_id_and_score_at_any_width(messy: Path, columns: int) -> None:
    result = runner.invoke(
        index_app, ["search", str(messy), "second line", "--k", "5", "--format", "table"], env={"COLUMNS": str(columns)}
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "document-with-a-long-identifier-" in line]
    assert len(rows) == 5  # no text spilled into extra rows
    for rank, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row.strip("│┃| ").split("│")]
        assert cells[0] == str(rank)
        assert cells[1].startswith("document-with-a-long-identifier-") and len(cells[1]) == 35  # whole id
        assert float(cells[2]) <= 1.0001 and len(cells[2]) == 6
    assert all(len(line) <= columns for line in result.stdout.splitlines())
