"""Choose the retrieval fine-tuning recipe on a dev split carved out of SciFact *train* (never test).

The 809 train queries are split as in ``adaptor_dev.py`` (609 fit / 200 dev, seed 0). The fit pairs
are written to a JSONL file of (anchor, positive) rows and trained on through ``TrainConfig(data=...)``,
the path a user's own file takes. Each variant is a Matryoshka model; it is scored on the 200 dev
queries against the whole corpus. Variants train side by side, one thread each.

    python benchmarks/finetune_dev.py --out benchmarks/results/retrieval
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from matryoshka.data.beir import load_beir
from matryoshka.evaluation.retrieval import score_vectors
from matryoshka.models import load_model
from matryoshka.training import TrainConfig, train
from matryoshka.vector_cache import cached_encode

DIMS = (384, 256, 128, 64, 32, 16)
RECIPE = TrainConfig(objective="retrieval", learning_rate=2e-5, batch_size=32, epochs=3.0, show_progress_bar=False)


def _run(name: str, config: TrainConfig, out: Path, cache: Path, dev_ids: list[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    model = load_model(device="cpu")
    result = train(model, config, out / "models" / name)
    scifact = load_beir("scifact", split="train")
    doc_ids = list(scifact.corpus)
    docs = cached_encode(result.model, [scifact.corpus[i] for i in doc_ids], cache, out / "models" / name)
    queries = cached_encode(result.model, [scifact.queries[q] for q in dev_ids], cache, out / "models" / name)
    metrics = score_vectors({q: scifact.qrels[q] for q in dev_ids}, doc_ids, docs, dev_ids, queries, DIMS)
    return {"name": name, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
            "train": result.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval"))
    parser.add_argument("--work", type=Path, default=Path("runs/finetune-dev"))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from adaptor_dev import split_train

    scifact = load_beir("scifact", split="train")
    fit_ids, dev_ids = split_train(scifact.qrels, 200, 0)
    args.work.mkdir(parents=True, exist_ok=True)
    pairs = args.work / "fit-pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as handle:
        for q in fit_ids:
            for doc, relevance in scifact.qrels[q].items():
                if relevance > 0:
                    handle.write(json.dumps({"anchor": scifact.queries[q], "positive": scifact.corpus[doc]}) + "\n")
    base = replace(RECIPE, data=str(pairs))
    variants = {"mnrl": base, "mnrl+distill": replace(base, distill_weight=1.0)}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run, name, config, args.work, args.cache, dev_ids) for name, config in variants.items()]
        rows = [f.result() for f in futures]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune-dev.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Fine-tuning recipe chosen on dev (SciFact train: 609 fit / 200 dev queries)", "",
             "Command: `python benchmarks/finetune_dev.py`. Matryoshka models, nDCG@10 per dimension.", "",
             "| variant | " + " | ".join(map(str, DIMS)) + " | train s |", "|---|" + "---:|" * (len(DIMS) + 1)]
    lines += [f"| {r['name']} | " + " | ".join(f"{r['ndcg@10'][d]:.4f}" for d in DIMS) + f" | {r['train']['seconds']:.0f} |"
              for r in rows]
    (args.out / "finetune-dev.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
