"""Time training steps with and without MatryoshkaLoss, interleaved in one run, and report the ratio.

MatryoshkaLoss runs the encoder once per step and re-scores the cached embedding at each truncation,
so its cost over the plain loss should be a few percent. Each measured step is a full optimizer step
(forward, loss at every dim, backward, AdamW update) on the same real batch; plain and Matryoshka steps
alternate so that drifts in machine load hit both alike.

    python benchmarks/train_overhead.py --steps 20 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from sentence_transformers.sentence_transformer.losses import (
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)

from matryoshka.data import load_distillation_pairs, load_nli_triplets
from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.files import write_atomic
from matryoshka.models.loading import load_model, model_dimension
from matryoshka.training.losses import InBatchSimilarityDistillationLoss
from matryoshka.training.train import TrainConfig, build_dataset


def time_step(model, loss, features, labels, optimizer) -> float:
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    value = loss(features, labels)
    value.backward()
    optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)

    model = load_model(device="cpu")
    model.train()
    bs = args.batch_size
    triplets = load_nli_triplets()[:bs]
    pairs = load_distillation_pairs(("stsb", "snli"))[:bs]
    dataset, table = build_dataset(TrainConfig(show_progress_bar=False), model, pairs)
    recipes = {
        "nli-mnrl": (
            MultipleNegativesRankingLoss(model),
            [model.tokenize([getattr(t, c) for t in triplets]) for c in ("anchor", "positive", "negative")],
            torch.zeros(bs),
        ),
        "distill": (
            InBatchSimilarityDistillationLoss(model, table),
            [model.tokenize(dataset["sentence1"]), model.tokenize(dataset["sentence2"])],
            torch.tensor(dataset["label"]),
        ),
    }
    # one optimizer over the model only: the comparison is about the loss, not optimizer state
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)
    dims = dimension_ladder(model_dimension(model))
    report = {"batch_size": bs, "steps": args.steps, "dims": dims, "torch_threads": torch.get_num_threads(),
              "platform": platform.platform(), "python": sys.version.split()[0], "recipes": {}}
    for name, (base, features, labels) in recipes.items():
        variants = {"plain": base, "matryoshka": MatryoshkaLoss(model, base, dims)}
        for _ in range(args.warmup):
            for loss in variants.values():
                time_step(model, loss, features, labels, optimizer)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for step in range(args.steps):
            order = list(variants) if step % 2 == 0 else list(reversed(variants))
            for key in order:
                times[key].append(time_step(model, variants[key], features, labels, optimizer))
        median = {k: statistics.median(v) for k, v in times.items()}
        ratio = median["matryoshka"] / median["plain"]
        report["recipes"][name] = {
            "median_seconds": {k: round(v, 4) for k, v in median.items()},
            "mean_seconds": {k: round(statistics.mean(v), 4) for k, v in times.items()},
            "ratio": round(ratio, 4),
            "target": 1.05,
            "meets_target": ratio <= 1.05,
        }
        print(f"{name}: plain {median['plain']:.3f}s/step, matryoshka {median['matryoshka']:.3f}s/step, "
              f"ratio {ratio:.3f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "train_overhead.json", (json.dumps(report, indent=2) + "\n").encode())
    lines = ["# Training-step overhead of MatryoshkaLoss", "",
             f"Command: `python benchmarks/train_overhead.py --steps {args.steps}`; batch {bs}, dims {dims}, "
             f"{report['torch_threads']} torch threads, median of {args.steps} interleaved optimizer steps.", "",
             "| recipe | plain s/step | Matryoshka s/step | ratio | target ≤ 1.05 |", "|---|---:|---:|---:|---|"]
    for name, r in report["recipes"].items():
        lines.append(f"| {name} | {r['median_seconds']['plain']:.3f} | {r['median_seconds']['matryoshka']:.3f} | "
                     f"{r['ratio']:.3f} | {'yes' if r['meets_target'] else 'no'} |")
    write_atomic(args.out / "train_overhead.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
