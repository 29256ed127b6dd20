"""Safe dimensions: which prefixes keep a share of full-size quality, stated by adapt's report, its adaptor
file and the adapted model's config.json, and what an adaptor applied at encode time gives."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from matryoshka.adapt import (
    AdaptedModel,
    AdaptError,
    Adaptor,
    adaptor_dimensions,
    choose_adaptor,
    fit_rotation,
    load_adapted,
    model_dimensions,
    save_adapted_model,
    write_matryoshka_dimensions,
)
from matryoshka.errors import InputError
from matryoshka.evaluation.results import Results, safe_dimensions


def _spread(rows: int = 600, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Vectors whose variance decays over directions spread across all coordinates."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    raw = (rng.normal(size=(rows, dim)) * np.geomspace(4.0, 0.05, dim)) @ basis.T
    return raw.astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> tuple[Adaptor, object]:
    return choose_adaptor(_spread(), method="rotation", dims=[32, 16, 8, 4])


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "expected"), [(0.95, [64, 128, 384]), (0.9, [32, 64, 128, 384]), (1.0, [384])])
def test_safe_dimensions_keep_the_share_of_full_size(share, expected):
    scores = {384: 0.80, 128: 0.78, 64: 0.765, 32: 0.73, 16: 0.60}
    assert safe_dimensions(scores, share) == expected
    for dim in expected:
        assert scores[dim] >= share * scores[384]


def test_safe_dimensions_list_a_dim_even_when_a_larger_one_falls_short():
    assert safe_dimensions({256: 1.0, 128: 0.90, 64: 0.96}) == [64, 256]


@pytest.mark.parametrize(("scores", "share", "needle"), [
    ({384: 0.8}, 0.0, "(0, 1]"),
    ({384: 0.8}, 1.5, "(0, 1]"),
    ({}, 0.95, "no per-dimension scores"),
    ({384: 0.0, 64: 0.0}, 0.95, "positive"),
    ({384: float("nan"), 64: 0.5}, 0.95, "positive"),
])
def test_safe_dimensions_refuse_what_has_no_share(scores, share, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("]", r"\]")):
        safe_dimensions(scores, share)


def test_results_file_gives_safe_dimensions(tmp_path):
    results = Results("scifact", "ndcg@10", {"a": {384: 0.6, 64: 0.58, 32: 0.5}, "b": {384: 0.6, 64: 0.4}})
    results.save(tmp_path)
    loaded = Results.load(tmp_path / "results.json")
    assert loaded.safe_dimensions("a") == [64, 384]
    assert loaded.safe_dimensions("b") == [384]
    assert loaded.safe_dimensions("a", share=0.8) == [32, 64, 384]
    with pytest.raises(InputError, match="2 models"):
        loaded.safe_dimensions()
    with pytest.raises(InputError, match="no model 'c'"):
        loaded.safe_dimensions("c")
    assert Results("stsb", "spearman", {"only": {384: 0.8, 16: 0.1}}).safe_dimensions() == [384]


# -- adapt's report, its adaptor file, the adapted model -----------------------------------------


def test_report_states_the_chosen_candidates_safe_dimensions(fitted, tmp_path):
    adaptor, report = fitted
    scores = {int(d): v for d, v in report.chosen_scores().items()}
    expected = safe_dimensions(scores)
    assert report.matryoshka_dimensions == expected
    assert 1 < len(expected) < len(report.dims)  # the data are built so that some prefixes fall short
    json_path, md_path = report.save(tmp_path)
    stated = json.loads(json_path.read_text())
    assert stated["matryoshka_dimensions"] == expected and stated["safe_share"] == 0.95
    assert f"Safe dimensions (`matryoshka_dimensions`): {', '.join(map(str, expected))}" in md_path.read_text()
    assert replace(report, safe_share=0.5).matryoshka_dimensions == safe_dimensions(scores, 0.5) != expected


def test_adaptor_file_carries_the_safe_dimensions(fitted, tmp_path):
    adaptor, report = fitted
    path = adaptor.save(tmp_path / "api.safetensors")
    reloaded = Adaptor.load(path)
    assert reloaded.info["validated"]["matryoshka_dimensions"] == report.matryoshka_dimensions
    assert adaptor_dimensions(reloaded) == report.matryoshka_dimensions
    assert adaptor_dimensions(reloaded, share=0.5) == safe_dimensions(
        {int(d): v for d, v in report.chosen_scores().items()}, 0.5)


def test_adaptor_without_stored_scores_reads_the_report_beside_it(fitted, tmp_path):
    adaptor, report = fitted
    bare = Adaptor(adaptor.weight, adaptor.method, info={})  # an adaptor file saved before reports had scores
    path = bare.save(tmp_path / "api.safetensors")
    assert adaptor_dimensions(Adaptor.load(path), path) is None  # no report yet
    report.save(tmp_path, stem="api.adapt-report")  # what `adapt --vectors --out api.safetensors` writes
    assert adaptor_dimensions(Adaptor.load(path), path) == report.matryoshka_dimensions
    (tmp_path / "api.adapt-report.json").write_text('{"chosen": "rotation"}')
    with pytest.raises(AdaptError, match="not a readable adapt report"):
        adaptor_dimensions(Adaptor.load(path), path)


def test_saved_adapted_model_states_them_in_config_json(model, tmp_path):
    from sentence_transformers import SentenceTransformer

    adaptor, report = choose_adaptor(_spread(dim=384), method="rotation")  # any 384-d map will do here
    assert report.matryoshka_dimensions is not None
    target = save_adapted_model(model, adaptor, tmp_path / "adapted", report=report)
    config = json.loads((target / "config.json").read_text())
    assert config["matryoshka_dimensions"] == report.matryoshka_dimensions == model_dimensions(target)
    assert config["model_type"] == "bert"  # the transformer's own keys stay
    texts = ["a cat on a mat", "stocks fell sharply", "the heart pumps blood"]
    plain = SentenceTransformer(str(target), device="cpu")  # still a plain sentence-transformers model
    np.testing.assert_allclose(plain.encode(texts), adaptor.apply(model.encode(texts)), atol=1e-5)


def test_matryoshka_dimensions_in_config_json_are_checked(tmp_path):
    write_matryoshka_dimensions(tmp_path, [64, 384, 128])
    assert json.loads((tmp_path / "config.json").read_text()) == {"matryoshka_dimensions": [64, 128, 384]}
    assert model_dimensions(tmp_path / "nowhere") is None
    (tmp_path / "config.json").write_text('{"matryoshka_dimensions": [64, "big"]}')
    with pytest.raises(AdaptError, match="positive integers"):
        model_dimensions(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(AdaptError, match="JSON object"):
        write_matryoshka_dimensions(tmp_path, [64])


def test_adapt_vectors_command_states_them(tmp_path):
    vectors = tmp_path / "api.npy"
    np.save(vectors, _spread())
    out = tmp_path / "api.safetensors"
    run = subprocess.run([sys.executable, "-m", "matryoshka.cli", "adapt", "--vectors", str(vectors), "--out", str(out),
                          "--method", "rotation", "--dims", "32,16,8,4"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "api.adapt-report.json").read_text())
    assert report["matryoshka_dimensions"] == safe_dimensions(
        {int(d): v for d, v in report["validation"]["rotation"]["neighbours@10"].items()})
    assert load_adapted(_FixedWidth(48), out, "api").matryoshka_dimensions == report["matryoshka_dimensions"]


# -- an adaptor applied at encode time -----------------------------------------------------------


class _FixedWidth:
    """A stand-in model that only states its width (for loading, not encoding)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, sentences: list[str], /, *, batch_size: int, convert_to_numpy: bool,
               show_progress_bar: bool | None, prompt_name: str | None) -> np.ndarray:
        raise AssertionError("not encoded here")

    def get_embedding_dimension(self) -> int:
        return self.dim


def test_adapted_model_is_the_adaptor_applied_to_the_models_vectors(model):
    texts = ["a cat on a mat", "stocks fell sharply", "the heart pumps blood", "rain over the hills"]
    base = model.encode(texts, convert_to_numpy=True)
    adaptor = fit_rotation(base @ np.random.default_rng(1).normal(size=(384, 384)).astype(np.float32))
    adapted = AdaptedModel(model, adaptor, "all-MiniLM-L6-v2", [64, 384])
    out = adapted.encode(texts)
    np.testing.assert_allclose(out, adaptor.apply(base), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(adapted.encode(texts[0]), out[0], atol=1e-6)
    assert adapted.encode([]).shape == (0, 384)
    assert adapted.get_embedding_dimension() == 384
    assert adapted.label.startswith("all-MiniLM-L6-v2+adaptor@") and adapted.matryoshka_dimensions == [64, 384]
    other = AdaptedModel(model, fit_rotation(base), "all-MiniLM-L6-v2")
    assert other.label != adapted.label  # another adaptor is another model


def test_adaptor_must_fit_the_model():
    with pytest.raises(AdaptError, match="maps 48-d vectors, the model 'api' gives 32-d"):
        AdaptedModel(_FixedWidth(32), fit_rotation(_spread()), "api")
