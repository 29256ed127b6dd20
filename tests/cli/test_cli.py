import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli.app import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_encode_prints_unit_vectors_at_the_asked_dim():
    result = invoke("encode", "a cat sits on the mat", "stocks fell", "--dim", 32)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(len(r) == 32 for r in rows)
    assert np.linalg.norm(rows[0]) == pytest.approx(1.0, abs=1e-4)


def test_encode_file_to_npy_and_binary(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\n\nsecond line\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    result = invoke("encode", "--input", texts, "--dim", 64, "--precision", "ubinary", "--output", out)
    assert result.exit_code == 0, result.output
    vectors = np.load(out, allow_pickle=False)
    assert vectors.shape == (2, 8) and vectors.dtype == np.uint8


@pytest.mark.parametrize("args,message", [
    (["x", "--dim", "0"], "dim must be positive"),
    (["x", "--dim", "999"], "larger than the model"),
    (["x", "--precision", "int4"], "precision must be one of"),
    ([], "give texts"),
    (["--input", "/nonexistent/file.txt"], "no such file"),
    (["x", "--model", "/nonexistent/model-dir"], "could not load model"),
])
def test_encode_errors_are_clear(args, message):
    result = invoke("encode", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_evaluate_stsb_writes_json_markdown_and_plot(tmp_path):
    result = invoke("evaluate", "--task", "stsb", "--dims", "384,32", "--limit", 60, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["all-MiniLM-L6-v2"]) == {"384", "32"}
    assert data["retention"]["all-MiniLM-L6-v2"]["384"] == 1.0
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert "retention" in (tmp_path / "results.md").read_text()


def test_evaluate_defaults_to_each_models_own_ladder(tmp_path):
    """Without --dims a model narrower than 384 is scored at its full size and the ladder below it."""
    from matryoshka.models.loading import build_static_model

    build_static_model(embedding_dim=96, seed=0).save(str(tmp_path / "narrow"))
    result = invoke("evaluate", "-m", tmp_path / "narrow", "-m", "all-MiniLM-L6-v2", "--limit", 40,
                    "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(data["narrow"]) == {"96", "64", "32", "16"}
    assert set(data["all-MiniLM-L6-v2"]) == {"384", "256", "128", "64", "32", "16"}
    assert data["retention"]["narrow"]["96"] == 1.0
    assert data["metadata"]["dims"] == [384, 256, 128, 96, 64, 32, 16]


def test_dimension_ladder_starts_at_the_full_size():
    from matryoshka.embeddings.vectors import dimension_ladder
    from matryoshka.errors import DimensionError

    assert dimension_ladder(768) == [768, 512, 256, 128, 64, 32, 16]
    assert dimension_ladder(384) == [384, 256, 128, 64, 32, 16]
    assert dimension_ladder(100) == [100, 64, 32, 16]
    assert dimension_ladder(8) == [8]
    with pytest.raises(DimensionError):
        dimension_ladder(0)


def test_evaluate_bad_dims():
    result = invoke("evaluate", "--dims", "384,abc")
    assert result.exit_code != 0
    assert "comma-separated integers" in result.output


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path):
    model_dir = tmp_path / "mrl"
    result = invoke("train", "--out", model_dir, "--max-steps", 2, "--max-examples", 64, "--batch-size", 16,
                    "--weights", "1,1,1,2,4,4")
    assert result.exit_code == 0, result.output
    assert (model_dir / "modules.json").exists()
    result = invoke("evaluate", "--model", model_dir, "--dims", "384,64", "--limit", 40, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "mrl" in json.loads((tmp_path / "eval" / "results.json").read_text())


def test_train_refuses_bad_settings(tmp_path):
    result = invoke("train", "--out", tmp_path / "m", "--dims", "128,64")
    assert result.exit_code == 1 and "full size" in result.output
    result = invoke("train", "--out", tmp_path / "m", "--weights", "1,2")
    assert result.exit_code == 1 and "weights" in result.output


@pytest.mark.slow
def test_compare_end_to_end_on_a_tiny_budget(tmp_path, tiny_beir, monkeypatch):
    common = ("--out", tmp_path, "--max-steps", 2, "--max-examples", 32, "--eval-limit", 40, "--retrieval", tiny_beir,
              "--cache", tmp_path / "cache")
    finetuned = {"standard", "matryoshka", "nli-standard", "nli-matryoshka", "sts-standard", "sts-matryoshka"}
    # A run stopped after the transformer recipes (here: in the static step) leaves what it finished ...
    import matryoshka.experiments.compare.run as compare_run

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(compare_run, "static_rows", stopped)
        assert invoke("compare", *common).exit_code != 0
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["metadata"]["partial"] is True and finetuned <= set(partial)
    # ... and the same command with --keep-previous trains only what is missing.
    result = invoke("compare", *common, "--keep-previous")
    assert result.exit_code == 0, result.output
    assert "{'loss'" not in result.output and "Loading weights" not in result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert "partial" not in data["metadata"] and set(data["metadata"]["kept_from_previous_run"]) == finetuned
    adaptors = {"base+rotation", "adaptor-standard", "adaptor-matryoshka"}
    static = {"static-distill", "static-standard", "static-matryoshka"}
    expected = {"base"} | finetuned | static
    assert expected | adaptors <= set(data)
    assert data["metadata"]["runs"]["sts-matryoshka"]["config"]["objective"] == "sts"
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert {"base", "standard", "matryoshka", "sts-standard", "sts-matryoshka"} | adaptors <= set(retrieval)
    assert set(retrieval["metrics"]) >= {"ndcg@10", "recall@100"}
    assert retrieval["metadata"]["adaptors"]["train_pairs"] > 0
    assert all(set(data[m]) == {"384", "256", "128", "64", "32", "16"} for m in expected - static)
    assert all(set(data[m]) == {"256", "128", "64", "32", "16"} for m in static)  # model2vec's PCA to 256
    assert data["metadata"]["runs"]["matryoshka"]["steps"] == 2
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.png").exists()
    # Only the Matryoshka weighting changes: the second run retrains that one model and keeps the rest.
    again = invoke("compare", *common, "--weights", "1,1,1,1,1,1", "--keep-previous", "--no-nli", "--no-sts", "--no-static")
    assert again.exit_code == 0, again.output
    meta = json.loads((tmp_path / "results.json").read_text())["metadata"]
    assert meta["kept_from_previous_run"] == sorted(expected - {"base", "matryoshka"})
    quick = invoke("compare", "--quick", "--out", tmp_path / "quick", "--eval-limit", 40, "--retrieval", tiny_beir,
                   "--cache", tmp_path / "cache", "--max-steps", 2, "--max-examples", 32)
    assert quick.exit_code == 0, quick.output
    sts_rows = json.loads((tmp_path / "quick" / "results.json").read_text())
    assert {"base", "top-layer-standard", "top-layer-matryoshka"} | adaptors <= set(sts_rows)
    assert not {"standard", "matryoshka"} & set(sts_rows)  # no full fine-tune in a quick run
    assert sts_rows["metadata"]["recipes"]["top_layer"]["max_steps"] == 2
    rows = json.loads((tmp_path / "quick" / "retrieval.json").read_text())
    assert {"base", "base+rotation", "base+adapt", "adaptor-standard", "adaptor-matryoshka"} == {k for k in rows if k not in (
        "task", "metric", "retention", "metrics", "metadata")}
    assert rows["metadata"]["adaptors"]["adapt"]["chosen"] in {"rotation", "learned"}  # what `adapt` would save
    # The models it fitted are saved, and a saved one scores what its row says.
    saved = sts_rows["metadata"]["adaptors"]["saved"]
    assert set(saved) == {"base+rotation", "adaptor-standard", "adaptor-matryoshka", "top-layer-standard",
                          "top-layer-matryoshka"}
    assert (Path(rows["metadata"]["adaptors"]["saved"]["base+adapt"]) / "adapt-report.json").is_file()
    from matryoshka.data import load_sts
    from matryoshka.evaluation import evaluate_sts
    from matryoshka.models.loading import load_model

    for label in ("adaptor-matryoshka", "top-layer-matryoshka"):
        again = evaluate_sts(load_model(saved[label]), load_sts("test")[:40], [384, 32])
        assert abs(again[32] - sts_rows[label]["32"]) < 1e-4 and abs(again[384] - sts_rows[label]["384"]) < 1e-4
    assert meta["runs"]["matryoshka"]["config"]["weights"] == [1, 1, 1, 1, 1, 1]
    assert meta["runs"]["standard"] == data["metadata"]["runs"]["standard"]


def test_compare_refuses_weights_that_do_not_match_the_dims(tmp_path):
    result = invoke("compare", "--out", tmp_path, "--weights", "1,2")
    assert result.exit_code == 2 and "needs 6 non-negative numbers" in result.output
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_train_on_a_users_file_infers_the_objective(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"question {i} about cats", "positive": f"cats answer {i}"}) + "\n"
                             for i in range(8)))
    result = invoke("train", "--data", pairs, "--max-steps", 1, "--batch-size", 4, "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "retrieval model" in result.output and (tmp_path / "m" / "modules.json").is_file()
    broken = tmp_path / "broken.csv"
    broken.write_text("anchor,positive\nq,\n")
    result = invoke("train", "--data", broken, "--out", tmp_path / "x")
    assert result.exit_code == 1 and "broken.csv, line 2: empty or missing value in column 'positive'" in result.output


def test_help_loads_neither_torch_nor_an_http_client():
    """``matryoshka --help`` and a command's ``--help`` answer in a fraction of a second: nothing heavy is imported."""
    import subprocess
    import sys

    script = ("import sys, runpy; sys.argv = ['matryoshka', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('matryoshka.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "heavy = sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'httpx', 'faiss') if m in sys.modules)\n"
              "print('HEAVY', heavy)")
    for args in (["--help"], ["serve", "--help"], ["index", "--help"]):
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120).stdout
        assert "Usage" in out and out.strip().splitlines()[-1] == "HEAVY []", (args, out[-300:])
