"""The static rows: model2vec's distillation of the base, then its standard and Matryoshka twins."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from matryoshka.evaluation import evaluate_sts
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.finetune import train_pair
from matryoshka.files import save_model_atomic
from matryoshka.models.loading import load_model, model_dimension, resolve_model_name
from matryoshka.training.static import distill_static, evaluation_sentences, static_training_pairs
from matryoshka.training.teachers import TeacherCache, teacher_table
from matryoshka.training.train import pair_dataset


def static_rows(
    config: CompareConfig,
    base: Any,
    test: Any,
    log: Callable[[str], None],
    reusable: dict[str, tuple[dict[int, float], dict[str, Any]]],
    progress: Callable[[str, int, int], None] | None,
) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """Distil the base once with model2vec (``static-distill``), then train both twins from it."""
    build = config.static_build
    pca_dims = build.pca_dims or model_dimension(base)
    dims = tuple(d for d in config.dims if d <= pca_dims)
    if pca_dims not in dims:
        dims = (pca_dims, *dims)
    started = time.perf_counter()
    start = config.out / "models" / "static-distill"
    save_model_atomic(distill_static(base, pca_dims, build.sif_coefficient, build.vocabulary,
                                     source=resolve_model_name(config.base_model)), start)
    distilled = load_model(start, device="cpu")
    scores = {"static-distill": evaluate_sts(distilled, test, dims)}
    runs: dict[str, Any] = {"static-distill": {"seconds": round(time.perf_counter() - started, 1),
                                               "pca_dims": pca_dims, "config": None}}
    log(f"static-distill: {json.dumps({d: round(v, 4) for d, v in scores['static-distill'].items()})} "
        f"({runs['static-distill']['seconds']:.0f}s)")
    rows = static_training_pairs(build.sources, build.training.seed, exclude=evaluation_sentences(),
                                 limit=build.max_pairs)
    table = teacher_table(rows, base, columns=2, cache=TeacherCache(config.cache_dir, config.base_model))
    # The sources and cap ride along in the recorded recipe, so --keep-previous reuses a static model
    # only when it was trained on the same pairs (dims carry pca_dims).
    recipe = replace(build.training, dims=dims, weights=_static_weights(build.training.weights, dims),
                     pair_sources=tuple(build.sources), max_examples=build.max_pairs)
    data = (pair_dataset(rows, table, recipe.distill_loss), table)
    s, r = train_pair("static", "static", recipe, config, test, base, log, {}, reusable, progress,
                      start=str(start), data=data)
    return {**scores, **s}, {**runs, **r}


def _static_weights(weights: tuple[float, ...] | None, dims: tuple[int, ...]) -> tuple[float, ...] | None:
    """The recipe's weights for its last ``len(dims)`` sizes (weights are given smallest size last)."""
    if weights is None or len(weights) == len(dims):
        return weights
    if len(weights) > len(dims):
        return weights[-len(dims):]
    return (1.0,) * (len(dims) - len(weights)) + tuple(weights)
