"""Running ``matryoshka compare``: every row, in one order, into the STS-B and retrieval reports."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from matryoshka.data import load_distillation_pairs, load_sts
from matryoshka.data.nli import load_nli_triplets
from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.evaluation import Results
from matryoshka.experiments.compare.baselines import sts_rows
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.finetune import train_pair
from matryoshka.experiments.compare.previous import previous_results
from matryoshka.experiments.compare.retrieval import retrieval_rows
from matryoshka.experiments.compare.static_rows import static_rows
from matryoshka.models.loading import load_model, model_dimension, resolve_model_name
from matryoshka.training.losses import weights_by_size

#: The rows' order in the tables.
ORDER = ["base", "base+rotation", "base+adapt", "adaptor-standard", "adaptor-matryoshka", "top-layer-standard",
         "top-layer-matryoshka", "standard", "matryoshka", "nli-standard", "nli-matryoshka", "sts-standard",
         "sts-matryoshka", "static-distill", "static-standard", "static-matryoshka"]
#: The fine-tuned models the retrieval table also scores (each encodes the whole corpus).
RETRIEVAL_MODELS = ("standard", "matryoshka", "sts-standard", "sts-matryoshka")


def _metadata(config: CompareConfig, base_name: str, sts_adaptors: Any, runs: dict[str, Any], kept: list[str],
              data: dict[str, int]) -> dict[str, Any]:
    """What results.json records beside the scores: the command, every recipe, each model's run."""
    return {
        "command": config.command(),
        "base_model": base_name,
        "quick": config.quick_mode,
        "seed": config.seed,
        "dims": list(config.dims),
        "recipes": {"distill": asdict(config.distill), "nli": asdict(config.nli), "sts": asdict(config.sts),
                    "static": asdict(config.static),
                    "static_build": {k: v for k, v in asdict(config.static_build).items()
                                     if k not in ("training", "cache_dir")},
                    "adaptor": asdict(config.adaptor), "sts_adaptor": asdict(config.sts_adaptor),
                    "top_layer": asdict(config.top_layer) if config.top_layer is not None else None},
        "adaptors": sts_adaptors,
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
        "jobs": config.jobs,
        "kept_from_previous_run": kept,
        "platform": platform.platform(),
        "data": data,
    }


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
    for name in ("distill", "sts"):  # the recipes' weights by size, on this model's ladder
        if getattr(config, name).weights is None:
            setattr(config, name, replace(getattr(config, name), weights=weights_by_size(config.dims)))
    scores, sts_adaptors = sts_rows(config, base, test, log, progress)
    runs: dict[str, Any] = {}
    datasets: dict[tuple[Any, ...], Any] = {}
    kept, reusable = previous_results(config, len(test)) if config.keep_previous else ({}, {})

    recipes = [("distill", config.distill)] if config.run_finetune else []
    recipes += [(name, getattr(config, name)) for name, on in (("nli", config.run_nli), ("sts", config.run_sts))
                if on and config.run_finetune]

    # read once: the results are saved after every recipe
    data = {"distill_pairs": len(load_distillation_pairs(config.distill.pair_sources)),
            "nli_triplets": len(load_nli_triplets()), "sts_test_pairs": len(test)}

    def results_so_far(partial: bool) -> Results:
        """The STS-B results of the models finished so far. ``partial``: saved after each recipe, so that
        ``--keep-previous`` resumes an interrupted run; it also carries the earlier run's models this run
        has not reached yet, which a resumed run may still reuse."""
        for label, (score, run) in kept.items():
            scores[label], runs[label] = score, run
        # A reused model's run record is the previous run's own object; a retrained one has a new record.
        reused = [label for label, (_, run) in reusable.items() if runs.get(label) is run]
        rows, records = dict(scores), dict(runs)
        if partial:
            for label, (score, run) in reusable.items():
                rows.setdefault(label, score)
                records.setdefault(label, run)
        ordered = {k: rows[k] for k in ORDER if k in rows}
        metadata = _metadata(config, base_name, sts_adaptors, records, sorted([*kept, *reused]), data)
        if partial:
            metadata["partial"] = True
        return Results(task="stsb-test", metric="spearman_cosine", scores=ordered, metadata=metadata)

    for name, recipe in recipes:
        s, r = train_pair(name, "transformer", recipe, config, test, base, log, datasets, reusable, progress)
        scores.update(s)
        runs.update(r)
        results_so_far(partial=True).save(out)
    if config.run_static and config.run_finetune:
        s, r = static_rows(config, base, test, log, reusable, progress)
        scores.update(s)
        runs.update(r)
        results_so_far(partial=True).save(out)

    for label in kept:
        log(f"{label}: kept from {out / 'results.json'}")
    sts = results_so_far(partial=False)
    scores, metadata = sts.scores, sts.metadata
    results = [sts]
    if config.retrieval is not None:
        finetuned: dict[str, Path] = {label: out / "models" / label for label in RETRIEVAL_MODELS
                                      if label in scores and (out / "models" / label / "modules.json").is_file()}
        metrics, info = retrieval_rows(config, base, finetuned, log)
        order_r = [k for k in ORDER if k in metrics["ndcg@10"]]
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
