"""Matryoshka that holds up on search: every way to get one from all-MiniLM-L6-v2, per dimension.

Rows (nDCG@10 and recall@100 on SciFact test and NPL; Spearman on STS-B test):

- ``base``: the untouched model, truncated;
- ``base+rotation``: its vectors rotated onto the principal axes of the evaluated corpus (free);
- ``base+adaptor (unsupervised)``: the learned adaptor fitted on the evaluated corpus's texts alone;
- ``base+adaptor (supervised)``: the learned adaptor fitted on SciFact's corpus and its *train*
  (query, document) pairs; applied as it is to NPL and STS-B;
- ``retrieval-matryoshka`` / ``retrieval-standard``: all-MiniLM-L6-v2 fine-tuned on the SciFact train
  pairs with ``MultipleNegativesRankingLoss``, inside ``MatryoshkaLoss`` or plain (same seed, data, steps);
- ``sts-matryoshka``: today's STS-distilled Matryoshka model from ``matryoshka compare`` (when present).

Settings were chosen on a dev split of SciFact train (``benchmarks/adaptor_dev.py``), never on test.
Every encoding is cached (``runs/cache``); the fine-tuned models are saved under ``--models``.

    python benchmarks/retrieval.py --stage train    # the two fine-tuned twins, side by side
    python benchmarks/retrieval.py --stage score    # fit adaptors, score everything, write the results
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matryoshka.adapt import LearnedConfig, fit_learned, fit_rotation
from matryoshka.data import load_sts
from matryoshka.data.beir import load_beir
from matryoshka.embeddings.cache import cached_encode
from matryoshka.evaluation import Results
from matryoshka.evaluation.retrieval import score_vectors
from matryoshka.evaluation.sts import sentence_rows, spearman_by_dim
from matryoshka.files import write_atomic
from matryoshka.models.loading import load_model, quiet_loading
from matryoshka.training.train import TrainConfig, train

DIMS = (384, 256, 128, 64, 32, 16)
#: The fine-tuning recipe: MNRL on SciFact train's 919 (query, document) pairs, three epochs.
RECIPE = TrainConfig(objective="retrieval", data="scifact", learning_rate=2e-5, batch_size=32, epochs=3.0,
                     show_progress_bar=False, dims=DIMS)
#: The adaptors' settings, chosen on the SciFact train dev split (see dev.md).
UNSUPERVISED = LearnedConfig(steps=300, topk_weight=0.0)
#: ``matryoshka compare``'s self-distillation recipe for its ``matryoshka`` model, as one ``train`` command
#: (the same data, loss, weights and seed; 34 min on 2 cores).
STS_MODEL_COMMAND = "matryoshka train --weights 1,1,1,2,8,4 --out {out}"
SUPERVISED = LearnedConfig(steps=1000)


def _train_one(label: str, config: TrainConfig, out: Path) -> dict[str, Any]:
    quiet_loading()
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    result = train(load_model(device="cpu"), config, out / label)
    return result.summary()


def stage_train(models: Path) -> None:
    """Fine-tune the Matryoshka and the standard twin side by side, one thread each."""
    twins = {"retrieval-matryoshka": RECIPE, "retrieval-standard": replace(RECIPE, matryoshka=False)}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {label: pool.submit(_train_one, label, config, models) for label, config in twins.items()}
        runs = {label: future.result() for label, future in futures.items()}
    write_atomic(models / "runs.json", (json.dumps(runs, indent=2) + "\n").encode())
    for label, run in runs.items():
        print(f"{label}: {run['steps']} steps in {run['seconds']:.0f}s")


def _retrieval(qrels: Any, ids: list[str], docs: np.ndarray, qids: list[str], queries: np.ndarray) -> dict[str, Any]:
    return score_vectors(qrels, ids, docs, qids, queries, DIMS)


def _encode_all(model: Any, name: str | Path | None, sets: dict[str, Any], sentences: list[str],
                cache: Path) -> dict[str, Any]:
    """Each BEIR set's (doc ids, doc vectors, query ids, query vectors) and the STS-B sentences' vectors."""
    vectors: dict[str, Any] = {}
    for key, data in sets.items():
        ids = list(data.corpus)
        vectors[key] = (ids, cached_encode(model, [data.corpus[i] for i in ids], cache, name, show_progress_bar=True),
                        list(data.queries), cached_encode(model, list(data.queries.values()), cache, name))
    vectors["stsb"] = cached_encode(model, sentences, cache, name)
    return vectors


def _score_all(vectors: dict[str, Any], sets: dict[str, Any], sts: tuple[list[int], list[int], list[float]],
               by_set: dict[str, Any] | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """One row of every table: retrieval metrics per BEIR set and STS-B Spearman, after ``by_set``'s
    adaptor of each set (STS-B takes SciFact's)."""
    left, right, gold = sts
    row: dict[str, dict[str, dict[int, float]]] = {}
    for key in sets:
        ids, docs, qids, queries = vectors[key]
        adaptor = (by_set or {}).get(key)
        if adaptor is not None:
            docs, queries = adaptor.apply(docs), adaptor.apply(queries)
        row[key] = _retrieval(sets[key].qrels, ids, docs, qids, queries)
    sts_vectors = vectors["stsb"]
    sts_adaptor = (by_set or {}).get("scifact")
    if sts_adaptor is not None:
        sts_vectors = sts_adaptor.apply(sts_vectors)
    row["stsb"] = {"spearman_cosine": spearman_by_dim(sts_vectors[left], sts_vectors[right], gold, DIMS)}
    return row


def stage_score(models: Path, out: Path, cache: Path, sts_model: Path | None) -> None:
    """Encode (cached), fit the adaptors, score every row, write results.{json,md} and a plot."""
    quiet_loading()
    base = load_model()
    sets = {name: load_beir(name, split="test") for name in ("scifact", "npl")}
    train_set = load_beir("scifact", split="train")
    sts = load_sts("test")
    sentences, left, right = sentence_rows(sts)
    gold = [p.score for p in sts]

    timings: dict[str, float] = {}
    started = time.perf_counter()
    base_vectors = _encode_all(base, None, sets, sentences, cache)
    train_queries = cached_encode(base, [train_set.queries[q] for q in train_set.qrels], cache, None)
    timings["encode base (cached after the first run)"] = round(time.perf_counter() - started, 1)
    sci_ids, sci_docs = base_vectors["scifact"][0], base_vectors["scifact"][1]
    row = {d: i for i, d in enumerate(sci_ids)}
    pair_q, pair_d = [], []
    for i, (_q, judged) in enumerate(train_set.qrels.items()):
        for d, r in judged.items():
            if r > 0 and d in row:
                pair_q.append(train_queries[i])
                pair_d.append(sci_docs[row[d]])
    pairs = (np.stack(pair_q), np.stack(pair_d))

    torch.set_num_threads(2)
    adaptors: dict[str, dict[str, Any]] = {"scifact": {}, "npl": {}}
    for key in ("scifact", "npl"):
        docs = base_vectors[key][1]
        tick = time.perf_counter()
        adaptors[key]["base+rotation"] = fit_rotation(docs)
        timings[f"rotation on {key} ({len(docs):,} docs)"] = round(time.perf_counter() - tick, 2)
        tick = time.perf_counter()
        adaptors[key]["base+adaptor (unsupervised)"] = fit_learned(docs, UNSUPERVISED)
        timings[f"learned unsupervised on {key} ({len(docs):,} docs)"] = round(time.perf_counter() - tick, 1)
    tick = time.perf_counter()
    supervised = fit_learned(sci_docs, SUPERVISED, pairs)
    timings[f"learned supervised on scifact ({len(sci_docs):,} docs + {len(pair_q)} train pairs)"] = round(
        time.perf_counter() - tick, 1)
    for key in ("scifact", "npl"):
        adaptors[key]["base+adaptor (supervised)"] = supervised

    scores: dict[str, dict[str, dict[str, dict[int, float]]]] = {"scifact": {}, "npl": {}, "stsb": {}}

    def score_model(label: str, vectors: dict[str, Any], by_set: dict[str, Any] | None = None) -> None:
        for key, row in _score_all(vectors, sets, (left, right, gold), by_set).items():
            scores[key][label] = row

    score_model("base", base_vectors)
    for label in ("base+rotation", "base+adaptor (unsupervised)", "base+adaptor (supervised)"):
        score_model(label, base_vectors, {key: adaptors[key][label] for key in ("scifact", "npl")})
    finetuned = [("retrieval-matryoshka", models / "retrieval-matryoshka"),
                 ("retrieval-standard", models / "retrieval-standard")]
    if sts_model is not None:
        finetuned.append(("sts-matryoshka", sts_model))
    missing = []
    for label, path in finetuned:
        if not (path / "modules.json").is_file():
            missing.append(f"{label} ({path})")
            continue
        model = load_model(path)
        tick = time.perf_counter()
        score_model(label, _encode_all(model, path, sets, sentences, cache))
        timings[f"encode {label} (cached after the first run)"] = round(time.perf_counter() - tick, 1)

    carried = []
    if sts_model is None:
        # The STS-distilled model is git-ignored and 34 min to retrain here; its SciFact and STS-B rows
        # measured by the previous session on the same model are carried over, and labelled so.
        scifact_file, compare_file = Path("benchmarks/results/scifact/results.json"), Path(
            "benchmarks/results/compare/results.json")
        if scifact_file.is_file() and compare_file.is_file():
            previous = Results.load(scifact_file).metrics
            label = "sts-matryoshka (carried over)"
            scores["scifact"][label] = {m: previous[m]["matryoshka"] for m in ("ndcg@10", "recall@100")}
            scores["stsb"][label] = {"spearman_cosine": Results.load(compare_file).scores["matryoshka"]}
            carried.append(f"{label}: SciFact from {scifact_file}, STS-B from {compare_file}; NPL not measured")
    runs = json.loads((models / "runs.json").read_text()) if (models / "runs.json").is_file() else {}
    meta = {
        "dims": list(DIMS), "recipe": asdict(RECIPE), "adaptors": {"unsupervised": asdict(UNSUPERVISED),
                                                                   "supervised": asdict(SUPERVISED)},
        "fine_tuning_runs": runs, "seconds": timings, "missing_models": missing, "platform": platform.platform(),
        "torch_threads": 2, "train_pairs": len(pair_q), "carried_over": carried,
    }
    _write(scores, meta, out)


TASKS = {"scifact": ("scifact-test", ("ndcg@10", "recall@100")), "npl": ("npl-test", ("ndcg@10", "recall@100")),
         "stsb": ("stsb-test", ("spearman_cosine",))}


def _write(scores: dict[str, dict[str, dict[str, dict[int, float]]]], meta: dict[str, Any], out: Path) -> None:
    """Write results.{json,md} and the plot from ``scores[set][label][metric][dim]``."""
    timings, missing, carried = meta["seconds"], meta["missing_models"], meta["carried_over"]
    combined: dict[str, Any] = {"metadata": meta}
    md = ["# Matryoshka for search: base, rotation, adaptors and fine-tuned models per dimension", "",
          "Command: `python benchmarks/retrieval.py --stage train && python benchmarks/retrieval.py --stage score`.",
          "Settings chosen on a dev split of SciFact train ([dev.md](dev.md)); test is scored once.", ""]
    for merged in meta.get("merged", []):
        md += [f"The `{merged['label']}` row was measured later, on {merged['date']}, by `{merged['command']}`, "
               f"with the model made by `{merged['trained_by']}`; the other rows are from the run above.", ""]
    panels = []
    for key, (task, metric_names) in TASKS.items():
        metrics = {m: {label: by_metric[m] for label, by_metric in scores[key].items() if m in by_metric}
                   for m in metric_names}
        result = Results(task=task, metric=metric_names[0], scores=metrics[metric_names[0]], metrics=metrics,
                         metadata={"dims": list(DIMS)})
        panels.append(result)
        combined[task] = result.to_dict()
        for metric in metric_names:
            md += [f"## {task}: {metric}", "", "| model | " + " | ".join(map(str, DIMS)) + " |",
                   "|---|" + "---:|" * len(DIMS)]
            md += [f"| {label} | " + " | ".join(f"{by_dim[d]:.4f}" for d in DIMS) + " |"
                   for label, by_dim in metrics[metric].items()]
            md.append("")
    md += ["## Time on this machine (2 cores)", "", "| step | seconds |", "|---|---:|"]
    md += [f"| {step} | {seconds} |" for step, seconds in timings.items()]
    if missing:
        md += ["", "Not scored (model not found): " + ", ".join(missing)]
    if carried:
        md += ["", "Carried over, not measured in this run: " + "; ".join(carried)]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", (json.dumps(combined, indent=2) + "\n").encode())
    write_atomic(out / "results.md", ("\n".join(md) + "\n").encode())
    from matryoshka.evaluation.plots import plot_gains

    plot_gains(panels, out / "results.png")
    print("\n".join(md))


def _read(out: Path) -> tuple[dict[str, dict[str, dict[str, dict[int, float]]]], dict[str, Any]]:
    """``scores[set][label][metric][dim]`` and the metadata of the ``results.json`` in ``out``."""
    combined = json.loads((out / "results.json").read_text())
    scores: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for key, (task, metric_names) in TASKS.items():
        per_metric = Results.from_dict(combined[task]).metrics
        labels = list(per_metric[metric_names[0]])
        scores[key] = {label: {m: per_metric[m][label] for m in metric_names if label in per_metric[m]}
                       for label in labels}
    return scores, combined["metadata"]


def stage_merge(out: Path, cache: Path, rows: dict[str, Path]) -> None:
    """Score only the fine-tuned models in ``rows`` (label -> directory) and merge them into ``out``.

    The other rows are kept as their run measured them; a merged row replaces a carried-over row of the
    same model, and the Markdown says which rows were measured later and how.
    """
    quiet_loading()
    scores, meta = _read(out)
    sets = {name: load_beir(name, split="test") for name in ("scifact", "npl")}
    sts = load_sts("test")
    sentences, left, right = sentence_rows(sts)
    gold = [p.score for p in sts]
    torch.set_num_threads(2)
    for label, path in rows.items():
        if not (path / "modules.json").is_file():
            raise SystemExit(f"{label}: no model at {path}")
        model = load_model(path)
        tick = time.perf_counter()
        for key, row in _score_all(_encode_all(model, path, sets, sentences, cache), sets, (left, right, gold)).items():
            scores[key][label] = row
        meta["seconds"][f"encode {label} (merged later)"] = round(time.perf_counter() - tick, 1)
        carried_label = f"{label} (carried over)"
        for by_label in scores.values():
            by_label.pop(carried_label, None)
        meta["carried_over"] = [c for c in meta["carried_over"] if not c.startswith(carried_label)]
        meta["missing_models"] = [m for m in meta["missing_models"] if not m.startswith(f"{label} (")]
        meta.setdefault("merged", []).append({
            "label": label, "model": str(path), "date": time.strftime("%Y-%m-%d"),
            "command": f"python benchmarks/retrieval.py --stage score --only {label} --sts-model {path}",
            "trained_by": STS_MODEL_COMMAND.format(out=path)})
    _write(scores, meta, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("train", "score", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval"))
    parser.add_argument("--models", type=Path, default=Path("runs/retrieval-models"))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--sts-model", type=Path, default=Path("benchmarks/results/compare/models/matryoshka"))
    parser.add_argument("--only", choices=("sts-matryoshka",), default=None,
                        help="score only this fine-tuned row and merge it into the results already in --out")
    parser.add_argument("--render", action="store_true", help="rewrite results.md and the plot from results.json")
    args = parser.parse_args()
    if args.render:
        _write(*_read(args.out), args.out)
        return
    if args.only:
        stage_merge(args.out, args.cache, {args.only: args.sts_model})
        return
    if args.stage in ("train", "all"):
        stage_train(args.models)
    if args.stage in ("score", "all"):
        stage_score(args.models, args.out, args.cache, args.sts_model if args.sts_model.exists() else None)


if __name__ == "__main__":
    main()
