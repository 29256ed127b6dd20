"""The main job: make Matryoshka models from one base and compare them per dimension, beside the baselines.

Two tables, STS-B test (Spearman) and a retrieval set (SciFact test, nDCG@10), each with:

- ``base``: the untouched starting model, truncated;
- ``base+rotation``: the base's vectors rotated onto the principal axes of the task's texts (free,
  full-size cosines unchanged), the baseline a skeptic asks for first;
- ``adaptor-standard`` / ``adaptor-matryoshka``: a linear adaptor on the frozen base trained with the
  same losses, data and steps, at full size only (from the identity) or at every prefix. On STS-B it
  learns from STS-B train's gold scores and starts at the identity; on retrieval from the set's train
  (query, document) pairs, starting at the rotation. Seconds to minutes to fit.
- ``top-layer-standard`` / ``top-layer-matryoshka`` (STS-B, ``--quick``): the base's last transformer
  layer fine-tuned on cached inputs over STS-B train's pairs, self-distilled, at full size only or at
  every prefix (:mod:`matryoshka.training.top_layer`); about a minute each. On STS-B a linear adaptor cannot
  re-pack much: the base's own prefixes are already good there, and its rotation is worse.

The full run also fine-tunes models (``--quick`` skips this, which is what lets it finish in minutes):

- ``standard`` / ``matryoshka``: self-distillation on unlabelled local pairs, with the plain loss or
  wrapped in ``MatryoshkaLoss`` (scored on both tables);
- ``nli-standard`` / ``nli-matryoshka``: ``MultipleNegativesRankingLoss`` on NLI triplets, the
  Matryoshka article's experiment;
- ``static-distill``: model2vec's distillation of the base into a ``StaticEmbedding`` model (PCA
  to ``static_build.pca_dims``, 256 as chosen on STS-B dev; no training), see :mod:`matryoshka.training.static`;
- ``static-standard`` / ``static-matryoshka``: that distilled model trained further on local pairs
  to match the base's full-size similarities, with the plain loss or at every prefix.

The static rows start from model2vec's distillation and no longer from random weights. The
from-scratch models scored below the plain distillation at every size (0.692 full, 81.8% kept at 32
dims for ``static-matryoshka``), so they showed a weak model rather than what Matryoshka training
adds to one worth using; :func:`matryoshka.models.loading.build_static_model` still builds one. What the
static twins show now is that PCA has already nested the distilled model's dimensions: on STS-B the
standard twin scores at or above the Matryoshka one at every size (``benchmarks/results/encode/static.md``).

Each pair shares seed, data, order and hyper-parameters; only the loss (every prefix or full size) differs.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matryoshka.adapt import (
    Adaptor,
    AdaptReport,
    Judgements,
    LearnedConfig,
    choose_adaptor,
    fit_learned,
    fit_rotation,
)
from matryoshka.data import load_distillation_pairs, load_sts
from matryoshka.data.beir import BeirDataset, load_beir
from matryoshka.data.nli import load_nli_triplets
from matryoshka.embeddings.cache import cached_encode
from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.evaluation import Results, evaluate_sts
from matryoshka.evaluation.retrieval import score_vectors
from matryoshka.evaluation.sts import sentence_rows, spearman_by_dim
from matryoshka.models.loading import load_model, model_dimension, resolve_model_name
from matryoshka.training.static import (
    StaticConfig,
    distill_static,
    evaluation_sentences,
    static_training_pairs,
    teacher_table,
)
from matryoshka.training.top_layer import TopLayerConfig, cache_layer_inputs, tune_top_layer
from matryoshka.training.train import (
    TrainConfig,
    build_dataset,
    load_rows,
    pair_dataset,
    save_model_atomic,
    teacher_embeddings,
    train,
)


@dataclass
class CompareConfig:
    """Settings of ``matryoshka compare``; ``quick()`` caps training to finish in minutes on 2 cores."""

    base_model: str | None = None
    out: Path = Path("runs/compare")
    #: Prefixes every row is scored at (and the Matryoshka recipes train); empty: the base model's own
    #: ladder (:func:`dimension_ladder`), taken by :func:`run_compare`.
    dims: tuple[int, ...] = ()
    seed: int = 0
    distill: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            objective="distill", distill_loss="cosent", weights=(1, 1, 1, 2, 8, 4), learning_rate=5e-5,
            batch_size=32,
        )
    )
    nli: TrainConfig = field(
        default_factory=lambda: TrainConfig(objective="nli", learning_rate=2e-5, batch_size=32)
    )
    #: The static recipe: model2vec distillation, then training (``static_build.training``); chosen on
    #: STS-B dev by ``benchmarks/static_dev.py``.
    static_build: StaticConfig = field(default_factory=lambda: StaticConfig(pca_dims=256))
    run_static: bool = True
    run_nli: bool = True
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
        import shlex

        parts = ["matryoshka", "compare", *(["--quick"] if self.quick_mode else []), "--out", str(self.out)]
        if self.base_model:
            parts += ["--model", str(self.base_model)]
        parts += [flag for flag, on in (("--no-nli", not self.run_nli), ("--no-static", not self.run_static),
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
        for name in ("distill", "nli"):
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


def _make_model(kind: str, base_model: str | None, dim: int, seed: int) -> Any:
    """The model a recipe starts from; for ``static``, ``base_model`` is the saved distilled model."""
    return load_model(base_model, device="cpu" if not torch.cuda.is_available() else None)


def _train_variant(
    label: str,
    kind: str,
    base_model: str | None,
    config: TrainConfig,
    out: Path,
    dataset: Any,
    table: Any,
    test: Any,
    threads: int | None,
    steps: Any = None,
) -> tuple[str, dict[int, float], dict[str, Any]]:
    """Train and score one model; a top-level function so that a worker process can run it.

    ``steps`` is anything with ``put((label, step, total))``: a :class:`_StepSink` in this process, a
    manager queue from a worker process.
    """
    from matryoshka.models.loading import quiet_loading

    quiet_loading()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = _make_model(kind, base_model, max(config.dims), config.seed)
    report = None
    if steps is not None:
        report = lambda step, total, loss: steps.put((label, step, total))
    result = train(model, config, out / "models" / label, train_dataset=dataset, teacher_table=table, progress=report)
    return label, evaluate_sts(result.model, test, config.dims), result.summary()


@dataclass
class _StepSink:
    """Step reports of a model trained in this process, passed straight to the caller's callback."""

    callback: Callable[[str, int, int], None]

    def put(self, item: tuple[str, int, int]) -> None:
        self.callback(*item)


def _train_pair(
    name: str,
    kind: str,
    config: TrainConfig,
    compare: CompareConfig,
    test: Any,
    teacher: Any,
    log: Any,
    datasets: dict[tuple[Any, ...], Any],
    previous: dict[str, tuple[dict[int, float], dict[str, Any]]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    start: str | None = None,
    data: tuple[Any, Any] | None = None,
) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """Train the standard and Matryoshka variant of one recipe on one shared data set; score both.

    ``start`` is the model both variants start from (default: the base) and ``data`` the prepared
    (data set, teacher table) pair (default: built from the recipe).

    A variant found in ``previous`` with the same training settings keeps its scores and is not
    retrained. With ``compare.jobs == 2`` two variants train side by side in two processes of one
    thread each, which uses two cores better than one process with two threads.
    """
    scores: dict[str, dict[int, float]] = {}
    runs: dict[str, Any] = {}
    variants = []
    for matryoshka in (False, True):
        label = (f"{name}-matryoshka" if matryoshka else f"{name}-standard").removeprefix("distill-")
        dims = config.dims if start is not None else compare.dims
        variant = replace(config, matryoshka=matryoshka, dims=dims)
        earlier = (previous or {}).get(label)
        if earlier and _same_training(earlier[1].get("config"), variant):
            scores[label], runs[label] = earlier
            log(f"{label}: same training settings as in {compare.out / 'results.json'}, kept its scores")
        else:
            variants.append((label, variant))
    if not variants:
        return scores, runs
    dataset, table = data if data is not None else _recipe_data(config, teacher, datasets)
    side_by_side = compare.jobs > 1 and len(variants) > 1
    jobs = []
    for label, variant in variants:
        shown = variant.show_progress_bar and not side_by_side and progress is None
        variant = replace(variant, show_progress_bar=shown)
        log(f"training {label}: {config.objective}, {len(dataset)} rows, max_steps={config.max_steps}")
        jobs.append((label, kind, start or compare.base_model, variant, compare.out, dataset, table, test))
    if side_by_side:
        import multiprocessing
        import threading
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, torch.get_num_threads() // compare.jobs)
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, ProcessPoolExecutor(compare.jobs, mp_context=context) as pool:
            queue, relay = None, None
            if progress is not None:
                queue, report = manager.Queue(), progress

                def forward() -> None:
                    for item in iter(queue.get, None):
                        report(*item)

                relay = threading.Thread(target=forward, daemon=True)
                relay.start()
            outcomes = list(pool.map(_train_variant, *zip(*jobs), [threads] * len(jobs), [queue] * len(jobs)))
            if queue is not None and relay is not None:
                queue.put(None)  # ends the relay once every step report is through
                relay.join()
    else:
        sink = _StepSink(progress) if progress is not None else None
        outcomes = [_train_variant(*job, None, sink) for job in jobs]
    for label, score, summary in outcomes:
        scores[label], runs[label] = score, summary
        log(f"{label}: {json.dumps({d: round(v, 4) for d, v in score.items()})} ({summary['seconds']:.0f}s)")
    return scores, runs


def _static_rows(
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
    table = teacher_table(rows, base, config.cache_dir, config.base_model)
    # The sources and cap ride along in the recorded recipe, so --keep-previous reuses a static model
    # only when it was trained on the same pairs (dims carry pca_dims).
    recipe = replace(build.training, dims=dims, weights=_static_weights(build.training.weights, dims),
                     pair_sources=tuple(build.sources), max_examples=build.max_pairs)
    data = (pair_dataset(rows, table, recipe.distill_loss), table)
    s, r = _train_pair("static", "static", recipe, config, test, base, log, {}, reusable, progress,
                       start=str(start), data=data)
    return {**scores, **s}, {**runs, **r}


def _static_weights(weights: tuple[float, ...] | None, dims: tuple[int, ...]) -> tuple[float, ...] | None:
    """The recipe's weights for its last ``len(dims)`` sizes (weights are given smallest size last)."""
    if weights is None or len(weights) == len(dims):
        return weights
    if len(weights) > len(dims):
        return weights[-len(dims):]
    return (1.0,) * (len(dims) - len(weights)) + tuple(weights)


def _recipe_data(config: TrainConfig, teacher: Any, datasets: dict[tuple[Any, ...], Any]) -> tuple[Any, Any]:
    """The training set of a recipe and, for distillation, the teacher's embeddings of its rows."""
    if config.objective == "nli":
        return build_dataset(config)
    # The teacher's embeddings are the costly part. Recipes with the same sources and seed read
    # prefixes of one pair order, so one table serves all of them; only missing rows are encoded.
    key = (config.pair_sources, config.seed)
    rows = load_rows(config)
    cached_rows, cached_table = datasets.get(key, ([], None))
    if len(rows) > len(cached_rows):
        extra = teacher_embeddings(rows[len(cached_rows):], teacher, config.show_progress_bar)
        cached_table = extra if cached_table is None else torch.cat([cached_table, extra])
        datasets[key] = (rows, cached_table)
    table = cached_table[: len(rows)]
    return pair_dataset(rows, table, config.distill_loss), table


_RECIPE_LABELS = {"nli": ("nli-standard", "nli-matryoshka"),
                  "static": ("static-distill", "static-standard", "static-matryoshka")}


def _used_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe without the fields its training ignores: display settings; distillation settings in an
    NLI run; truncation dims and weights in a standard (non-Matryoshka) run."""
    ignored = {"show_progress_bar", "checkpoint_steps"}
    if recipe.get("objective") == "nli":
        ignored |= {"distill_loss", "pair_sources"}
    if recipe.get("matryoshka") is False:
        ignored |= {"dims", "weights"}
    return {k: v for k, v in recipe.items() if k not in ignored}


def _same_training(recorded: dict[str, Any] | None, variant: TrainConfig) -> bool:
    """Whether a model trained with the ``recorded`` settings is the one ``variant`` would train."""
    wanted = json.loads(json.dumps(asdict(variant)))
    return recorded is not None and _used_fields(recorded) == _used_fields(wanted)


def _previous_results(
    config: CompareConfig, test_pairs: int,
) -> tuple[dict[str, tuple[dict[int, float], dict[str, Any]]], dict[str, tuple[dict[int, float], dict[str, Any]]]]:
    """Rows of an earlier run in ``config.out/results.json``: (kept recipes' rows, reusable models' rows).

    Only a previous full run on the same base model, seed, dims and evaluation set is accepted. The
    recipes this run skips must equal this run's, so that kept rows are the numbers this configuration
    produces; every other recorded model is offered for reuse, and ``_train_pair`` takes it only if its
    recorded training settings equal the ones it would train with.
    """
    path = Path(config.out) / "results.json"
    skipped = [name for name, on in (("nli", config.run_nli), ("static", config.run_static)) if not on]
    if not path.is_file():
        if skipped:
            raise ValueError(f"keep_previous: no previous {path} to keep the {', '.join(skipped)} recipe(s) from")
        return {}, {}
    previous = Results.load(path)
    meta = previous.metadata
    checks = {
        "base_model": resolve_model_name(config.base_model), "seed": config.seed, "dims": list(config.dims),
        "quick": config.quick_mode,
    }
    for key, want in checks.items():
        if meta.get(key) != want:
            raise ValueError(f"keep_previous: {path} has {key}={meta.get(key)!r}, this run {want!r}")
    if meta.get("data", {}).get("sts_test_pairs") != test_pairs:
        raise ValueError(f"keep_previous: {path} was scored on a different number of STS-B test pairs")
    rows = {label: (score, meta.get("runs", {}).get(label, {})) for label, score in previous.scores.items()}
    kept: dict[str, tuple[dict[int, float], dict[str, Any]]] = {}
    for name in skipped:
        if not _same_training(meta.get("recipes", {}).get(name), getattr(config, name)):
            raise ValueError(f"keep_previous: the {name} recipe in {path} differs from this run's")
        for label in _RECIPE_LABELS[name]:
            if label not in previous.scores:
                raise ValueError(f"keep_previous: {path} has no scores for {label}")
            kept[label] = rows[label]
    reusable = {label: row for label, row in rows.items() if label != "base" and label not in kept}
    return kept, reusable


def _fit_adaptors(
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


def _sts_rows(
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
    adaptors = _fit_adaptors(fit_vectors, config.sts_adaptor, config.dims, None, scored, start_at_rotation=False)
    scores = {"base": spearman_by_dim(vectors[left], vectors[right], gold, config.dims)}
    for label, adaptor in adaptors.items():
        mapped = adaptor.apply(vectors)
        scores[label] = spearman_by_dim(mapped[left], mapped[right], gold, config.dims)
    log(f"STS-B adaptors fitted on {len(train):,} STS-B train pairs ({len(fit_texts):,} texts; "
        f"{encoded - started:.0f}s encoding, {time.perf_counter() - encoded:.0f}s fitting)")
    info: dict[str, Any] = {"fit_pairs": len(train), "fit_texts": len(fit_texts),
                            "seconds": {k: a.info.get("seconds") for k, a in adaptors.items()}}
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
        info["top_layer_cache_seconds"] = inputs.seconds
        log(f"last layer fine-tuned on {len(train):,} STS-B train pairs, both twins "
            f"({inputs.seconds:.0f}s caching its inputs, {info['seconds']['top-layer-standard']:.0f}s + "
            f"{info['seconds']['top-layer-matryoshka']:.0f}s training)")
    return scores, info


def _retrieval_set(config: CompareConfig) -> tuple[BeirDataset, list[tuple[str, str]]]:
    """The retrieval test set (on a sub-corpus in quick runs) and the (query, doc id) train pairs."""
    assert config.retrieval is not None
    test = load_beir(config.retrieval, split="test")
    train = load_beir(config.retrieval, split=config.pairs_split)
    pairs = [(train.queries[q], d) for q, judged in train.qrels.items() for d, r in judged.items()
             if r > 0 and d in train.corpus]
    if config.retrieval_corpus is not None:
        judged = {d for qrels in (test.qrels, train.qrels) for judged in qrels.values() for d in judged}
        others = sorted(set(test.corpus) - judged)
        rng = np.random.default_rng(config.seed)
        extra = {others[i] for i in rng.permutation(len(others))[: config.retrieval_corpus]}
        keep = judged | extra
        test = replace(test, corpus={d: t for d, t in test.corpus.items() if d in keep})
    return test, pairs


def _retrieval_scores(
    dataset: BeirDataset, docs: np.ndarray, queries: np.ndarray, dims: tuple[int, ...]
) -> dict[str, dict[int, float]]:
    return score_vectors(dataset.qrels, list(dataset.corpus), docs, list(dataset.queries), queries, dims)


def _validated_adaptor(
    docs: np.ndarray, pairs: list[tuple[str, str]], kept: list[int], pair_queries: np.ndarray, row: dict[str, int],
    config: CompareConfig,
) -> tuple[Adaptor, AdaptReport]:
    """``matryoshka adapt``'s validated choice on the retrieval set's documents and its train pairs."""
    relevant: dict[str, list[int]] = {}
    vectors: dict[str, np.ndarray] = {}
    for i in kept:
        query, doc = pairs[i]
        relevant.setdefault(query, []).append(row[doc])
        vectors[query] = pair_queries[i]
    judged = Judgements(np.stack([vectors[q] for q in relevant]), list(relevant.values()), list(relevant))
    return choose_adaptor(docs, judged, dims=config.dims,
                          config=replace(config.validated_adaptor, seed=config.seed))


def _retrieval_rows(
    config: CompareConfig, base: Any, models: dict[str, Path], log: Callable[[str], None],
) -> tuple[dict[str, dict[str, dict[int, float]]], dict[str, Any]]:
    """Retrieval metrics (``{metric: {model: {dim: value}}}``) for the base, its rotation, the
    supervised adaptor twins and the fine-tuned ``models``; and facts about the fit."""
    dataset, pairs = _retrieval_set(config)
    doc_ids = list(dataset.corpus)
    started = time.perf_counter()
    docs = cached_encode(base, [dataset.corpus[d] for d in doc_ids], config.cache_dir, config.base_model)
    queries = cached_encode(base, list(dataset.queries.values()), config.cache_dir, config.base_model)
    row = {d: i for i, d in enumerate(doc_ids)}
    pair_queries = cached_encode(base, [q for q, _ in pairs], config.cache_dir, config.base_model)
    kept = [i for i, (_, d) in enumerate(pairs) if d in row]
    pair_vectors = (pair_queries[kept], docs[[row[pairs[i][1]] for i in kept]])
    encoded = time.perf_counter()
    adaptors = _fit_adaptors(docs, config.adaptor, config.dims, pair_vectors)
    log(f"{dataset.name} adaptors fitted on {len(doc_ids):,} documents and {len(kept):,} {config.pairs_split} pairs "
        f"({encoded - started:.0f}s encoding, {time.perf_counter() - encoded:.0f}s fitting)")
    # What `matryoshka adapt --pairs` saves with its defaults: the validated choice between the rotation and
    # the learned map, on the same documents and train pairs.
    validated, report = _validated_adaptor(docs, pairs, kept, pair_queries, row, config)
    adaptors["base+adapt"] = validated
    log(f"{dataset.name} validated adapt: {report.chosen} ({report.reason})")
    per_model = {"base": _retrieval_scores(dataset, docs, queries, config.dims)}
    for label, adaptor in adaptors.items():
        per_model[label] = _retrieval_scores(dataset, adaptor.apply(docs), adaptor.apply(queries), config.dims)
    for label, path in models.items():
        model = load_model(path)
        log(f"encoding {len(doc_ids):,} {dataset.name} documents with {label}")
        model_docs = cached_encode(model, [dataset.corpus[d] for d in doc_ids], config.cache_dir, path)
        model_queries = cached_encode(model, list(dataset.queries.values()), config.cache_dir, path)
        per_model[label] = _retrieval_scores(dataset, model_docs, model_queries, config.dims)
    metrics: dict[str, dict[str, dict[int, float]]] = {}
    for label, by_metric in per_model.items():
        for metric, by_dim in by_metric.items():
            metrics.setdefault(metric, {})[label] = by_dim
    info = {"name": dataset.name, "corpus": len(doc_ids), "queries": len(dataset.queries), "train_pairs": len(kept),
            "sub_corpus": config.retrieval_corpus is not None,
            "seconds": {k: a.info.get("seconds") for k, a in adaptors.items()},
            "adapt": {**report.summary(), "validation": {k: v.means() for k, v in report.rows.items()},
                      "seconds": report.seconds}}
    return metrics, info


def run_compare(
    config: CompareConfig | None = None, log: Any = print, progress: Callable[[str, int, int], None] | None = None,
) -> list[Results]:
    """Fit, train, evaluate; write ``results.{json,md}`` (STS-B), ``retrieval.{json,md,png}`` and ``results.png``.

    Returns the STS-B results, then the retrieval results when ``config.retrieval`` is set.
    ``progress(label, step, total)`` is called after every training step of every fine-tuned model.
    """
    from matryoshka.evaluation.plots import plot_gains

    config = config or CompareConfig()
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_sts("test")[: config.eval_limit]
    base_name = resolve_model_name(config.base_model)
    base = load_model(config.base_model)
    if not config.dims:
        config.dims = tuple(dimension_ladder(model_dimension(base)))
    scores, sts_adaptors = _sts_rows(config, base, test, log, progress)
    runs: dict[str, Any] = {}
    datasets: dict[tuple[Any, ...], Any] = {}
    kept, reusable = _previous_results(config, len(test)) if config.keep_previous else ({}, {})

    recipes = [("distill", config.distill)] if config.run_finetune else []
    if config.run_nli and config.run_finetune:
        recipes.append(("nli", config.nli))
    for name, recipe in recipes:
        s, r = _train_pair(name, "transformer", recipe, config, test, base, log, datasets, reusable, progress)
        scores.update(s)
        runs.update(r)
    if config.run_static and config.run_finetune:
        s, r = _static_rows(config, base, test, log, reusable, progress)
        scores.update(s)
        runs.update(r)

    for label, (score, run) in kept.items():
        scores[label], runs[label] = score, run
        log(f"{label}: kept from {out / 'results.json'}")
    # A reused model's run record is the previous run's own object; a retrained one has a new record.
    reused = [label for label, (_, run) in reusable.items() if runs.get(label) is run]
    order = ["base", "base+rotation", "base+adapt", "adaptor-standard", "adaptor-matryoshka", "top-layer-standard",
             "top-layer-matryoshka", "standard", "matryoshka",
             "nli-standard", "nli-matryoshka", "static-distill", "static-standard", "static-matryoshka"]
    scores = {k: scores[k] for k in order if k in scores}
    metadata = {
        "command": config.command(),
        "base_model": base_name,
        "quick": config.quick_mode,
        "seed": config.seed,
        "dims": list(config.dims),
        "recipes": {"distill": asdict(config.distill), "nli": asdict(config.nli), "static": asdict(config.static),
                    "static_build": {k: v for k, v in asdict(config.static_build).items()
                                     if k not in ("training", "cache_dir")},
                    "adaptor": asdict(config.adaptor), "sts_adaptor": asdict(config.sts_adaptor),
                    "top_layer": asdict(config.top_layer) if config.top_layer is not None else None},
        "adaptors": sts_adaptors,
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
        "jobs": config.jobs,
        "kept_from_previous_run": sorted([*kept, *reused]),
        "platform": platform.platform(),
        "data": {"distill_pairs": len(load_distillation_pairs(config.distill.pair_sources)),
                 "nli_triplets": len(load_nli_triplets()), "sts_test_pairs": len(test)},
    }
    results = [Results(task="stsb-test", metric="spearman_cosine", scores=scores, metadata=metadata)]
    if config.retrieval is not None:
        finetuned: dict[str, Path] = {label: out / "models" / label for label in ("standard", "matryoshka")
                     if label in scores and (out / "models" / label / "modules.json").is_file()}
        metrics, info = _retrieval_rows(config, base, finetuned, log)
        order_r = [k for k in order if k in metrics["ndcg@10"]]
        ndcg = {k: metrics["ndcg@10"][k] for k in order_r}
        task = f"{info['name']}-test" + ("-subcorpus" if info["sub_corpus"] else "")
        results.append(Results(task=task, metric="ndcg@10", scores=ndcg,
                               metrics={m: {k: v[k] for k in order_r} for m, v in metrics.items()},
                               metadata={"command": config.command(), "base_model": base_name,
                                         "quick": config.quick_mode, "adaptors": info,
                                         "dims": list(config.dims)}))
    metadata["seconds"] = round(time.perf_counter() - started, 1)
    results[0].save(out)
    if len(results) > 1:
        results[1].save(out, stem="retrieval")
    plot_gains(results, out / "results.png")
    return results
