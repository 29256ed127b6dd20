"""What a new user hit with ``index build``, ``index search`` and ``advise`` (issue 32), on real files and models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from matryoshka.cli.app import app
from matryoshka.errors import IndexCorruptError
from matryoshka.indexes.faiss import FunnelIndex

torch.set_num_threads(1)
runner = CliRunner()


def _corpus(path: Path, count: int = 5) -> Path:
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"a short sentence number {i}"}) + "\n"
                            for i in range(count)), encoding="utf-8")
    return path


def test_build_refuses_an_index_of_another_model_before_encoding(tmp_path: Path, monkeypatch) -> None:
    """The refusal used to come after the whole corpus was encoded."""
    import matryoshka.ingest.rebuild as rebuild

    out = tmp_path / "index"
    with FunnelIndex.open(out, dim=384, model_name="someone/other-model") as index:
        index.upsert(["x"], np.ones((1, 384), dtype=np.float32), ["kept"])
    encoded: list[int] = []
    real = rebuild.encode_chunks

    def counting(model, texts, batch_size=64, on_progress=None):
        encoded.append(len(texts))
        return real(model, texts, batch_size, on_progress=on_progress)

    monkeypatch.setattr(rebuild, "encode_chunks", counting)
    result = runner.invoke(app, ["index", "build", "--corpus", str(_corpus(tmp_path / "c.jsonl")), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert encoded == []  # refused before encoding a single text
    assert "someone/other-model" in result.output and "--model someone/other-model" in result.output
    assert FunnelIndex.load(out).ids == ["x"]

    other_dim = tmp_path / "index16"
    FunnelIndex.open(other_dim, dim=16).close()  # no model recorded, but 16-dim vectors
    result = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(other_dim)])
    assert result.exit_code == 1 and "16-dim" in result.output and encoded == [], result.output

    result = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "new")])
    assert result.exit_code == 0 and encoded == [5], result.output  # a new index is built as before


def test_a_directory_without_its_manifest_says_so(tmp_path: Path) -> None:
    out = tmp_path / "index"
    built = runner.invoke(app, ["index", "build", "--corpus", str(_corpus(tmp_path / "c.jsonl")), "--out", str(out)])
    assert built.exit_code == 0, built.output
    (out / "manifest.json").unlink()

    result = runner.invoke(app, ["index", "search", str(out), "a sentence"])
    assert result.exit_code == 1
    assert "manifest.json is missing" in result.output and "vectors.bin" in result.output, result.output
    assert "no index at" not in result.output
    with pytest.raises(IndexCorruptError, match="manifest.json is missing"):
        FunnelIndex.open(out, create=False)
    rebuild = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(out)])
    assert rebuild.exit_code == 1 and "manifest.json is missing" in rebuild.output  # refused before encoding

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no index at"):  # nothing there is still "no index"
        FunnelIndex.open(empty, create=False)


@pytest.fixture
def claims_beir(tmp_path: Path, data_dir: Path) -> Path:
    """A BEIR directory of 150 short SciFact claims as documents; 6 of them are also the queries that
    find themselves (enough documents for funnels that keep 100, short enough to encode quickly)."""
    from matryoshka.data.beir import read_queries

    claims = list(read_queries(data_dir / "scifact" / "queries.jsonl.gz").items())[:150]
    root = tmp_path / "claims"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"c{i}", "text": t}) + "\n" for i, t in claims))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in claims[:6]))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tc{i}\t1\n" for i, _ in claims[:6]))
    return root


@pytest.mark.slow
def test_advise_piped_at_80_columns_keeps_every_config_whole(claims_beir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["advise", "--dataset", str(claims_beir), "--dims", "384,64", "--target", "0.9", "--out", str(tmp_path / "a.json")],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert any(len(name) > 25 for name in names)  # funnels such as 64:binary:1000,full:float32:10
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if line.startswith("│")]
    keys = [row.split("│")[1].strip().removesuffix("(exact)").strip() for row in rows]
    assert sorted(keys) == sorted(names)  # every config whole, one line each (it showed "16:bina…")
    assert "…" not in "".join(rows)
    assert "Left out at 80 columns" in result.stdout


@pytest.mark.slow
def test_encode_corpus_into_an_index_behaves_as_index_build(tmp_path: Path, model) -> None:
    """`encode --corpus --index` printed nothing when piped and refused --backend, which `index build` takes."""
    corpus = _corpus(tmp_path / "docs.jsonl", count=30)
    result = runner.invoke(app, ["encode", "--corpus", str(corpus), "--index", f"faiss://{tmp_path / 'idx'}",
                                 "--backend", "onnx", "--write-batch", "10"])
    assert result.exit_code == 0, result.output
    assert "encoded 10/30" in result.output and "encoded 30/30" in result.output  # CliRunner's output is no terminal
    expected = model.encode(["a short sentence number 3"], normalize_embeddings=True)
    with FunnelIndex.open(tmp_path / "idx") as index:
        assert len(index) == 30
        (hit,) = index.search(expected, k=1, stages=index.stages)[0]
    assert hit.id == "d3" and hit.score > 0.999  # ONNX gives the same model's vectors
    refused = runner.invoke(app, ["encode", "--corpus", str(corpus), "--index", f"faiss://{tmp_path / 'x'}",
                                  "--layers", "3"])
    assert refused.exit_code == 1 and "--layers applies to texts" in refused.output
