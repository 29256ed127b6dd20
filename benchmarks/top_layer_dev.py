"""Choose the top-layer recipe of ``matryoshka compare --quick`` on STS-B *dev* (never test).

The last layer of all-MiniLM-L6-v2 is fine-tuned on cached inputs (:mod:`matryoshka.training.top_layer`) over
STS-B train's sentence pairs, self-distilled (the gold scores are not used), one epoch; each variant is
scored by Spearman on STS-B dev per dimension. Writes ``benchmarks/results/compare-quick/top-layer-dev.md``.
With ``--seeds``, trains only the chosen recipe and its standard twin once per seed, to see whether the
Matryoshka twin's lead at small sizes outlasts the seed (``top-layer-seeds-dev.md``).

    python benchmarks/top_layer_dev.py
    python benchmarks/top_layer_dev.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from matryoshka.data import load_sts
from matryoshka.evaluation.sts import evaluate_sts, sentence_rows
from matryoshka.files import write_atomic
from matryoshka.models.loading import load_model, quiet_loading
from matryoshka.training.top_layer import TopLayerConfig, cache_layer_inputs, tune_top_layer

DIMS = (384, 256, 128, 64, 32, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds: the chosen recipe and its twin only")
    args = parser.parse_args()
    quiet_loading()
    torch.set_num_threads(2)
    model = load_model(device="cpu")
    train, dev = load_sts("train"), load_sts("dev")
    texts, left, right = sentence_rows(train)
    inputs = cache_layer_inputs(model, texts)
    pairs = np.stack([left, right], axis=1)
    chosen = TopLayerConfig()
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    variants = {f"seed {seed}, {kind}": replace(chosen, seed=seed, matryoshka=kind == "matryoshka")
                for seed in seeds for kind in ("matryoshka", "standard twin")} if seeds else {
        "lr 5e-5, CoSENT only": replace(chosen, learning_rate=5e-5, inbatch_weight=0.0),
        "lr 5e-5, CoSENT + in-batch": replace(chosen, learning_rate=5e-5),
        "lr 1e-4, CoSENT + in-batch (chosen)": chosen,
        "lr 2e-4, CoSENT only": replace(chosen, learning_rate=2e-4, inbatch_weight=0.0),
        "standard twin: chosen, full size only": replace(chosen, matryoshka=False),
    }
    title = "Top-layer recipe and its twin over seeds" if seeds else "Top-layer recipe chosen"
    command = f"python benchmarks/top_layer_dev.py{f' --seeds {args.seeds}' if seeds else ''}"
    lines = [f"# {title} on STS-B dev (self-distilled on STS-B train pairs; Spearman x 100)", "",
             f"Command: `{command}`. One epoch (180 steps of 32 pairs), weights "
             f"{','.join(map(str, chosen.weights or ()))}, 2 threads; caching the last layer's inputs for "
             f"{len(texts):,} texts took {inputs.seconds:.0f} s.", "",
             "| variant | " + " | ".join(map(str, DIMS)) + " | seconds |", "|---|" + "---:|" * (len(DIMS) + 1)]

    scores: dict[str, dict[int, float]] = {}

    def row(name: str, scored: SentenceTransformer, seconds: float | None) -> None:
        score = scores[name] = evaluate_sts(scored, dev, DIMS, batch_size=128)
        lines.append(f"| {name} | " + " | ".join(f"{100 * score[d]:.2f}" for d in DIMS)
                     + f" | {'' if seconds is None else f'{seconds:.0f}'} |")
        print(lines[-1], flush=True)

    row("base", model, None)
    for name, config in variants.items():
        started = time.perf_counter()
        tuned = tune_top_layer(model, inputs, pairs, config)
        row(name, tuned, time.perf_counter() - started)
    name = "top-layer-dev.md"
    if seeds:
        name = "top-layer-seeds-dev.md"
        lines += ["", "Matryoshka twin minus standard twin, per seed (points):", "",
                  "| seed | " + " | ".join(map(str, DIMS)) + " |", "|---|" + "---:|" * len(DIMS)]
        for seed in seeds:
            ours, twin = scores[f"seed {seed}, matryoshka"], scores[f"seed {seed}, standard twin"]
            lines.append(f"| {seed} | " + " | ".join(f"{100 * (ours[d] - twin[d]):+.2f}" for d in DIMS) + " |")
    write_atomic(Path("benchmarks/results/compare-quick") / name, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
