"""Choose the STS-B adaptor recipe of ``matryoshka compare`` on STS-B *dev* (never test).

Every variant is fitted on the base model's vectors of the STS-B train sentences with the CoSENT term
on the train pairs' gold scores (and the unsupervised terms), then scored by Spearman on STS-B dev
per dimension. Writes ``benchmarks/results/compare-quick/sts-dev.md``.

    python benchmarks/sts_adaptor_dev.py
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from matryoshka.adapt import Adaptor, LearnedConfig, fit_learned, fit_rotation
from matryoshka.data import load_sts
from matryoshka.embeddings.cache import cached_encode
from matryoshka.evaluation.sts import sentence_rows, spearman_by_dim
from matryoshka.files import write_atomic
from matryoshka.models.loading import load_model

DIMS = (384, 256, 128, 64, 32, 16)


def main() -> None:
    torch.set_num_threads(1)
    model = load_model()
    train, dev = load_sts("train"), load_sts("dev")
    texts, train_left, train_right = sentence_rows(train)
    vectors = cached_encode(model, texts, "runs/cache", None)
    scored = (vectors[train_left], vectors[train_right], np.array([p.score for p in train], dtype=np.float32))
    dev_texts, left, right = sentence_rows(dev)
    dev_vectors = cached_encode(model, dev_texts, "runs/cache", None)
    gold = [p.score for p in dev]
    identity = Adaptor(np.eye(vectors.shape[1], dtype=np.float32), method="identity")
    base = LearnedConfig(steps=300, threads=1)
    chosen = replace(base, learning_rate=3e-4, keep_weight=10.0)
    variants: dict[str, Adaptor | None] = {"base": None, "rotation (fitted on STS-B train sentences)": fit_rotation(vectors)}
    for name, config, start in [
        ("lr 1e-3, start at the rotation", base, fit_rotation(vectors)),
        ("lr 1e-3", base, identity),
        ("lr 1e-4", replace(base, learning_rate=1e-4), identity),
        ("lr 3e-4", replace(base, learning_rate=3e-4), identity),
        ("lr 3e-4, keep 10 (chosen)", chosen, identity),
        ("lr 3e-4, keep 10, 1,000 steps", replace(chosen, steps=1000), identity),
        ("lr 3e-4, keep 10, CoSENT only", replace(chosen, pair_weight=0.0, topk_weight=0.0), identity),
        ("standard twin: chosen, full size only", replace(chosen, dims=(384,)), identity),
    ]:
        variants[name] = fit_learned(vectors, config, init=start, scored_pairs=scored)
    lines = ["# STS-B adaptor recipe chosen on STS-B dev (fitted on STS-B train; Spearman x 100)", "",
             "Command: `python benchmarks/sts_adaptor_dev.py`. Variants start at the identity unless named.", "",
             "| variant | " + " | ".join(map(str, DIMS)) + " |", "|---|" + "---:|" * len(DIMS)]
    for name, adaptor in variants.items():
        mapped = adaptor.apply(dev_vectors) if adaptor is not None else dev_vectors
        score = spearman_by_dim(mapped[left], mapped[right], gold, DIMS)
        lines.append(f"| {name} | " + " | ".join(f"{100 * score[d]:.2f}" for d in DIMS) + " |")
        print(lines[-1], flush=True)
    out = Path("benchmarks/results/compare-quick/sts-dev.md")
    write_atomic(out, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
