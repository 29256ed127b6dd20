"""The fine-tuned rows: a recipe's standard and Matryoshka twins, trained side by side on shared data."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from matryoshka.evaluation import evaluate_sts
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.previous import same_training
from matryoshka.models.loading import load_model
from matryoshka.training.teachers import teacher_table
from matryoshka.training.train import TrainConfig, build_dataset, load_rows, pair_dataset, train


def _make_model(kind: str, base_model: str | None, dim: int, seed: int) -> Any:
    """The model a recipe starts from; for ``static``, ``base_model`` is the saved distilled model."""
    return load_model(base_model, device="cpu" if not torch.cuda.is_available() else None)


def train_variant(
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


def train_pair(
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
        if earlier and same_training(earlier[1].get("config"), variant):
            scores[label], runs[label] = earlier
            log(f"{label}: same training settings as in {compare.out / 'results.json'}, kept its scores")
        else:
            variants.append((label, variant))
    if not variants:
        return scores, runs
    dataset, table = data if data is not None else recipe_data(config, teacher, datasets)
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
            outcomes = list(pool.map(train_variant, *zip(*jobs), [threads] * len(jobs), [queue] * len(jobs)))
            if queue is not None and relay is not None:
                queue.put(None)  # ends the relay once every step report is through
                relay.join()
    else:
        sink = _StepSink(progress) if progress is not None else None
        outcomes = [train_variant(*job, None, sink) for job in jobs]
    for label, score, summary in outcomes:
        scores[label], runs[label] = score, summary
        log(f"{label}: {json.dumps({d: round(v, 4) for d, v in score.items()})} ({summary['seconds']:.0f}s)")
    return scores, runs


def recipe_data(config: TrainConfig, teacher: Any, datasets: dict[tuple[Any, ...], Any]) -> tuple[Any, Any]:
    """The training set of a recipe and, for distillation, the teacher's embeddings of its rows."""
    if config.objective in ("nli", "sts"):  # labelled data: triplets, or STS-B train's gold scores
        return build_dataset(config)
    # The teacher's embeddings are the costly part. Recipes with the same sources and seed read
    # prefixes of one pair order, so one table serves all of them; only missing rows are encoded.
    key = (config.pair_sources, config.seed)
    rows = load_rows(config)
    cached_rows, cached_table = datasets.get(key, ([], None))
    if len(rows) > len(cached_rows):
        extra = teacher_table(rows[len(cached_rows):], teacher, columns=2, show_progress_bar=config.show_progress_bar)
        cached_table = extra if cached_table is None else torch.cat([cached_table, extra])
        datasets[key] = (rows, cached_table)
    table = cached_table[: len(rows)]
    return pair_dataset(rows, table, config.distill_loss), table
