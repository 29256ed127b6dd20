"""The main job: train standard and Matryoshka models from one base and compare them per dimension.

Seven models are scored on STS-B test at every dimension:

- ``base``: the untouched starting model;
- ``standard`` / ``matryoshka``: self-distillation on unlabelled local pairs, with the plain loss or
  wrapped in ``MatryoshkaLoss`` (the recipe that holds full-size quality, see ``benchmarks/results/compare``);
- ``nli-standard`` / ``nli-matryoshka``: ``MultipleNegativesRankingLoss`` on NLI triplets, the
  Matryoshka article's experiment;
- ``static-standard`` / ``static-matryoshka``: a ``StaticEmbedding`` model trained from random
  weights on the base model's tokenizer, distilled from the base model.

Each pair shares seed, data, order and hyper-parameters; only the loss wrapper differs.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from matryoshka.data import load_distillation_pairs, load_sts
from matryoshka.data.nli import load_nli_triplets
from matryoshka.evaluation import Results, evaluate_sts
from matryoshka.models import build_static_model, load_model, resolve_model_name
from matryoshka.training import (
    DEFAULT_DIMS,
    TrainConfig,
    build_dataset,
    load_rows,
    pair_dataset,
    teacher_embeddings,
    train,
)


@dataclass
class CompareConfig:
    """Settings of ``matryoshka compare``; ``quick()`` caps training to finish in minutes on 2 cores."""

    base_model: str | None = None
    out: Path = Path("runs/compare")
    dims: tuple[int, ...] = DEFAULT_DIMS
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
    static: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            objective="distill", distill_loss="inbatch", learning_rate=0.05, batch_size=256, epochs=5,
            weights=(1, 1, 1, 2, 4, 4),
        )
    )
    run_static: bool = True
    run_nli: bool = True
    quick_mode: bool = False
    eval_limit: int | None = None
    jobs: int = 2
    #: Reuse a ``results.json`` already in ``out``: a model whose recorded training settings equal this
    #: run's is scored from there instead of retrained, and with ``run_nli`` or ``run_static`` off those
    #: recipes' rows are carried over; so changing one recipe retrains only the models it changes.
    keep_previous: bool = False

    def cap(self, max_steps: int, max_examples: int) -> None:
        """Cap every recipe at ``max_steps`` steps over at most ``max_examples`` rows (smoke tests)."""
        for name in ("distill", "nli", "static"):
            recipe = getattr(self, name)
            batch = min(recipe.batch_size, max_examples)
            setattr(self, name, replace(recipe, max_steps=max_steps, max_examples=max_examples, batch_size=batch))

    @classmethod
    def quick(cls, **overrides: Any) -> CompareConfig:
        """A run of a few minutes: the same recipes on a few dozen steps each."""
        config = cls(**overrides)
        config.quick_mode = True
        config.distill = replace(config.distill, max_steps=16, max_examples=1024)
        config.nli = replace(config.nli, max_steps=12)
        config.static = replace(config.static, batch_size=64, epochs=1.0, max_steps=16, max_examples=1024)
        return config


def _make_model(kind: str, base_model: str | None, dim: int, seed: int) -> Any:
    if kind == "static":
        return build_static_model(base_model, embedding_dim=dim, seed=seed)
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
) -> tuple[str, dict[int, float], dict[str, Any]]:
    """Train and score one model; a top-level function so that a worker process can run it."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = _make_model(kind, base_model, max(config.dims), config.seed)
    result = train(model, config, out / "models" / label, train_dataset=dataset, teacher_table=table)
    return label, evaluate_sts(result.model, test, config.dims), result.summary()


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
) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """Train the standard and Matryoshka variant of one recipe on one shared data set; score both.

    A variant found in ``previous`` with the same training settings keeps its scores and is not
    retrained. With ``compare.jobs == 2`` two variants train side by side in two processes of one
    thread each, which uses two cores better than one process with two threads.
    """
    scores: dict[str, dict[int, float]] = {}
    runs: dict[str, Any] = {}
    variants = []
    for matryoshka in (False, True):
        label = (f"{name}-matryoshka" if matryoshka else f"{name}-standard").removeprefix("distill-")
        variant = replace(config, matryoshka=matryoshka, dims=compare.dims)
        earlier = (previous or {}).get(label)
        if earlier and _same_training(earlier[1].get("config"), variant):
            scores[label], runs[label] = earlier
            log(f"{label}: same training settings as in {compare.out / 'results.json'}, kept its scores")
        else:
            variants.append((label, variant))
    if not variants:
        return scores, runs
    dataset, table = _recipe_data(config, teacher, datasets)
    side_by_side = compare.jobs > 1 and len(variants) > 1
    jobs = []
    for label, variant in variants:
        variant = replace(variant, show_progress_bar=variant.show_progress_bar and not side_by_side)
        log(f"training {label}: {config.objective}, {len(dataset)} rows, max_steps={config.max_steps}")
        jobs.append((label, kind, compare.base_model, variant, compare.out, dataset, table, test))
    if side_by_side:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, torch.get_num_threads() // compare.jobs)
        with ProcessPoolExecutor(compare.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(_train_variant, *zip(*jobs), [threads] * len(jobs)))
    else:
        outcomes = [_train_variant(*job, None) for job in jobs]
    for label, score, summary in outcomes:
        scores[label], runs[label] = score, summary
        log(f"{label}: {json.dumps({d: round(v, 4) for d, v in score.items()})} ({summary['seconds']:.0f}s)")
    return scores, runs


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


_RECIPE_LABELS = {"nli": ("nli-standard", "nli-matryoshka"), "static": ("static-standard", "static-matryoshka")}


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


def run_compare(config: CompareConfig | None = None, log: Any = print) -> Results:
    """Train, evaluate and write ``results.json``, ``results.md`` and ``results.png`` to ``config.out``."""
    config = config or CompareConfig()
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_sts("test")[: config.eval_limit]
    base_name = resolve_model_name(config.base_model)
    base = load_model(config.base_model)
    scores: dict[str, dict[int, float]] = {"base": evaluate_sts(base, test, config.dims)}
    log(f"base: {json.dumps({d: round(v, 4) for d, v in scores['base'].items()})}")
    runs: dict[str, Any] = {}
    datasets: dict[tuple[Any, ...], Any] = {}
    kept, reusable = _previous_results(config, len(test)) if config.keep_previous else ({}, {})

    recipes = [("distill", config.distill)]
    if config.run_nli:
        recipes.append(("nli", config.nli))
    for name, recipe in recipes:
        s, r = _train_pair(name, "transformer", recipe, config, test, base, log, datasets, reusable)
        scores.update(s)
        runs.update(r)
    if config.run_static:
        s, r = _train_pair("static", "static", config.static, config, test, base, log, datasets, reusable)
        scores.update(s)
        runs.update(r)

    for label, (score, run) in kept.items():
        scores[label], runs[label] = score, run
        log(f"{label}: kept from {out / 'results.json'}")
    # A reused model's run record is the previous run's own object; a retrained one has a new record.
    reused = [label for label, (_, run) in reusable.items() if runs.get(label) is run]
    order = ["base", "standard", "matryoshka", "nli-standard", "nli-matryoshka", "static-standard", "static-matryoshka"]
    scores = {k: scores[k] for k in order if k in scores}
    results = Results(
        task="stsb-test",
        metric="spearman_cosine",
        scores=scores,
        metadata={
            "base_model": base_name,
            "quick": config.quick_mode,
            "seed": config.seed,
            "dims": list(config.dims),
            "recipes": {"distill": asdict(config.distill), "nli": asdict(config.nli), "static": asdict(config.static)},
            "runs": runs,
            "seconds": round(time.perf_counter() - started, 1),
            "torch_threads": torch.get_num_threads(),
            "jobs": config.jobs,
            "kept_from_previous_run": sorted([*kept, *reused]),
            "platform": platform.platform(),
            "data": {"distill_pairs": len(load_distillation_pairs(config.distill.pair_sources)),
                     "nli_triplets": len(load_nli_triplets()), "sts_test_pairs": len(test)},
        },
    )
    results.save(out)
    return results
