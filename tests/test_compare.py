"""``compare --keep-previous``: which earlier rows may be carried over, and which are refused."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from matryoshka.compare import CompareConfig, _previous_results
from matryoshka.evaluation import Results
from matryoshka.models import resolve_model_name


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
    kept = _previous_results(config, 100)
    assert sorted(kept) == ["nli-matryoshka", "nli-standard"]
    assert kept["nli-standard"][0][32] == pytest.approx(0.7) and kept["nli-standard"][1] == {"steps": 203}


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
