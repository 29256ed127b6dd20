"""The validated choice of ``matryoshka adapt``: never worse than the rotation on held-out data, a report
whose numbers an independent ``matryoshka evaluate`` reproduces, and any model size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.adapt import (
    AdaptError,
    AdaptReport,
    CandidateScores,
    Judgements,
    LearnedConfig,
    ValidationConfig,
    choose_adaptor,
    fit_rotation,
    judgements_from_pairs,
)
from matryoshka.cli.app import app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _corpus(rows: int = 400, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    raw = (rng.normal(size=(rows, dim)) * np.geomspace(3.0, 0.1, dim)) @ basis.T
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def _report(learned: dict[int, float], rotation: dict[int, float], base: dict[int, float]) -> AdaptReport:
    dims = sorted(learned, reverse=True)
    report = AdaptReport(method="auto", dims=dims, full_dim=dims[0], corpus_vectors=100,
                         validation=ValidationConfig(), config=LearnedConfig())
    for name, by_dim in (("base", base), ("rotation", rotation), ("learned", learned)):
        # 20 held-out queries per candidate, scattered around the given mean
        spread = np.linspace(-0.05, 0.05, 20)
        report.rows[name] = CandidateScores({"ndcg@10": {d: v + spread for d, v in by_dim.items()}})
    return report


def test_the_rule_keeps_the_rotation_unless_the_learned_map_earns_it() -> None:
    base = {64: 0.50, 32: 0.30, 16: 0.15}
    rotation = {64: 0.50, 32: 0.40, 16: 0.30}
    better = _report({64: 0.60, 32: 0.50, 16: 0.35}, rotation, base)
    better.decide("auto")
    assert better.chosen == "learned" and "beats the rotation" in better.reason

    worse_at_16 = _report({64: 0.60, 32: 0.50, 16: 0.28}, rotation, base)
    worse_at_16.decide("auto")
    assert worse_at_16.chosen == "rotation" and "below the rotation at 16 (-2.00)" in worse_at_16.reason

    worse_full = _report({64: 0.49, 32: 0.50, 16: 0.35}, {64: 0.48, 32: 0.40, 16: 0.30}, base)
    worse_full.decide("auto")
    assert worse_full.chosen == "rotation" and "untouched model at full size (-1.00)" in worse_full.reason

    too_small = _report({64: 0.501, 32: 0.401, 16: 0.301}, rotation, base)
    too_small.decide("auto")
    assert too_small.chosen == "rotation" and "average gain of +0.10" in too_small.reason

    noisy = _report({64: 0.51, 32: 0.41, 16: 0.31}, rotation, base)
    noisy.rows["learned"].metrics["ndcg@10"] = {d: v + np.resize([0.3, -0.28], 20) for d, v in
                                                noisy.rows["rotation"].metrics["ndcg@10"].items()}
    noisy.decide("auto")
    assert noisy.chosen == "rotation" and "cannot tell from noise" in noisy.reason

    forced = _report({64: 0.60, 32: 0.50, 16: 0.28}, rotation, base)
    forced.decide("learned")
    assert forced.chosen == "learned" and any("would have saved the rotation" in w for w in forced.warnings)


def test_a_learned_map_that_is_worse_on_validation_is_not_saved() -> None:
    # Labels that point at random documents teach the map nothing true; a large learning rate makes
    # every step worse than the start. The saved adaptor must be the rotation, and the report says why.
    corpus = _corpus()
    rng = np.random.default_rng(1)
    judged = Judgements(rng.normal(size=(60, corpus.shape[1])).astype(np.float32),
                        [[int(rng.integers(len(corpus)))] for _ in range(60)])
    config = LearnedConfig(steps=60, eval_every=20, learning_rate=0.5, threads=1)
    adaptor, report = choose_adaptor(corpus, judged, config=config, validation=ValidationConfig(min_queries=5))
    assert report.chosen == "rotation"
    np.testing.assert_allclose(adaptor.weight, fit_rotation(corpus).weight, atol=1e-6)
    assert adaptor.info["validated"]["chosen"] == "rotation"
    assert report.reason
    # forced, the fit still stops where held-out data says: here at its start, which is the rotation
    forced, forced_report = choose_adaptor(corpus, judged, method="learned", config=config,
                                           validation=ValidationConfig(min_queries=5))
    if forced_report.learned["steps_chosen"] == 0:
        assert forced_report.chosen == "rotation" and "scored above its start" in forced_report.reason
    else:
        assert forced_report.chosen == "learned" and forced.method == "learned" and forced_report.warnings


def test_an_unsupervised_map_that_moves_full_size_search_is_not_saved() -> None:
    # Without labels the check is how many full-size neighbours of held-out texts a prefix keeps; a map
    # that changes full-size geometry (no keep term, large steps) loses some at full size.
    corpus = _corpus(rows=600)
    config = LearnedConfig(steps=40, eval_every=10, keep_weight=0.0, learning_rate=0.05, threads=1)
    adaptor, report = choose_adaptor(corpus, None, config=config)
    assert report.scheme["kind"] == "held-out texts" and report.scheme["held_out_texts"] == 60
    assert report.rows["rotation"].mean("neighbours@10", 32) == 1.0
    assert report.chosen == "rotation"
    np.testing.assert_allclose(adaptor.weight, fit_rotation(corpus).weight, atol=1e-6)


def test_folds_are_grouped_seeded_and_disjoint() -> None:
    few = ValidationConfig().query_folds(23)
    assert len(few) == 5 and sorted(np.concatenate(few).tolist()) == list(range(23))
    assert all(not set(a) & set(b) for i, a in enumerate(few) for b in few[i + 1:])
    many = ValidationConfig().query_folds(800)
    assert len(many) == 1 and len(many[0]) == 160
    assert [f.tolist() for f in ValidationConfig(seed=3).query_folds(23)] == [
        f.tolist() for f in ValidationConfig(seed=3).query_folds(23)]
    with pytest.raises(AdaptError, match="at least 5"):
        ValidationConfig().query_folds(3)


def test_pairs_are_checked_counted_and_never_dropped_silently() -> None:
    corpus = ["alpha doc", "beta doc", "gamma doc"]
    counts: dict[str, int] = {}
    warnings: list[str] = []
    queries, relevant = judgements_from_pairs(
        corpus, [("q1", "alpha doc"), ("q1", "alpha doc"), ("q1", "beta doc"), ("q2", "elsewhere"), ("q3", "gamma doc")],
        counts, warnings)
    assert queries == ["q1", "q3"] and relevant == [[0, 1], [2]]
    assert counts["duplicate_pairs"] == 1 and counts["pairs_not_in_corpus"] == 1
    assert any("1 duplicate" in w for w in warnings) and any("1 of 5 pairs" in w for w in warnings)
    with pytest.raises(AdaptError, match="pair 2 has an empty query"):
        judgements_from_pairs(corpus, [("q", "alpha doc"), (" ", "beta doc")], {}, [])
    with pytest.raises(AdaptError, match="another corpus"):
        judgements_from_pairs(corpus, [("q", "nowhere")], {}, [])


def _query_ids(beir: Path) -> dict[str, str]:
    return {json.loads(line)["text"]: json.loads(line)["_id"] for line in (beir / "queries.jsonl").read_text().splitlines()}


@pytest.mark.slow
def test_report_equals_an_independent_evaluate_and_never_uses_test_queries(tmp_path: Path, tiny_beir: Path) -> None:
    import shutil

    tiny_beir = Path(shutil.copytree(tiny_beir, tmp_path / "beir"))
    out = tmp_path / "adapted"
    result = invoke("adapt", "--corpus", tiny_beir, "--pairs", tiny_beir, "--folds", 1, "--no-refit", "--steps", 100,
                    "--dims", "384,64,16", "--out", out)
    assert result.exit_code == 0, result.output
    assert "chose " in result.output and (out / "adapt-report.md").is_file()
    report = json.loads((out / "adapt-report.json").read_text())
    ids = _query_ids(tiny_beir)
    held = [ids[text] for text in report["scheme"]["held_out"][0]]
    train_ids = {line.split("\t")[0] for line in (tiny_beir / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    test_ids = {line.split("\t")[0] for line in (tiny_beir / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    assert held and set(held) <= train_ids and not set(held) & test_ids
    assert report["scheme"]["labelled_queries"] == len(train_ids)

    train_lines = (tiny_beir / "qrels" / "train.tsv").read_text().splitlines()
    (tiny_beir / "qrels" / "heldout.tsv").write_text(
        "\n".join([train_lines[0], *(line for line in train_lines[1:] if line.split("\t")[0] in held)]) + "\n")
    for model, row in ((out, report["chosen"]), (None, "base")):
        args = ["evaluate", "--task", tiny_beir, "--split", "heldout", "--dims", "384,64,16", "--out", tmp_path / f"eval-{row}"]
        evaluated = invoke(*args, *(["-m", model] if model else []))
        assert evaluated.exit_code == 0, evaluated.output
        scores = json.loads((tmp_path / f"eval-{row}" / "results.json").read_text())
        (label,) = set(scores) - {"task", "metric", "retention", "metrics", "metadata"}
        for dim in ("384", "64", "16"):
            assert scores[label][dim] == pytest.approx(report["validation"][row]["ndcg@10"][dim], abs=1e-4)


@pytest.mark.slow
def test_a_96_dim_model_adapts_end_to_end(tmp_path: Path, tiny_beir: Path, model) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    head = Dense(384, 96, bias=False, activation_function=torch.nn.Identity(),
                 init_weight=torch.from_numpy(np.linalg.qr(np.random.default_rng(0).normal(size=(384, 96)))[0].T.astype(np.float32)))
    small = SentenceTransformer(modules=[*model, head, Normalize()], device="cpu")
    small.save(str(tmp_path / "small"))
    out = tmp_path / "small-adapted"
    result = invoke("adapt", "--corpus", tiny_beir, "--pairs", tiny_beir, "--model", tmp_path / "small", "--steps", 40,
                    "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "adapt-report.json").read_text())
    assert report["dims"] == [96, 64, 32, 16] and report["full_dim"] == 96
    from matryoshka.files import ordinary_mode  # every saved file as readable as any other (model.safetensors was 0600)

    assert {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {
        p.name: ordinary_mode() for p in out.rglob("*") if p.is_file()}
    assert report["scheme"]["kind"] == "cross-validation"
    assert SentenceTransformer(str(out), device="cpu").encode(["a text"]).shape == (1, 96)
    evaluated = invoke("evaluate", "-m", out, "--task", tiny_beir, "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert set(json.loads((tmp_path / "eval" / "results.json").read_text())["small-adapted"]) == {"96", "64", "32", "16"}
