"""``compare --keep-previous``: which earlier rows may be carried over, and which are refused."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from matryoshka.evaluation import Results
from matryoshka.experiments.compare import (
    CompareConfig,
    _previous_results,
    _same_training,
    _train_pair,
)
from matryoshka.models.loading import resolve_model_name
from matryoshka.training.train import TrainConfig


def write_previous(config: CompareConfig, pairs: int = 100, **recipe_changes) -> None:
    nli = json.loads(json.dumps(asdict(replace(config.nli, **recipe_changes))))
    nli["distill_loss"] = "cosine"  # a field NLI ignores; an older default must not block reuse
    scores = {label: {384: 0.8, 32: 0.7} for label in ("base", "nli-standard", "nli-matryoshka")}
    meta = {"base_model": resolve_model_name(None), "seed": config.seed, "dims": list(config.dims),
            "quick": False, "data": {"sts_test_pairs": pairs}, "recipes": {"nli": nli},
            "runs": {"nli-standard": {"steps": 203}, "nli-matryoshka": {"steps": 203}}}
    Results(task="stsb-test", metric="spearman_cosine", scores=scores, metadata=meta).save(config.out)


def test_keeps_rows_of_an_identical_recipe(tmp_path):
    config = CompareConfig(out=tmp_path, run_nli=False, run_static=True, keep_previous=True)
    write_previous(config)
    kept, reusable = _previous_results(config, 100)
    assert sorted(kept) == ["nli-matryoshka", "nli-standard"]
    assert kept["nli-standard"][0][32] == pytest.approx(0.7) and kept["nli-standard"][1] == {"steps": 203}
    assert reusable == {}


def test_refuses_a_different_recipe_eval_set_or_missing_file(tmp_path):
    config = CompareConfig(out=tmp_path, run_nli=False, keep_previous=True)
    with pytest.raises(ValueError, match="no previous"):
        _previous_results(config, 100)
    write_previous(config, learning_rate=1e-3)
    with pytest.raises(ValueError, match="recipe"):
        _previous_results(config, 100)
    write_previous(config)
    with pytest.raises(ValueError, match="STS-B test pairs"):
        _previous_results(config, 40)


def variant_record(config: TrainConfig, **changes) -> dict:
    return json.loads(json.dumps(asdict(replace(config, **changes))))


def test_reuses_only_models_whose_training_settings_are_unchanged(tmp_path):
    """A new Matryoshka weighting retrains the Matryoshka model only: the standard loss reads no weights."""
    config = CompareConfig(out=tmp_path, keep_previous=True)
    old = replace(config.distill, dims=config.dims, weights=(1, 1, 1, 1, 1, 1))
    previous = {
        "standard": ({384: 0.82}, {"steps": 792, "config": variant_record(old, matryoshka=False, show_progress_bar=False)}),
        "matryoshka": ({384: 0.81}, {"steps": 792, "config": variant_record(old, matryoshka=True)}),
    }
    variant = replace(config.distill, dims=config.dims)
    assert _same_training(previous["standard"][1]["config"], replace(variant, matryoshka=False))
    assert not _same_training(previous["matryoshka"][1]["config"], replace(variant, matryoshka=True))
    assert not _same_training(None, variant)
    assert not _same_training(variant_record(old, matryoshka=False, learning_rate=1e-3), replace(variant, matryoshka=False))

    # Both variants unchanged: nothing is trained, no data or teacher is needed.
    previous["matryoshka"] = ({384: 0.81}, {"steps": 792, "config": variant_record(variant, matryoshka=True)})
    logged = []
    scores, runs = _train_pair("distill", "transformer", config.distill, config, test=None, teacher=None,
                               log=logged.append, datasets={}, previous=previous)
    assert scores == {"standard": {384: 0.82}, "matryoshka": {384: 0.81}}
    assert runs["standard"]["steps"] == 792 and len(logged) == 2 and all("kept" in line for line in logged)


def test_offers_every_recorded_model_of_a_matching_run(tmp_path):
    config = CompareConfig(out=tmp_path, keep_previous=True)
    write_previous(config)
    kept, reusable = _previous_results(config, 100)
    assert kept == {} and sorted(reusable) == ["nli-matryoshka", "nli-standard"]
    assert _previous_results(CompareConfig(out=tmp_path / "none", keep_previous=True), 100) == ({}, {})


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A randomly initialised 2-layer BERT 768 wide on the packaged tokenizer: a stand-in for a 768-d model."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("wide")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(None))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [models.Transformer(str(out), max_seq_length=64), models.Pooling(768, "mean"), models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.mark.slow
def test_every_recipe_runs_on_a_768_dimensional_model(wide_model, tmp_path, tiny_beir):
    """Nothing assumes the packaged model's 384 dims: every row of a full run, on the 768-d model's own ladder."""
    from typer.testing import CliRunner

    from matryoshka.cli.app import app
    from matryoshka.embeddings.vectors import dimension_ladder

    result = CliRunner().invoke(app, [str(a) for a in (
        "compare", "--model", wide_model, "--out", tmp_path, "--max-steps", 2, "--max-examples", 32, "--eval-limit", 40,
        "--retrieval", tiny_beir, "--cache", tmp_path / "cache", "--jobs", 1)])
    assert result.exit_code == 0, result.output
    ladder = [str(d) for d in dimension_ladder(768)]
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {"base", "base+rotation", "adaptor-standard", "adaptor-matryoshka", "standard", "matryoshka",
            "nli-standard", "nli-matryoshka", "sts-standard", "sts-matryoshka"}
    assert rows <= set(data) and all(list(data[r]) == ladder for r in rows)
    assert data["metadata"]["recipes"]["distill"]["weights"] == [1, 1, 1, 1, 2, 8, 4]
    assert {"static-distill", "static-standard", "static-matryoshka"} <= set(data)  # model2vec's PCA to 256
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert list(retrieval["sts-matryoshka"]) == ladder


def test_the_sts_recipe_trains_on_gold_scores_not_the_distillation_pairs():
    """compare's sts twins read STS-B train's gold scores, even after the distill recipe filled the shared cache."""
    from matryoshka.data import load_sts
    from matryoshka.experiments.compare.finetune import recipe_data

    config = CompareConfig()
    datasets: dict = {(("stsb", "snli"), 0): ([("a", "b")] * 64, None)}  # what a distill recipe leaves behind
    recipe = replace(config.sts, max_examples=50)
    dataset, table = recipe_data(recipe, teacher=None, datasets=datasets)
    gold = {(p.sentence1, p.sentence2): p.score for p in load_sts("train")}
    assert table is None and len(dataset) == 50
    assert all(gold[(row["sentence1"], row["sentence2"])] == row["label"] for row in dataset)
