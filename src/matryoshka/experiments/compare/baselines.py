"""The STS-B rows made without fine-tuning the whole model: the base, its rotation, the adaptor and
top-layer twins."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from matryoshka.adapt import Adaptor, LearnedConfig, fit_learned, fit_rotation
from matryoshka.data import load_sts
from matryoshka.embeddings.cache import cached_encode
from matryoshka.evaluation import evaluate_sts
from matryoshka.evaluation.sts import sentence_rows, spearman_by_dim
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.saved import save_adaptors, save_tuned
from matryoshka.training.top_layer import cache_layer_inputs, tune_top_layer


def fit_adaptors(
    vectors: np.ndarray, config: LearnedConfig, dims: tuple[int, ...], pairs: tuple[np.ndarray, np.ndarray] | None,
    scored: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, start_at_rotation: bool = True,
) -> dict[str, Adaptor]:
    """The rotation and both adaptor twins on one set of base vectors.

    The twins share data, steps and loss terms. The Matryoshka one scores every prefix (and starts at
    the rotation where that helps); the standard one is the same linear adaptor as a user would train
    it without Matryoshka: started at the identity (the untouched base) and scored at full size only.
    """
    rotation = fit_rotation(vectors)
    identity = Adaptor(weight=np.eye(vectors.shape[1], dtype=np.float32), method="identity")
    matryoshka = replace(config, dims=dims, weights=None)
    standard = replace(config, dims=(max(dims),), weights=None)
    return {
        "base+rotation": rotation,
        "adaptor-standard": fit_learned(vectors, standard, pairs, init=identity, scored_pairs=scored),
        "adaptor-matryoshka": fit_learned(vectors, matryoshka, pairs, init=rotation if start_at_rotation else identity,
                                          scored_pairs=scored),
    }


def sts_rows(
    config: CompareConfig, base: Any, test: list[Any], log: Callable[[str], None],
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """STS-B test for the base, its rotation and the adaptor twins, fitted on STS-B *train* pairs.

    The STS recipe differs from the retrieval one in two ways chosen on STS-B dev: the adaptors learn
    from the train pairs' gold scores (CoSENT at every prefix), and the Matryoshka twin starts at the
    identity, because the rotation onto principal axes lowers STS-B at small sizes. With
    ``config.top_layer`` the base's last layer is also fine-tuned on the same pairs (both twins,
    self-distilled: the gold scores are not used).
    """
    sentences, left, right = sentence_rows(test)
    vectors = cached_encode(base, sentences, config.cache_dir, config.base_model)
    gold = [p.score for p in test]
    train = load_sts("train")[: config.adaptor_pairs]
    fit_texts, fit_left, fit_right = sentence_rows(train)
    started = time.perf_counter()
    inputs = cache_layer_inputs(base, fit_texts) if config.top_layer is not None else None
    # The cache pass yields the base's vectors of the same texts; no second encoding for the adaptors.
    fit_vectors = (inputs.vectors.numpy() if inputs is not None
                   else cached_encode(base, fit_texts, config.cache_dir, config.base_model))
    scored = (fit_vectors[fit_left], fit_vectors[fit_right], np.array([p.score for p in train], dtype=np.float32))
    encoded = time.perf_counter()
    adaptors = fit_adaptors(fit_vectors, config.sts_adaptor, config.dims, None, scored, start_at_rotation=False)
    scores = {"base": spearman_by_dim(vectors[left], vectors[right], gold, config.dims)}
    for label, adaptor in adaptors.items():
        mapped = adaptor.apply(vectors)
        scores[label] = spearman_by_dim(mapped[left], mapped[right], gold, config.dims)
    log(f"STS-B adaptors fitted on {len(train):,} STS-B train pairs ({len(fit_texts):,} texts; "
        f"{encoded - started:.0f}s encoding, {time.perf_counter() - encoded:.0f}s fitting)")
    info: dict[str, Any] = {"fit_pairs": len(train), "fit_texts": len(fit_texts),
                            "seconds": {k: a.info.get("seconds") for k, a in adaptors.items()}}
    if config.save_models:
        info["saved"] = save_adaptors(config.out, "stsb", base, adaptors)
    if inputs is not None and config.top_layer is not None:
        pairs = np.stack([fit_left, fit_right], axis=1)
        for label, matryoshka in (("top-layer-standard", False), ("top-layer-matryoshka", True)):
            tick = time.perf_counter()
            recipe = replace(config.top_layer, matryoshka=matryoshka, dims=config.dims, seed=config.seed)

            def report(step: int, total: int, loss: float, label: str = label) -> None:
                if progress is not None:
                    progress(label, step, total)

            tuned = tune_top_layer(base, inputs, pairs, recipe, progress=report)
            scores[label] = evaluate_sts(tuned, test, config.dims, batch_size=128)
            info["seconds"][label] = round(time.perf_counter() - tick, 1)
            if config.save_models:
                info["saved"][label] = save_tuned(config.out, "stsb", label, tuned)
        info["top_layer_cache_seconds"] = inputs.seconds
        log(f"last layer fine-tuned on {len(train):,} STS-B train pairs, both twins "
            f"({inputs.seconds:.0f}s caching its inputs, {info['seconds']['top-layer-standard']:.0f}s + "
            f"{info['seconds']['top-layer-matryoshka']:.0f}s training)")
    return scores, info
