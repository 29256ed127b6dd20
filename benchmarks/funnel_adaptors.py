"""Which Matryoshka vectors give the cheapest funnel at 1M: the rotation or a learned adaptor (dev only).

``benchmarks/funnel.py`` runs its funnels on the rotation of the base model onto the corpus's principal
axes. This script asks whether the learned adaptors of :func:`matryoshka.adapt.fit_learned` (issue
"Matryoshka that holds up on search") make a shorter 64-dim shortlist hold recall@10 0.99, which is what
the funnel's batch-1 speed depends on. It uses the same corpus, queries, 1M scale-up and dev split as
``funnel.py`` and reports **dev queries only**: it is for choosing the vectors, not for verdicts.

- **Vectors**: the 134,271 real corpus vectors are scaled up to ``--n`` in the base model's space, as
  ``funnel.py`` does, and every adaptor is applied to all of them (so each synthetic copy is what the
  adapted model would give for it). The adaptors are fitted on the real vectors only:
  ``fit_rotation``, and ``fit_learned`` with its defaults, once kept orthogonal (a rotation: full-size
  cosines and exact search stay the base model's) and once free (a general linear map: the full-size
  space itself changes, so its exact top 10 is reported beside the base model's). Fitted adaptors are
  cached under ``--cache``.
- **Shortlist recall**: recall@10 of an exact 64-dim cosine shortlist of 1,000 to 8,000, against exact
  full-size search on the same vectors.
- **Funnels**: ``ivfpq`` funnels of several sizes on each set of vectors; recall on dev and queries/s at
  batch 1 and 1 thread (medians of ``--rounds`` interleaved rounds over every set and funnel).

    python benchmarks/funnel_adaptors.py            # ~20 minutes on 2 cores the first time (two fits)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from funnel import (  # noqa: E402
    apply_in_blocks,
    cached_encode,
    load_corpus_texts,
    load_query_texts,
    log,
    measure_qps,
    prepared_search,
    scale_up,
    write_atomic,
)
from funnel import parse_args as funnel_args  # noqa: E402
from matryoshka.adapt import Adaptor, LearnedConfig, fit_learned, fit_rotation  # noqa: E402
from matryoshka.indexes.faiss import FunnelIndex  # noqa: E402
from matryoshka.indexes.faiss.exact import top_k_inner_product  # noqa: E402
from matryoshka.retrieval import parse_stages  # noqa: E402

SPECS = (
    "64:ivfpq:8000:640,128:int8:400,full:float32:10",
    "64:ivfpq:6000:512,128:int8:500,full:float32:10",
    "64:ivfpq:4000:384,128:int8:400,full:float32:10",
    "64:ivfpq:3000:320,128:int8:300,full:float32:10",
)
KEEPS = (1000, 2000, 4000, 8000)
PREFIX = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=LearnedConfig.steps, help="steps of each learned fit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    fargs = funnel_args(["--n", str(args.n), "--cache", str(args.cache)])
    started = time.time()

    corpus, _, every_text = load_corpus_texts(fargs.max_texts, fargs.seed)
    query_texts, _ = load_query_texts(fargs.queries, fargs.seed, exclude=every_text)
    real = cached_encode(corpus, fargs, "corpus")
    queries = cached_encode(query_texts, fargs, "queries")
    split = np.random.default_rng(fargs.seed + 2).permutation(len(queries))
    dev = queries[np.sort(split[: len(split) // 2])]  # the split funnel.py chooses its configs on

    adaptors = {"rotation": fit_seconds(lambda: fit_rotation(real))}
    for name, orthogonal in (("learned, orthogonal", True), ("learned, free", False)):
        config = LearnedConfig(steps=args.steps, orthogonal=orthogonal, threads=2)
        adaptors[name] = cached_fit(real, config, args.cache)

    base = scale_up(real, args.n, fargs.noise, fargs.seed, shape=fargs.noise_shape)
    with threadpool_limits(2):
        _, base_truth = top_k_inner_product(dev, base, 10, block_rows=16_384)
    rows: list[dict[str, Any]] = []
    searchers: dict[tuple[str, str], tuple[Any, np.ndarray]] = {}
    for name, (adaptor, seconds) in adaptors.items():
        vectors = apply_in_blocks(adaptor.weight, base)
        view_queries = adaptor.apply(dev)
        with threadpool_limits(2):
            _, truth = top_k_inner_product(view_queries, vectors, 10, block_rows=16_384)
            prefixes = vectors[:, :PREFIX] / np.linalg.norm(vectors[:, :PREFIX], axis=1, keepdims=True)
            query_prefixes = view_queries[:, :PREFIX] / np.linalg.norm(view_queries[:, :PREFIX], axis=1, keepdims=True)
            _, shortlist = top_k_inner_product(query_prefixes, prefixes, max(KEEPS), block_rows=16_384)
        del prefixes
        row: dict[str, Any] = {
            "vectors": name, "fit_seconds": round(seconds, 1),
            "full_size_agreement": recall(truth, base_truth),
            "shortlist_recall": {str(keep): recall(shortlist[:, :keep], truth) for keep in KEEPS},
            "funnels": [],
        }
        log(f"{name}: fitted in {seconds:.0f}s, agreement {row['full_size_agreement']:.4f}, shortlist {row['shortlist_recall']}")
        index = FunnelIndex.from_vectors(vectors, [str(i) for i in range(len(vectors))])
        index.view_cache_bytes = 1 << 40
        del vectors
        for spec in SPECS:
            search, build = prepared_search(index, parse_stages(spec), 10, build_threads=2)
            with threadpool_limits(1):
                found = np.concatenate([search(view_queries[i : i + 64]) for i in range(0, len(view_queries), 64)])
            row["funnels"].append({"spec": spec, "recall": recall(found, truth), "build_seconds": round(build, 1)})
            searchers[(name, spec)] = (search, view_queries)
            log(f"  {spec}: recall {row['funnels'][-1]['recall']:.4f}")
        rows.append(row)

    faiss.omp_set_num_threads(1)
    measured: dict[tuple[str, str], list[float]] = {key: [] for key in searchers}
    with threadpool_limits(1):
        for round_ in range(args.rounds):
            for key, (search, view_queries) in searchers.items():
                measured[key].append(measure_qps(search, view_queries, 1, args.min_time))
            log(f"round {round_ + 1}/{args.rounds} done")
    for row in rows:
        for funnel in row["funnels"]:
            runs = measured[(row["vectors"], funnel["spec"])]
            funnel["qps_batch1"], funnel["qps_runs"] = round(float(np.median(runs)), 1), [round(r, 1) for r in runs]

    report = {"benchmark": "funnel_adaptors", "command": "python benchmarks/funnel_adaptors.py " + " ".join(sys.argv[1:]),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(time.time() - started, 1),
              "n": len(base), "dev_queries": len(dev), "steps": args.steps, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "funnel_adaptors.json", json.dumps(report, indent=1) + "\n")
    write_atomic(args.out / "funnel_adaptors.md", markdown(report))
    log(f"wrote funnel_adaptors.json and funnel_adaptors.md under {args.out}")
    return 0


def fit_seconds(fit: Any) -> tuple[Adaptor, float]:
    started = time.perf_counter()
    adaptor = fit()
    return adaptor, time.perf_counter() - started


def cached_fit(real: np.ndarray, config: LearnedConfig, cache: Path) -> tuple[Adaptor, float]:
    """``fit_learned(real, config)``, saved under ``cache`` by a hash of the vectors and the settings."""
    key = hashlib.sha256(real[:: max(1, len(real) // 4096)].tobytes() + repr(config).encode()).hexdigest()[:16]
    path, meta = cache / f"adaptor-{key}.safetensors", cache / f"adaptor-{key}.json"
    if path.exists() and meta.exists():
        log(f"adaptor (orthogonal={config.orthogonal}) from cache {path}")
        return Adaptor.load(path), json.loads(meta.read_text())["fit_seconds"]
    log(f"fitting the learned adaptor (orthogonal={config.orthogonal}, {config.steps} steps) on {len(real):,} vectors")
    adaptor, seconds = fit_seconds(lambda: fit_learned(real, config))
    cache.mkdir(parents=True, exist_ok=True)
    adaptor.save(path)
    write_atomic(meta, json.dumps({"fit_seconds": seconds}))
    return adaptor, seconds


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``found``."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def markdown(report: dict) -> str:
    lines = ["# Funnel vectors: the rotation against learned adaptors (dev queries only)", "",
             f"Command: `{report['command'].strip()}` ({report['created']}, {report['seconds']:.0f} s). "
             f"N = {report['n']:,} vectors (the corpus and scale-up of `funnel.py`), {report['dev_queries']} dev "
             f"queries of `funnel.py`'s split. Learned adaptors: `fit_learned` defaults, {report['steps']} steps, "
             "fitted on the 134,271 real vectors on 2 threads. Recall@10 is against exact full-size search on "
             "the same vectors; *agreement* is the overlap of that exact top 10 with the base model's own "
             "(1.0 for any rotation).", "",
             "## Exact 64-dim shortlist", "",
             "| vectors | fit s | agreement | " + " | ".join(f"keep {k:,}" for k in KEEPS) + " |",
             "|---|---:|---:|" + "---:|" * len(KEEPS)]
    for row in report["rows"]:
        cells = " | ".join(f"{row['shortlist_recall'][str(k)]:.4f}" for k in KEEPS)
        lines.append(f"| {row['vectors']} | {row['fit_seconds']:,.1f} | {row['full_size_agreement']:.4f} | {cells} |")
    lines += ["", "## ivfpq funnels, batch 1, 1 thread", "",
              "q/s: median of the interleaved rounds (every set of vectors and funnel once per round).", "",
              "| vectors | funnel | recall@10 dev | q/s batch 1 | runs |", "|---|---|---:|---:|---|"]
    for row in report["rows"]:
        for funnel in row["funnels"]:
            lines.append(f"| {row['vectors']} | `{funnel['spec']}` | {funnel['recall']:.4f} | {funnel['qps_batch1']:.1f} | "
                         + ", ".join(f"{r:.0f}" for r in funnel["qps_runs"]) + " |")
    lines += ["", "Fastest funnel at dev recall ≥ 0.99 per set of vectors:", ""]
    for row in report["rows"]:
        eligible = [f for f in row["funnels"] if f["recall"] >= 0.99]
        best = max(eligible, key=lambda f: f["qps_batch1"], default=None)
        lines.append(f"- {row['vectors']}: " + (f"`{best['spec']}`, {best['recall']:.4f}, {best['qps_batch1']:.1f} q/s"
                                                if best else "none reaches 0.99"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
