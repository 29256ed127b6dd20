"""Choose the adaptor's settings on a dev split carved out of SciFact *train* (never on test).

The 809 SciFact train queries are split by a fixed seed into 609 for fitting and 200 for dev. Every
variant is fitted on the base model's vectors of the SciFact corpus (and, when supervised, the 609
queries' pairs) and scored on the 200 dev queries against the whole corpus, nDCG@10 per dimension.
NPL (no training split) scores the unsupervised variants, fitted on its own corpus.

    python benchmarks/adaptor_dev.py --out benchmarks/results/retrieval
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from matryoshka.adapt import LearnedConfig, fit_learned, fit_rotation
from matryoshka.data.beir import load_beir
from matryoshka.embeddings.cache import cached_encode
from matryoshka.evaluation.retrieval import score_vectors
from matryoshka.models.loading import load_model

DIMS = (384, 256, 128, 64, 32, 16)


def split_train(qrels: dict[str, dict[str, int]], dev_size: int, seed: int) -> tuple[list[str], list[str]]:
    """Train query ids split into (fit, dev) by a seeded permutation."""
    ids = sorted(qrels)
    order = np.random.default_rng(seed).permutation(len(ids))
    dev = sorted(ids[i] for i in order[:dev_size])
    fit = sorted(ids[i] for i in order[dev_size:])
    return fit, dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval"))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-npl", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model()
    train = load_beir("scifact", split="train")
    doc_ids = list(train.corpus)
    docs = cached_encode(model, [train.corpus[i] for i in doc_ids], args.cache, None, show_progress_bar=True)
    fit_ids, dev_ids = split_train(train.qrels, args.dev_size, args.seed)
    qvec = dict(zip(train.queries, cached_encode(model, list(train.queries.values()), args.cache, None)))
    row = {d: i for i, d in enumerate(doc_ids)}
    pairs_q = np.stack([qvec[q] for q in fit_ids for d, r in train.qrels[q].items() if r > 0 and d in row])
    pairs_d = np.stack([docs[row[d]] for q in fit_ids for d, r in train.qrels[q].items() if r > 0 and d in row])
    dev_qrels = {q: train.qrels[q] for q in dev_ids}
    dev_q = np.stack([qvec[q] for q in dev_ids])

    def score(name: str, adaptor=None, corpus=docs, ids=doc_ids, qrels=dev_qrels, queries=dev_q, qids=dev_ids):
        d = adaptor.apply(corpus) if adaptor else corpus
        q = adaptor.apply(queries) if adaptor else queries
        metrics = score_vectors(qrels, ids, d, qids, q, DIMS)
        return {"name": name, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"]}

    rows = [score("base")]
    rows.append(score("rotation (centered axes)", fit_rotation(docs, center=True)))
    rows.append(score("rotation (uncentered)", fit_rotation(docs, center=False)))
    for r in rows:
        print(json.dumps(r), flush=True)
    base = LearnedConfig(steps=300, threads=args.threads)
    unsup = {
        "unsup default": base,
        "unsup lr 3e-3": replace(base, learning_rate=3e-3),
        "unsup steps 1000": replace(base, steps=1000),
        "unsup keep 0.1": replace(base, keep_weight=0.1),
        "unsup topk 0 (pairwise only)": replace(base, topk_weight=0.0),
        "unsup orthogonal": replace(base, orthogonal=True),
    }
    sup = {
        "sup default": base,
        "sup steps 1000": replace(base, steps=1000),
        "sup steps 2000": replace(base, steps=2000),
        "sup lr 3e-3": replace(base, learning_rate=3e-3),
        "sup keep 0.1": replace(base, keep_weight=0.1),
        "sup keep 0": replace(base, keep_weight=0.0),
        "sup rank 3": replace(base, rank_weight=3.0),
        "sup unsup terms 0.3": replace(base, pair_weight=0.3, topk_weight=0.3),
    }
    timings = {}
    for name, config in unsup.items():
        started = time.perf_counter()
        rows.append(score(name, fit_learned(docs, config)))
        timings[name] = round(time.perf_counter() - started, 1)
        print(json.dumps(rows[-1]), flush=True)
    for name, config in sup.items():
        started = time.perf_counter()
        rows.append(score(name, fit_learned(docs, config, (pairs_q, pairs_d))))
        timings[name] = round(time.perf_counter() - started, 1)
        print(json.dumps(rows[-1]), flush=True)

    npl_rows = []
    if not args.no_npl:
        npl = load_beir("npl", split="test")
        npl_ids = list(npl.corpus)
        npl_docs = cached_encode(model, [npl.corpus[i] for i in npl_ids], args.cache, None, show_progress_bar=True)
        npl_qids = list(npl.queries)
        npl_q = cached_encode(model, [npl.queries[i] for i in npl_qids], args.cache, None)
        kw = {"corpus": npl_docs, "ids": npl_ids, "qrels": npl.qrels, "queries": npl_q, "qids": npl_qids}
        npl_rows.append(score("base", None, **kw))
        npl_rows.append(score("rotation (centered axes)", fit_rotation(npl_docs, center=True), **kw))
        npl_rows.append(score("rotation (uncentered)", fit_rotation(npl_docs, center=False), **kw))
        for name, config in unsup.items():
            npl_rows.append(score(name, fit_learned(npl_docs, config), **kw))
            print(json.dumps(npl_rows[-1]), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dev.json").write_text(json.dumps({"scifact_train_dev": rows, "npl": npl_rows, "seconds": timings,
                                                   "fit_queries": len(fit_ids), "dev_queries": len(dev_ids),
                                                   "fit_pairs": len(pairs_q)}, indent=2) + "\n")
    lines = [f"# Adaptor settings chosen on dev (SciFact train split: {len(fit_ids)} fit / {len(dev_ids)} dev queries)",
             "", "Command: `python benchmarks/adaptor_dev.py`. nDCG@10 per dimension; no test query is used.", ""]
    for title, table in (("SciFact train → dev queries", rows), ("NPL (unsupervised, fitted on its corpus)", npl_rows)):
        if not table:
            continue
        lines += [f"## {title}", "", "| variant | " + " | ".join(map(str, DIMS)) + " |", "|---|" + "---:|" * len(DIMS)]
        lines += [f"| {r['name']} | " + " | ".join(f"{r['ndcg@10'][d]:.4f}" for d in DIMS) + " |" for r in table]
        lines.append("")
    (args.out / "dev.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
