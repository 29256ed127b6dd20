"""The settings of ``matryoshka compare``: which rows it makes, with which recipes, on which data."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matryoshka.adapt import LearnedConfig
from matryoshka.training.static import StaticConfig
from matryoshka.training.top_layer import TopLayerConfig
from matryoshka.training.train import TrainConfig


@dataclass
class CompareConfig:
    """Settings of ``matryoshka compare``; ``quick()`` caps training to finish in minutes on 2 cores."""

    base_model: str | None = None
    out: Path = Path("runs/compare")
    #: Prefixes every row is scored at (and the Matryoshka recipes train); empty: the base model's own
    #: ladder (:func:`dimension_ladder`), taken by :func:`run_compare`.
    dims: tuple[int, ...] = ()
    seed: int = 0
    #: The self-distillation recipe; its ``weights=None`` means the recipe's weights by size on the base
    #: model's ladder (:data:`~matryoshka.training.losses.RECIPE_WEIGHTS`), taken by :func:`run_compare`.
    distill: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            objective="distill", distill_loss="cosent", weights=None, learning_rate=5e-5, batch_size=32,
        )
    )
    nli: TrainConfig = field(
        default_factory=lambda: TrainConfig(objective="nli", learning_rate=2e-5, batch_size=32)
    )
    #: The headline recipe: CoSENT on STS-B train's gold scores (``train --objective sts``), weights by size
    #: like ``distill`` (``None``: taken by :func:`run_compare`); chosen on STS-B dev (``benchmarks/headline_dev.py``).
    sts: TrainConfig = field(
        default_factory=lambda: TrainConfig(objective="sts", learning_rate=5e-5, batch_size=16, weights=None)
    )
    #: The static recipe: model2vec distillation, then training (``static_build.training``); chosen on
    #: STS-B dev by ``benchmarks/static_dev.py``.
    static_build: StaticConfig = field(default_factory=lambda: StaticConfig(pca_dims=256))
    run_static: bool = True
    run_nli: bool = True
    run_sts: bool = True
    #: Fine-tune the transformer recipes (distill, NLI, static); ``quick()`` turns it off.
    run_finetune: bool = True
    #: The retrieval table's BEIR set (``None``: STS-B only); its ``pairs_split`` qrels supervise the adaptor.
    retrieval: str | None = "scifact"
    pairs_split: str = "train"
    #: Score retrieval on a sub-corpus: every judged document plus this many others (``None``: all).
    retrieval_corpus: int | None = None
    #: The retrieval adaptor recipe (both twins): a fixed 1,000 steps, fitted without a held-out check.
    adaptor: LearnedConfig = field(default_factory=lambda: LearnedConfig(steps=1000))
    #: ``matryoshka adapt``'s own defaults, for the ``base+adapt`` row: the validated choice it saves.
    validated_adaptor: LearnedConfig = field(default_factory=LearnedConfig)
    #: The STS-B adaptor recipe (both twins), fitted on this many STS-B train pairs; chosen on STS-B dev.
    sts_adaptor: LearnedConfig = field(
        default_factory=lambda: LearnedConfig(steps=300, learning_rate=3e-4, keep_weight=10.0)
    )
    adaptor_pairs: int = 6000
    #: Also fine-tune the base's last layer on the same STS-B train pairs (both twins, self-distilled on
    #: cached inputs, a minute each; :mod:`matryoshka.training.top_layer`). ``quick()`` turns it on.
    top_layer: TopLayerConfig | None = None
    #: Save the adaptors and top-layer twins as model directories under ``out/models/<task>/`` (the
    #: fine-tuned twins are saved under ``out/models/`` either way).
    save_models: bool = True
    #: Where encodings are kept between runs (``None``: not kept).
    cache_dir: Path | None = Path("runs/cache")
    quick_mode: bool = False
    eval_limit: int | None = None
    jobs: int = 2
    #: Reuse a ``results.json`` already in ``out``: a model whose recorded training settings equal this
    #: run's is scored from there instead of retrained, and with ``run_nli`` or ``run_static`` off those
    #: recipes' rows are carried over; so changing one recipe retrains only the models it changes.
    keep_previous: bool = False

    def command(self) -> str:
        """The ``matryoshka compare`` command line that runs this configuration's recipes (recorded in results)."""
        parts = ["matryoshka", "compare", *(["--quick"] if self.quick_mode else []), "--out", str(self.out)]
        if self.base_model:
            parts += ["--model", str(self.base_model)]
        parts += [flag for flag, on in (("--no-nli", not self.run_nli), ("--no-sts", not self.run_sts),
                                        ("--no-static", not self.run_static),
                                        ("--keep-previous", self.keep_previous)) if on]
        if self.retrieval is None:
            parts.append("--no-retrieval")
        elif self.retrieval != "scifact":
            parts += ["--retrieval", str(self.retrieval)]
        if self.eval_limit is not None:
            parts += ["--eval-limit", str(self.eval_limit)]
        return shlex.join(parts)

    def cap(self, max_steps: int, max_examples: int) -> None:
        """Cap every recipe at ``max_steps`` steps over at most ``max_examples`` rows (smoke tests)."""
        for name in ("distill", "nli", "sts"):
            recipe = getattr(self, name)
            batch = min(recipe.batch_size, max_examples)
            setattr(self, name, replace(recipe, max_steps=max_steps, max_examples=max_examples, batch_size=batch))
        training = self.static_build.training
        self.static_build = replace(self.static_build, max_pairs=max_examples, training=replace(
            training, max_steps=max_steps, batch_size=min(training.batch_size, max_examples)))
        self.adaptor_pairs = min(self.adaptor_pairs, max_examples)
        self.adaptor = replace(self.adaptor, steps=min(self.adaptor.steps, 10 * max_steps))
        self.validated_adaptor = replace(self.validated_adaptor, steps=min(self.validated_adaptor.steps, 10 * max_steps),
                                         eval_every=min(self.validated_adaptor.eval_every, 10 * max_steps))
        self.sts_adaptor = replace(self.sts_adaptor, steps=min(self.sts_adaptor.steps, 10 * max_steps))
        if self.top_layer is not None:
            self.top_layer = replace(self.top_layer, max_steps=max_steps, batch_size=min(self.top_layer.batch_size,
                                                                                       max_examples))

    @property
    def static(self) -> TrainConfig:
        """The static recipe's training settings (recorded under ``recipes.static``)."""
        return self.static_build.training

    @classmethod
    def quick(cls, **overrides: Any) -> CompareConfig:
        """A run of minutes on 2 cores: the baselines, the adaptor twins and the top-layer twins.

        The full fine-tunes (every layer, NLI, static) are left out; the top-layer twins train one layer
        on cached inputs instead (about a minute each).

        Retrieval is scored on a sub-corpus (every judged document plus 500 others), which makes the
        absolute nDCG higher than on the whole corpus; the comparison between rows is what it shows.
        """
        config = cls(**overrides)
        config.quick_mode = True
        config.run_finetune = False
        config.retrieval_corpus = 500 if config.retrieval_corpus is None else config.retrieval_corpus
        config.adaptor = replace(config.adaptor, steps=min(config.adaptor.steps, 300))
        config.top_layer = TopLayerConfig() if config.top_layer is None else config.top_layer
        return config
