"""Resuming (``--keep-previous``): which rows and models of an earlier ``results.json`` this run may reuse."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matryoshka.errors import InputError
from matryoshka.evaluation import Results
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.models.loading import resolve_model_name
from matryoshka.training.train import TrainConfig

RECIPE_LABELS = {"nli": ("nli-standard", "nli-matryoshka"), "sts": ("sts-standard", "sts-matryoshka"),
                  "static": ("static-distill", "static-standard", "static-matryoshka")}


def _used_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe without the fields its training ignores: display settings; distillation settings in an
    NLI run; truncation dims and weights in a standard (non-Matryoshka) run."""
    ignored = {"show_progress_bar", "checkpoint_steps"}
    if recipe.get("objective") in ("nli", "sts"):
        ignored |= {"distill_loss", "pair_sources"}
    if recipe.get("matryoshka") is False:
        ignored |= {"dims", "weights"}
    return {k: v for k, v in recipe.items() if k not in ignored}


def same_training(recorded: dict[str, Any] | None, variant: TrainConfig) -> bool:
    """Whether a model trained with the ``recorded`` settings is the one ``variant`` would train."""
    wanted = json.loads(json.dumps(asdict(variant)))
    return recorded is not None and _used_fields(recorded) == _used_fields(wanted)


def previous_results(
    config: CompareConfig, test_pairs: int,
) -> tuple[dict[str, tuple[dict[int, float], dict[str, Any]]], dict[str, tuple[dict[int, float], dict[str, Any]]]]:
    """Rows of an earlier run in ``config.out/results.json``: (kept recipes' rows, reusable models' rows).

    Only a previous full run on the same base model, seed, dims and evaluation set is accepted. The
    recipes this run skips must equal this run's, so that kept rows are the numbers this configuration
    produces; every other recorded model is offered for reuse, and ``train_pair`` takes it only if its
    recorded training settings equal the ones it would train with.
    """
    path = Path(config.out) / "results.json"
    skipped = [name for name, on in (("nli", config.run_nli), ("sts", config.run_sts), ("static", config.run_static))
               if not on]
    if not path.is_file():
        if skipped:
            raise InputError(f"keep_previous: no previous {path} to keep the {', '.join(skipped)} recipe(s) from")
        return {}, {}
    previous = Results.load(path)
    meta = previous.metadata
    checks = {
        "base_model": resolve_model_name(config.base_model), "seed": config.seed, "dims": list(config.dims),
        "quick": config.quick_mode,
    }
    for key, want in checks.items():
        if meta.get(key) != want:
            raise InputError(f"keep_previous: {path} has {key}={meta.get(key)!r}, this run {want!r}")
    if meta.get("data", {}).get("sts_test_pairs") != test_pairs:
        raise InputError(f"keep_previous: {path} was scored on a different number of STS-B test pairs")
    rows = {label: (score, meta.get("runs", {}).get(label, {})) for label, score in previous.scores.items()}
    kept: dict[str, tuple[dict[int, float], dict[str, Any]]] = {}
    for name in skipped:
        if not same_training(meta.get("recipes", {}).get(name), getattr(config, name)):
            raise InputError(f"keep_previous: the {name} recipe in {path} differs from this run's")
        for label in RECIPE_LABELS[name]:
            if label not in previous.scores:
                raise InputError(f"keep_previous: {path} has no scores for {label}")
            kept[label] = rows[label]
    reusable = {label: row for label, row in rows.items() if label != "base" and label not in kept}
    return kept, reusable
