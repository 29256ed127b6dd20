import json

import numpy as np
import pytest
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
)

from matryoshka.data import load_sts
from matryoshka.evaluation import Results, evaluate_sts
from matryoshka.evaluation.sts import spearman_by_dim


@pytest.fixture(scope="module")
def sts_sample(data_dir):
    return load_sts("test")[:300]


@pytest.mark.parametrize("dim", [384, 64, 16])
def test_sts_agrees_with_sentence_transformers_evaluator(model, sts_sample, dim):
    ours = evaluate_sts(model, sts_sample, [dim])[dim]
    evaluator = EmbeddingSimilarityEvaluator(
        [p.sentence1 for p in sts_sample], [p.sentence2 for p in sts_sample], [p.score for p in sts_sample],
        truncate_dim=dim, name="sample",
    )
    theirs = evaluator(model)
    key = next(k for k in theirs if k.endswith("spearman_cosine"))
    assert ours == pytest.approx(theirs[key], abs=1e-4)


def test_truncation_loses_quality_on_real_data(model, sts_sample):
    scores = evaluate_sts(model, sts_sample, [384, 16])
    assert 0.7 < scores[384] < 0.95
    assert scores[16] < scores[384]


def test_spearman_by_dim_on_hand_made_vectors():
    a = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.1, 10.0], [1.0, 1.0, -5.0], [0.0, 1.0, 0.0]])
    out = spearman_by_dim(a, b, [3.0, 2.0, 1.0], [2, 3])
    assert out[2] == pytest.approx(1.0)  # prefix cosines 0.995, 0.707, 0 follow the gold order
    assert out[3] == pytest.approx(0.5)  # the third value reorders the first two


def test_results_round_trip_and_files(tmp_path):
    results = Results("stsb-test", "spearman_cosine",
                      {"base": {384: 0.82, 32: 0.77}, "matryoshka": {384: 0.82, 32: 0.80}},
                      metadata={"seed": 0})
    paths = results.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["matryoshka"] == {"384": 0.82, "32": 0.8}
    assert data["retention"]["base"]["32"] == pytest.approx(0.77 / 0.82, abs=1e-6)
    assert Results.load(paths["json"]).scores == results.scores
    assert "| 32 | 0.7700 | 93.90% | 0.8000 | 97.56% |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_results_reject_reserved_names_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        Results("t", "m", {"metadata": {1: 0.5}})
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Results.load(bad)
    bad.write_text('{"base": {"x": 1}}')
    with pytest.raises(ValueError, match="not a matryoshka results file"):
        Results.load(bad)
