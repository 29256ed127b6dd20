"""Search at this machine's limits: Matryoshka-prefix funnels against a strong exact baseline and HNSW.

Corpus: real embeddings (packaged all-MiniLM-L6-v2, 384 dims) of every local text collection:
WordNet 3.0 glosses (definitions only), SciFact abstracts and NPL documents, 134,271 vectors, encoded
once and cached as .npy under ``--cache`` (OpenVINO backend by default: cosine >= 0.9999 against torch).

Matryoshka vectors: the base model is not a Matryoshka model, so the funnels run on its rotation onto
the principal axes of the real corpus (:func:`matryoshka.adapt.fit_rotation`: an orthogonal map, so
full-size cosines, exact search and full-vector HNSW are unchanged, while the leading dimensions carry
the most variance). The base model's own vectors run the same prefix funnels beside them.

Scaling to ``--n``: rows beyond the real ones are noisy copies. Copy ``i`` is real vector
``i mod B`` plus Gaussian noise shaped like the real corpus (covariance proportional to the corpus's,
so it varies the leading principal directions most, as real neighbours differ; ``--noise-shape
isotropic`` spreads it evenly instead), scaled so its expected norm is ``--noise``, then
re-normalized. The real vectors come first and are never altered. Copies make neighbourhoods denser
than a real corpus of that size would be (near-duplicates compete for the top 10).

Queries: held-out real texts never in the corpus (WordNet example sentences, SciFact claims, NPL
queries), split by a seeded shuffle into a dev half and a test half. Every config reports recall@10
on both; configs are chosen by their dev recall, and the verdicts quote test recall as measured.
Ground truth: exact full-size inner-product search over all ``--n`` vectors.

Measured in one process, at 1 thread (FAISS OpenMP and the BLAS), batch 1 and batch 32:

- exact search two ways: ``faiss.knn`` and the index's exact stage
  (:func:`matryoshka.indexes.faiss.exact.top_k_inner_product`, blocked numpy products), against the
  memory bandwidth (numpy sum over a large array) and the matrix-product peak (a 4096² numpy product),
  both measured in the same run;
- funnels (:class:`matryoshka.retrieval.FunnelIndex`): a 32/64/128-dim prefix as float32, int8,
  binary, an HNSW graph, inverted lists of float prefixes (``ivf``) or of 4-bit codes (``ivfpq``),
  re-ranked on the full vector (the ``ivfpq`` funnels first on int8 codes of the 128-dim prefix;
  some end in a ``graph`` stage that adds the hits' neighbours in a graph of the full vectors);
- the peers users pick instead: FAISS ``IndexHNSWFlat`` and usearch HNSW over the full vectors, at
  six ``ef`` each (128 to 1024). Graph builds (peers and prefix graphs alike) use ``--build-threads`` threads.

    python benchmarks/funnel.py                              # N = 1,000,000 (encodes 134k texts once)
    python benchmarks/funnel.py --n 50000 --max-texts 5000 --min-time 0.3 --out /tmp/funnel   # quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from matryoshka.adapt import fit_rotation  # noqa: E402
from matryoshka.indexes.faiss import FunnelIndex  # noqa: E402
from matryoshka.indexes.faiss.approximate import hnsw_link_bytes  # noqa: E402
from matryoshka.indexes.faiss.exact import ColumnBlocks, top_k_inner_product  # noqa: E402
from matryoshka.retrieval import Stage, format_stages, parse_stages  # noqa: E402

ROOT = Path(__file__).resolve().parent
#: Funnels on the rotated (Matryoshka) vectors.
ROTATED_FUNNELS = (
    "32:float32:4000,full:float32:10",
    "64:float32:4000,full:float32:10",
    "128:float32:1000,full:float32:10",
    "32:int8:4000,full:float32:10",
    "64:int8:4000,full:float32:10",
    "128:int8:1000,full:float32:10",
    "64:binary:8000,full:float32:10",
    "128:binary:4000,full:float32:10",
    "64:ivf:4000:32,full:float32:10",
    "64:ivf:4000:64,full:float32:10",
    "64:ivf:8000:64,full:float32:10",
    "64:ivf:8000:128,full:float32:10",
    "64:ivf:8000:64,128:float32:1000,full:float32:10",
    "64:hnsw:2000,full:float32:10",
    "64:hnsw:4000,full:float32:10",
    "64:ivfpq:6000:512,128:int8:500,full:float32:10",
    "64:ivfpq:8000:640,128:int8:400,full:float32:10",
    "64:ivfpq:8000:768,128:int8:500,full:float32:10",
    "64:ivfpq:10000:1024,128:int8:500,full:float32:10",
    "32:ivfpq:10000:1024,128:int8:500,full:float32:10",
    "64:ivfpq:4000:320,128:int8:400,full:float32:10,full:graph:10",
    "64:ivfpq:4000:384,128:int8:300,full:float32:20,full:graph:10",
    "64:ivfpq:4500:384,128:int8:300,full:float32:20,full:graph:10",
    "64:ivfpq:5000:400,128:int8:400,full:float32:10,full:graph:10",
    "64:ivfpq:5000:400,128:int8:400,full:float32:20,full:graph:10",
    "64:ivfpq:6000:480,128:int8:400,full:float32:10,full:graph:10",
    "64:ivfpq:8000:640,128:int8:400,full:float32:10,full:graph:10",
)
#: The same kinds of funnel on the base model's own vectors.
BASE_FUNNELS = (
    "64:float32:4000,full:float32:10",
    "64:int8:4000,full:float32:10",
    "64:ivf:8000:64,full:float32:10",
    "64:ivfpq:8000:768,128:int8:500,full:float32:10",
    "full:binary:4000,full:float32:10",
)
#: Search widths of the HNSW peers: fine enough near recall 0.99 that the fastest peer config at that
#: recall is not flattered by a coarse grid (usearch at ef 384 holds 0.99 where 512 overshoots).
PEER_EF = (128, 256, 384, 512, 768, 1024)
FAISS_HNSW_M = 32  # FAISS's IndexHNSWFlat(d, 32), efConstruction 40: its documented default
USEARCH_CONNECTIVITY, USEARCH_EXPANSION_ADD = 16, 128  # usearch's defaults
BATCHES = (1, 32)
EXACT_INDEX = "exact: index exact stage (column blocks)"
EXACT_ROWS = "exact: index exact stage (stored rows)"
TARGETS = {"recall": 0.99, "speedup_batch1": 30.0, "speedup_batch32": 5.0, "max_first_dim": 64,
           "build_speedup": 5.0, "bandwidth_share": 0.8, "peak_share": 0.5}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:  # rewrite the Markdown and plot from a saved funnel.json (no measurement)
        write_report(json.loads(args.render.read_text()), args.out)
        return 0
    started = time.time()
    load_at_start = os.getloadavg()
    log(f"funnel benchmark: N={args.n:,}, queries={args.queries:,} (dev + test), noise={args.noise} ({args.noise_shape})")
    corpus, sources, every_text = load_corpus_texts(args.max_texts, args.seed)
    query_texts, query_sources = load_query_texts(args.queries, args.seed, exclude=every_text)
    del every_text
    real = cached_encode(corpus, args, "corpus")
    queries = cached_encode(query_texts, args, "queries")
    if args.encode_only:
        return 0
    split = np.random.default_rng(args.seed + 2).permutation(len(queries))
    dev_rows, test_rows = np.sort(split[: len(split) // 2]), np.sort(split[len(split) // 2 :])

    rotation_started = time.perf_counter()
    rotation = fit_rotation(real)
    rotation_seconds = time.perf_counter() - rotation_started
    base = scale_up(real, args.n, args.noise, args.seed, shape=args.noise_shape)
    del real
    rotated = apply_in_blocks(rotation.weight, base)
    views = {"base": (base, queries), "rotated": (rotated, apply_in_blocks(rotation.weight, queries))}
    log(f"vectors: {len(base):,} × {base.shape[1]} ({base.nbytes / 1e9:.2f} GB each); rotation fitted in {rotation_seconds:.1f}s")

    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        probes = measure_bandwidth(args.bandwidth_mb)
        machine = {"bandwidth_gb_s": max(probes.values()), "bandwidth_probes": probes, "peak_gflops": measure_peak()}
    log(f"machine at 1 thread: bandwidth {machine['bandwidth_gb_s']:.1f} GB/s, matrix-product peak {machine['peak_gflops']:.1f} GFLOP/s")

    with threadpool_limits(args.build_threads):
        _, truth = top_k_inner_product(queries, base, args.k, block_rows=16_384)
    truth_sets = [set(row.tolist()) for row in truth]

    def recalls(found: np.ndarray, asked: np.ndarray | None = None) -> dict[str, float]:
        """Mean recall@k of ``found`` (rows for the queries ``asked``, default all) per split."""
        asked = np.arange(len(queries)) if asked is None else asked
        hit = dict(zip(asked.tolist(), (len(truth_sets[i] & set(row.tolist())) / args.k for i, row in zip(asked, found))))
        return {name: float(np.mean([hit[i] for i in split if i in hit])) for name, split in
                (("dev", dev_rows.tolist()), ("test", test_rows.tolist()))}

    test_queries = {name: q[test_rows] for name, (_, q) in views.items()}
    rows: list[dict[str, Any]] = []
    searchers: dict[str, tuple[Any, np.ndarray]] = {}  # config -> (search, its test queries), for the head to head

    # exact search, three implementations; the index's exact stage scans a column-block copy
    with threadpool_limits(1):
        copy_started = time.perf_counter()
        columns = ColumnBlocks.from_rows(base)
        copy_seconds = time.perf_counter() - copy_started

    def faiss_exact(q: np.ndarray) -> np.ndarray:
        return faiss.knn(q, base, args.k, faiss.METRIC_INNER_PRODUCT)[1]

    def row_blocks(q: np.ndarray) -> np.ndarray:
        return top_k_inner_product(q, base, args.k)[1]

    def column_blocks(q: np.ndarray) -> np.ndarray:
        return top_k_inner_product(q, columns, args.k)[1]

    probe = np.concatenate([dev_rows[:64], test_rows[:64]])  # exact at 1 thread is slow: recall on 128 queries
    for name, search, build, structure, total in (
        ("exact: faiss.knn", faiss_exact, 0.0, base.nbytes, base.nbytes),
        (EXACT_ROWS, row_blocks, 0.0, base.nbytes, base.nbytes),
        (EXACT_INDEX, column_blocks, copy_seconds, columns.nbytes, base.nbytes + columns.nbytes),
    ):
        with threadpool_limits(1):
            found = np.concatenate([search(queries[probe[i : i + 64]]) for i in range(0, len(probe), 64)])
            qps = {b: measure_qps(search, test_queries["base"], b, args.min_time) for b in BATCHES}
        rows.append(result_row(name, "exact", recalls(found, probe), qps, build, structure=structure, total=total, n=len(base)))
        searchers[name] = (search, test_queries["base"])
        log(f"{name:<48} " + row_text(rows[-1]))

    # funnels
    for view, specs in (("rotated", args.rotated), ("base", args.base)):
        vectors, view_queries = views[view]
        index = FunnelIndex.from_vectors(vectors, [str(i) for i in range(len(vectors))], model_name=f"{args.model} ({view})")
        index.view_cache_bytes = 1 << 40  # keep every view this run builds
        for spec in specs:
            stages = parse_stages(spec)
            search, build, graph_build = prepared_search(index, stages, args.k, args.build_threads)
            with threadpool_limits(1):
                found = np.concatenate([search(view_queries[i : i + 64]) for i in range(0, len(view_queries), 64)])
                qps = {b: measure_qps(search, test_queries[view], b, args.min_time) for b in BATCHES}
            structure = index.view_bytes(stages)
            built = build + (rotation_seconds if view == "rotated" else 0.0)
            rows.append(result_row(f"{view}: {format_stages(stages)}", "funnel", recalls(found), qps, built,
                                   structure=structure, total=structure + index.memory_bytes() - index.view_bytes(),
                                   n=len(index), first_dim=stages[0].dim or index.dim, first_codec=stages[0].codec,
                                   view=view, view_build_seconds=built, graph_build_seconds=graph_build))
            searchers[rows[-1]["config"]] = (search, test_queries[view])
            log(f"{rows[-1]['config']:<48} " + row_text(rows[-1]))

    # peers: HNSW over the full vectors
    for peer in (faiss_hnsw, usearch_hnsw):
        build, structure, by_ef = peer(base, args)
        for ef, search in by_ef:
            with threadpool_limits(1):
                found = np.concatenate([search(queries[i : i + 64]) for i in range(0, len(queries), 64)])
                qps = {b: measure_qps(search, test_queries["base"], b, args.min_time) for b in BATCHES}
            name = f"{peer.__name__.replace('_', ' ')}: ef={ef}"
            rows.append(result_row(name, "hnsw", recalls(found), qps, build, structure=structure, total=structure, n=len(base)))
            searchers[name] = (search, test_queries["base"])
            log(f"{name:<48} " + row_text(rows[-1]))

    head_to_head = measure_head_to_head(rows, searchers, args.rounds, args.min_time)

    report = {
        "benchmark": "funnel",
        "command": "python benchmarks/funnel.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "environment": {**environment(), "load_average_at_start": load_at_start},
        "data": {
            "n": len(base), "dim": int(base.shape[1]), "real_vectors": min(len(corpus), args.n),
            "synthetic_vectors": max(0, args.n - len(corpus)), "corpus_sources": sources,
            "scaling": SCALING[args.noise_shape], "noise": args.noise, "noise_shape": args.noise_shape,
            "queries": {"dev": len(dev_rows), "test": len(test_rows)}, "query_sources": query_sources,
            "model": args.model, "backend": args.backend, "seed": args.seed,
            "rotation": {"fitted_on": "the real corpus vectors", "seconds": rotation_seconds},
        },
        "k": args.k,
        "threads": {"search": 1, "build": args.build_threads},
        "machine": machine,
        "targets": TARGETS,
        "results": rows,
        "head_to_head": head_to_head,
    }
    write_report(report, args.out)
    log(f"wrote funnel.json, funnel.md and funnel.png under {args.out} in {time.time() - started:.0f}s")
    return 0


def prepared_search(index: FunnelIndex, stages: list[Stage], k: int, build_threads: int) -> tuple[Any, float, float]:
    """Build the views ``stages`` scan (on ``build_threads``, timed) and return a search of ``k`` hits
    per query through them, as an array of row numbers (ids are row numbers here), with the seconds of
    the build: the other views', then the neighbour graph's (``graph`` stages) on its own.
    FAISS is left at 1 thread, as every search is measured."""
    faiss.omp_set_num_threads(build_threads)
    with threadpool_limits(build_threads):
        started = time.perf_counter()
        index.prepare([stage for stage in stages if stage.codec != "graph"])
        build = time.perf_counter() - started
        index.prepare(stages)
        graph_build = time.perf_counter() - started - build
    faiss.omp_set_num_threads(1)

    def search(q: np.ndarray) -> np.ndarray:
        return np.array([[int(h.id) for h in hits] for hits in index.search(q, k=k, stages=stages)])

    return search, build, graph_build


def write_report(report: dict, out: Path) -> None:
    """Verdicts, then funnel.json, funnel.md and funnel.png under ``out`` (``--render`` starts here)."""
    shared_view_builds(report["results"])
    report["verdicts"] = verdicts(report)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "funnel.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "funnel.md", markdown(report))
    plot(report, out / "funnel.png")


def shared_view_builds(rows: list[dict]) -> None:
    """Configs that share a first-stage view (same vectors, dim and codec) were timed building it only the
    first time; give each of them that build time (the rotated ones keep the rotation's seconds on top),
    plus the neighbour graph's build for configs with a ``graph`` stage (one graph per set of vectors).
    The sums come from the measurements each row keeps, so rendering a report again gives the same."""
    builds: dict[tuple, float] = {}
    graphs: dict[str, float] = {}
    for row in rows:
        if row["kind"] == "funnel":
            key = (row["view"], row["first_dim"], row["first_codec"])
            builds[key] = max(builds.get(key, 0.0), row.get("view_build_seconds", row["build_seconds"]))
            graphs[row["view"]] = max(graphs.get(row["view"], 0.0), row.get("graph_build_seconds", 0.0))
    for row in rows:
        if row["kind"] == "funnel":
            row["build_seconds"] = builds[(row["view"], row["first_dim"], row["first_codec"])]
            if ":graph:" in row["config"]:
                row["build_seconds"] += graphs[row["view"]]


SCALING = {
    "corpus": "copy i = normalize(real[i mod B] + e), e ~ N(0, c·Σ), Σ the real corpus's covariance, c so that E|e| = noise",
    "isotropic": "copy i = normalize(real[i mod B] + e), e ~ N(0, (noise/sqrt(dim))² I)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out real query texts, split dev/test (default 1000)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where encoded vectors and peer graphs are cached")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="directory for funnel.json/.md/.png")
    parser.add_argument("--max-texts", type=int, default=None, help="encode at most this many corpus texts (a seeded sample)")
    parser.add_argument("--noise", type=float, default=0.5, help="expected norm of the noise added to each synthetic copy")
    parser.add_argument("--noise-shape", choices=tuple(SCALING), default="corpus", help="covariance of that noise")
    parser.add_argument("--rotated", nargs="*", default=list(ROTATED_FUNNELS), help="funnels on the rotated vectors")
    parser.add_argument("--base", nargs="*", default=list(BASE_FUNNELS), help="funnels on the base model's vectors")
    parser.add_argument("--min-time", type=float, default=1.5, help="seconds of timed searches per config and batch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the head to head (median reported)")
    parser.add_argument("--bandwidth-mb", type=int, default=1024, help="array size for the bandwidth measurement")
    parser.add_argument("--build-threads", type=int, default=2, help="threads for every graph build (default 2)")
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="embedding model (default: the packaged one)")
    parser.add_argument("--backend", default="openvino", choices=("torch", "onnx", "openvino"),
                        help="encoding backend (default openvino: cosine >= 0.9999 against torch, ~3x faster)")
    parser.add_argument("--encode-only", action="store_true", help="encode and cache the texts, then stop")
    parser.add_argument("--render", type=Path, default=None, help="re-render funnel.md/.png from this funnel.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_corpus_texts(max_texts: int | None, seed: int) -> tuple[list[str], dict[str, int], set[str]]:
    """WordNet definitions, SciFact abstracts and NPL documents; a seeded sample of ``max_texts``.

    Also returns every corpus text (before sampling), which queries must not repeat.
    """
    from matryoshka.data.beir import read_beir_corpus, resolve_beir_dir
    from matryoshka.data.local import find_file
    from matryoshka.data.wordnet import read_synsets

    parts = {"wordnet": [definition(s.gloss) for s in read_synsets() if definition(s.gloss)]}
    for name in ("scifact", "npl"):
        directory = resolve_beir_dir(name)
        if directory is None:
            raise SystemExit(f"set MATRYOSHKA_DATA to the shared data directory (no local {name})")
        parts[name] = list(read_beir_corpus(find_file(directory, "corpus.jsonl")).values())
    texts = [t for part in parts.values() for t in part]
    labels = [name for name, part in parts.items() for _ in part]
    every_text = set(texts)
    if max_texts is not None and max_texts < len(texts):
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_texts, replace=False))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, {name: labels.count(name) for name in parts}, every_text


def load_query_texts(count: int, seed: int, exclude: set[str]) -> tuple[list[str], dict[str, int]]:
    """Held-out queries: NPL queries (up to 10%), SciFact claims (up to 30%), WordNet example sentences."""
    from matryoshka.data.beir import read_queries, resolve_beir_dir
    from matryoshka.data.local import find_file
    from matryoshka.data.wordnet import read_synsets

    rng = np.random.default_rng(seed + 1)
    pools = {
        "npl": list(read_queries(find_file(resolve_beir_dir("npl"), "queries.jsonl")).values()),
        "scifact": list(read_queries(find_file(resolve_beir_dir("scifact"), "queries.jsonl")).values()),
        "wordnet_examples": sorted({e for s in read_synsets() for e in examples(s.gloss)}),
    }
    quotas = {"npl": count // 10, "scifact": 3 * count // 10}
    chosen: dict[str, list[str]] = {}
    for name, pool in pools.items():
        pool = [t for t in dict.fromkeys(pool) if t not in exclude]
        want = quotas.get(name, count - sum(len(v) for v in chosen.values()))
        take = min(want, len(pool))
        chosen[name] = [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
    return [t for part in chosen.values() for t in part], {k: len(v) for k, v in chosen.items()}


def definition(gloss: str) -> str:
    return gloss.split('; "')[0].strip()


def examples(gloss: str) -> list[str]:
    return [e.strip() for e in re.findall(r'"([^"]{12,})"', gloss)]


def cached_encode(texts: list[str], args: argparse.Namespace, label: str) -> np.ndarray:
    """Encode with the model at full size, cached under ``--cache`` by a hash of model and texts."""
    digest = hashlib.sha256("\n".join([args.model, args.backend, *texts]).encode()).hexdigest()[:16]
    path = args.cache / f"{label}-{len(texts)}-{digest}.npy"
    if path.exists():
        vectors = np.load(path, allow_pickle=False)
        log(f"{label}: {len(vectors):,} vectors from cache {path}")
        return vectors
    from matryoshka.embeddings.vectors import encode
    from matryoshka.models.loading import load_model

    model = load_model(args.model, backend=args.backend)
    started = time.time()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths batch well
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    chunk = 4096
    for start in range(0, len(texts), chunk):
        rows = order[start : start + chunk]
        vectors[rows] = encode(model, [texts[i] for i in rows], batch_size=64, show_progress_bar=False)
        done = min(start + chunk, len(texts))
        log(f"{label}: encoded {done:,}/{len(texts):,} ({time.time() - started:.0f}s)")
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors


def environment() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "usearch": _usearch_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }




def _usearch_version() -> str:
    import usearch

    return str(usearch.__version__)


def scale_up(base: np.ndarray, n: int, noise: float, seed: int, shape: str = "isotropic") -> np.ndarray:
    """``n`` unit vectors: the real ones first, then noisy copies (see the module docstring)."""
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    if n <= len(base):
        keep = np.sort(np.random.default_rng(seed).choice(len(base), n, replace=False))
        return np.ascontiguousarray(base[keep], dtype=np.float32)
    dim = base.shape[1]
    if shape == "corpus":
        centered = base - base.mean(axis=0)
        variance, axes = np.linalg.eigh(centered.T.astype(np.float64) @ centered / len(base))
        scale = np.sqrt(np.clip(variance, 0, None)) * noise / np.sqrt(max(variance.sum(), 1e-12))
        mix = (axes * scale).T.astype(np.float32)  # z @ mix ~ N(0, c²Σ) with E|e|² = noise²
    else:
        mix = np.eye(dim, dtype=np.float32) * (noise / np.sqrt(dim))
    out = np.empty((n, dim), dtype=np.float32)
    out[: len(base)] = base
    rng = np.random.default_rng(seed)
    for start in range(len(base), n, 65_536):
        rows = np.arange(start, min(start + 65_536, n))
        copies = base[rows % len(base)] + rng.standard_normal((len(rows), dim), dtype=np.float32) @ mix
        out[rows] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return out


def apply_in_blocks(weight: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``normalize(vectors @ weight.T)`` block by block (the rotation of :class:`matryoshka.adapt.Adaptor`)."""
    out = np.empty_like(vectors)
    for start in range(0, len(vectors), 65_536):
        block = vectors[start : start + 65_536] @ weight.T
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def measure_bandwidth(megabytes: int, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth in GB/s of one thread, two ways (best of ``repeats`` each): a numpy sum over a
    float32 array, and a BLAS matrix-vector product over the same bytes as a ``(rows, 384)`` matrix.
    The larger is the bound: a sum can be limited by its adds, not by memory."""
    array = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    matrix, vector = array[: len(array) // 384 * 384].reshape(-1, 384), np.ones(384, dtype=np.float32)
    rates = {}
    for name, read, nbytes in (("sum", array.sum, array.nbytes), ("matvec", lambda: matrix @ vector, matrix.nbytes)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - start)
        rates[name] = nbytes / best / 1e9
    return rates


def measure_peak(size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of a large float32 numpy matrix product (best of ``repeats``): the compute peak."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure_qps(search, queries: np.ndarray, batch: int, min_time: float) -> float:
    """Queries/s over consecutive batches (cycling through ``queries``) for at least ``min_time`` seconds."""
    search(queries[:batch])  # warm-up
    done, elapsed, position = 0, 0.0, 0
    while elapsed < min_time or done == 0:
        rows = np.arange(position, position + batch) % len(queries)
        position += batch
        start = time.perf_counter()
        search(queries[rows])
        elapsed += time.perf_counter() - start
        done += batch
    return done / elapsed


def contenders(rows: list[dict]) -> list[str]:
    """The configs the verdicts compare: every exact row, and per batch size the fastest funnel with a first
    stage on at most 64 dims and the fastest config of each HNSW library, both at dev recall >= 0.99."""
    names = [r["config"] for r in rows if r["kind"] == "exact"]
    fast = [r for r in rows if r["recall@10"]["dev"] >= TARGETS["recall"]]
    groups = [[r for r in fast if r["kind"] == "funnel" and r["first_dim"] <= TARGETS["max_first_dim"]]]
    groups += [[r for r in fast if r["config"].startswith(f"{peer}:")] for peer in ("faiss hnsw", "usearch hnsw")]
    for group in groups:
        for batch in BATCHES:
            best = max(group, key=lambda r: r["qps"][f"batch={batch}"], default=None)
            if best is not None and best["config"] not in names:
                names.append(best["config"])
    return names


def measure_head_to_head(rows: list[dict], searchers: dict[str, tuple[Any, np.ndarray]], rounds: int,
                         min_time: float) -> dict[str, dict[str, list[float]]]:
    """q/s of the :func:`contenders`, measured again in ``rounds`` interleaved rounds (each config once per
    round, per batch size), so a slow spell of the machine hits them alike; the verdicts use the medians."""
    names = contenders(rows)
    log(f"head to head: {len(names)} configs, {rounds} interleaved rounds")
    out: dict[str, dict[str, list[float]]] = {name: {f"batch={b}": [] for b in BATCHES} for name in names}
    with threadpool_limits(1):
        for _ in range(rounds):
            for batch in BATCHES:
                for name in names:
                    search, queries = searchers[name]
                    out[name][f"batch={batch}"].append(measure_qps(search, queries, batch, min_time))
    for name in names:
        log(f"  {name:<64} " + "  ".join(f"{k}: {np.median(v):,.1f} q/s" for k, v in out[name].items()))
    return out


def result_row(name: str, kind: str, recall: dict, qps: dict, build: float, structure: int, total: int, n: int,
               **extra: Any) -> dict[str, Any]:
    return {"config": name, "kind": kind, "recall@10": recall, "qps": {f"batch={b}": v for b, v in qps.items()},
            "build_seconds": build, "structure_bytes_per_vector": structure / n, "total_bytes_per_vector": total / n,
            **extra}


def row_text(row: dict) -> str:
    return (f"recall dev {row['recall@10']['dev']:.4f} test {row['recall@10']['test']:.4f}  "
            + "  ".join(f"{k}: {v:,.1f} q/s" for k, v in row["qps"].items())
            + f"  build {row['build_seconds']:.1f}s  {row['structure_bytes_per_vector']:,.0f} B/vec")


def _cached_peer(base: np.ndarray, args: argparse.Namespace, label: str) -> tuple[Path, Path]:
    digest = hashlib.sha256(base[:: max(1, len(base) // 4096)].tobytes() + str(base.shape).encode()).hexdigest()[:16]
    args.cache.mkdir(parents=True, exist_ok=True)
    return args.cache / f"{label}-{digest}.index", args.cache / f"{label}-{digest}.json"


def faiss_hnsw(base: np.ndarray, args: argparse.Namespace):
    """FAISS ``IndexHNSWFlat`` over the full vectors (M=32, efConstruction=40), built once and cached."""
    path, meta = _cached_peer(base, args, f"faiss-hnsw{FAISS_HNSW_M}")
    if path.exists() and meta.exists():
        index = faiss.read_index(str(path))
        build = json.loads(meta.read_text())["build_seconds"]
        log(f"faiss hnsw: loaded from {path} (built in {build:.0f}s)")
    else:
        index = faiss.IndexHNSWFlat(base.shape[1], FAISS_HNSW_M, faiss.METRIC_INNER_PRODUCT)
        faiss.omp_set_num_threads(args.build_threads)
        log(f"faiss hnsw: building over {len(base):,} vectors on {args.build_threads} threads")
        started = time.perf_counter()
        index.add(base)
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        faiss.write_index(index, str(path))
        write_atomic(meta, json.dumps({"build_seconds": build}))
        log(f"faiss hnsw: built in {build:.0f}s")
    structure = len(base) * base.shape[1] * 4 + hnsw_link_bytes(index.hnsw)
    faiss.omp_set_num_threads(1)

    def searcher(ef: int):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        return lambda q: index.search(q, args.k, params=params)[1]

    return build, structure, [(ef, searcher(ef)) for ef in PEER_EF]


def usearch_hnsw(base: np.ndarray, args: argparse.Namespace):
    """usearch HNSW over the full vectors (inner product, float32, its default connectivity and expansion)."""
    from usearch.index import Index

    path, meta = _cached_peer(base, args, f"usearch-m{USEARCH_CONNECTIVITY}")
    index = Index(ndim=base.shape[1], metric="ip", dtype="f32", connectivity=USEARCH_CONNECTIVITY,
                  expansion_add=USEARCH_EXPANSION_ADD)
    if path.exists() and meta.exists():
        index.load(str(path))
        build = json.loads(meta.read_text())["build_seconds"]
        log(f"usearch: loaded from {path} (built in {build:.0f}s)")
    else:
        log(f"usearch: building over {len(base):,} vectors on {args.build_threads} threads")
        started = time.perf_counter()
        index.add(np.arange(len(base)), base, threads=args.build_threads)
        build = time.perf_counter() - started
        index.save(str(path))
        write_atomic(meta, json.dumps({"build_seconds": build}))
        log(f"usearch: built in {build:.0f}s")
    structure = int(index.memory_usage)

    def searcher(ef: int):
        def search(q: np.ndarray) -> np.ndarray:
            index.expansion_search = ef
            return np.atleast_2d(index.search(q, args.k, threads=1).keys).astype(np.int64)
        return search

    return build, structure, [(ef, searcher(ef)) for ef in PEER_EF]


def qps_of(h2h: dict | None, row: dict, batch: int) -> float:
    """A config's q/s at ``batch``: the median of the interleaved head to head ``h2h`` when it ran there, else its row's."""
    rounds = (h2h or {}).get(row["config"], {}).get(f"batch={batch}")
    return float(np.median(rounds)) if rounds else float(row["qps"][f"batch={batch}"])


def verdicts(report: dict) -> dict[str, Any]:
    """The issue's targets, each with the numbers behind it (configs chosen on dev recall, q/s from the head to head)."""
    t, rows, data, machine = report["targets"], report["results"], report["data"], report["machine"]
    n, dim = data["n"], data["dim"]
    h2h = report.get("head_to_head")
    # the index's exact stage runs over the stored rows, or over a column-block copy within its view budget
    index_rows = [r for r in rows if r["config"] in (EXACT_ROWS, EXACT_INDEX)]
    scan = max(index_rows, key=lambda r: qps_of(h2h, r, 1))
    product = max(index_rows, key=lambda r: qps_of(h2h, r, 32))
    faiss_exact = next(r for r in rows if r["config"].startswith("exact: faiss"))
    strong = strongest_exact(rows, h2h)
    gb_s = qps_of(h2h, scan, 1) * n * dim * 4 / 1e9
    gflops = qps_of(h2h, product, 32) * 2 * n * dim / 1e9
    faiss_gb_s = qps_of(h2h, faiss_exact, 1) * n * dim * 4 / 1e9
    bound = max(machine["bandwidth_gb_s"], faiss_gb_s)  # a probe that FAISS's scan outruns is no bound
    out: dict[str, Any] = {
        "exact_bandwidth": {"config": scan["config"], "effective_gb_s": gb_s, "bound_gb_s": bound, "share": gb_s / bound,
                            "faiss_gb_s": faiss_gb_s, "met": gb_s >= t["bandwidth_share"] * bound},
        "exact_peak": {"config": product["config"], "gflops": gflops, "share": gflops / machine["peak_gflops"],
                       "faiss_gflops": qps_of(h2h, faiss_exact, 32) * 2 * n * dim / 1e9,
                       "met": gflops >= t["peak_share"] * machine["peak_gflops"]},
    }
    if h2h:  # compare only configs measured side by side
        rows = [r for r in rows if r["config"] in h2h]
    eligible = [r for r in rows if r["kind"] == "funnel" and r["first_dim"] <= t["max_first_dim"]
                and r["recall@10"]["dev"] >= t["recall"]]
    for batch, key in ((1, "speedup_batch1"), (32, "speedup_batch32")):
        setting = f"batch={batch}"
        best = max(eligible, key=lambda r: qps_of(h2h, r, batch), default=None)
        if best is None:
            out[setting] = {"config": None, "met": False}
            continue
        speedup = qps_of(h2h, best, batch) / strong[setting]
        out[setting] = {"config": best["config"], "recall_test": best["recall@10"]["test"], "qps": qps_of(h2h, best, batch),
                        "speedup": speedup, "met": speedup >= t[key] and best["recall@10"]["test"] >= t["recall"]}
    peers = [r for r in rows if r["kind"] == "hnsw" and r["recall@10"]["dev"] >= t["recall"]]
    peer = max(peers, key=lambda r: qps_of(h2h, r, 1), default=None)
    best = max(eligible, key=lambda r: qps_of(h2h, r, 1), default=None)
    if peer is None or best is None:
        out["vs_hnsw"] = {"peer": peer and peer["config"], "funnel": best and best["config"], "met": False,
                          "note": "no full-vector HNSW config reached the recall" if peer is None else "no funnel did"}
    else:
        build_ratio = peer["build_seconds"] / max(best["build_seconds"], 1e-9)
        ratio = qps_of(h2h, best, 1) / qps_of(h2h, peer, 1)
        out["vs_hnsw"] = {
            "peer": peer["config"], "funnel": best["config"], "qps_ratio": ratio,
            "qps_ratio_batch32": qps_of(h2h, best, 32) / qps_of(h2h, peer, 32),
            "structure_ratio": best["structure_bytes_per_vector"] / peer["structure_bytes_per_vector"],
            "build_speedup": build_ratio,
            "met": ratio >= 1.0
            and best["structure_bytes_per_vector"] < peer["structure_bytes_per_vector"]
            and build_ratio >= t["build_speedup"] and best["recall@10"]["test"] >= t["recall"],
        }
    return out


def strongest_exact(rows: list[dict], h2h: dict | None = None) -> dict[str, float]:
    """The fastest exact implementation's q/s per batch size (from ``h2h`` where given): the baseline every
    speed-up is quoted against."""
    return {f"batch={b}": max(qps_of(h2h, r, b) for r in rows if r["kind"] == "exact") for b in BATCHES}


def markdown(report: dict) -> str:
    data, env, machine, v, t = report["data"], report["environment"], report["machine"], report["verdicts"], report["targets"]
    rows = report["results"]
    sequential = strongest_exact(rows)  # the all-configs table: each row's own measurement
    met = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    lines = [
        "# Funnel benchmark: Matryoshka-prefix funnels, a strong exact baseline and full-vector HNSW",
        "",
        f"Command: `{report['command']}` ({report['created']}, {report['seconds']:.0f} s).",
        "",
        f"N = {data['n']:,} vectors × {data['dim']} dims: {data['real_vectors']:,} real embeddings "
        f"({', '.join(f'{k} {v_:,}' for k, v_ in data['corpus_sources'].items())}; model {data['model']}, "
        f"{data['backend']} backend) and {data['synthetic_vectors']:,} synthetic copies: {data['scaling']}, "
        f"noise {data['noise']}. Queries: held-out real texts "
        f"({', '.join(f'{k} {v_:,}' for k, v_ in data['query_sources'].items())}), {data['queries']['dev']:,} dev "
        f"and {data['queries']['test']:,} test. Configs are chosen by dev recall; every verdict quotes test recall. "
        "q/s are measured on the test queries.",
        "",
        "`rotated` is the base model's vectors rotated onto the principal axes of the real corpus (fitted in "
        f"{data['rotation']['seconds']:.1f} s; an orthogonal map, so exact search and full-vector HNSW are the same "
        "for both), the Matryoshka vectors these funnels search; `base` is the model's own vectors.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; every search at {report['threads']['search']} thread, "
        f"every graph build at {report['threads']['build']}. Measured in this run at 1 thread: read bandwidth "
        f"{machine['bandwidth_gb_s']:.1f} GB/s ({_probes(machine)}), matrix-product peak {machine['peak_gflops']:.1f} GFLOP/s "
        f"(4096² numpy product). Load average {_load(env['load_average_at_start'])} at the start, "
        f"{_load(env['load_average'])} at the end. faiss {env['faiss']}, numpy {env['numpy']}, usearch {env.get('usearch')}.",
        "",
        "## Targets",
        "",
        f"- Exact search, batch 1, within {t['bandwidth_share']:.0%} of the bandwidth bound: "
        f"`{v['exact_bandwidth']['config']}` reads {v['exact_bandwidth']['effective_gb_s']:.1f} GB/s = "
        f"{v['exact_bandwidth']['share']:.0%} of {v['exact_bandwidth']['bound_gb_s']:.1f} GB/s, the fastest read "
        f"measured in this run (the probes above, and faiss.knn's scan of the same vectors at "
        f"{v['exact_bandwidth']['faiss_gb_s']:.1f} GB/s): {met(v['exact_bandwidth']['met'])}.",
        f"- Exact search, batch 32, within {t['peak_share']:.0%} of the measured peak: `{v['exact_peak']['config']}` runs "
        f"{v['exact_peak']['gflops']:.1f} GFLOP/s = {v['exact_peak']['share']:.0%}: {met(v['exact_peak']['met'])} "
        f"(faiss.knn on the same vectors: {v['exact_peak']['faiss_gflops']:.1f} GFLOP/s).",
    ]
    for batch, key in ((1, "speedup_batch1"), (32, "speedup_batch32")):
        s = v[f"batch={batch}"]
        if s["config"] is None:
            lines.append(f"- Batch {batch}: no funnel with a first stage on ≤ {t['max_first_dim']} dims reached dev recall "
                         f"{t['recall']}: **missed**.")
        else:
            lines.append(f"- Batch {batch}: `{s['config']}` (first stage ≤ {t['max_first_dim']} dims), test recall@10 "
                         f"{s['recall_test']:.4f}, {s['qps']:,.1f} q/s = {s['speedup']:.1f}× the strong exact baseline "
                         f"(target ≥ {t[key]:.0f}×): {met(s['met'])}.")
    h = v["vs_hnsw"]
    if "qps_ratio" in h:
        lines.append(f"- Against the fastest full-vector HNSW at dev recall ≥ {t['recall']} (`{h['peer']}`), "
                     f"`{h['funnel']}` runs {h['qps_ratio']:.2f}× its batch-1 q/s ({h['qps_ratio_batch32']:.2f}× at batch 32) "
                     f"with {h['structure_ratio']:.0%} of its search-structure memory and a {h['build_speedup']:.1f}× faster "
                     f"build (target ≥ 1×, less memory, ≥ {t['build_speedup']:.0f}× faster build): {met(h['met'])}.")
    else:
        lines.append(f"- Against full-vector HNSW at equal recall: {h['note']}: **missed**.")
    h2h = report.get("head_to_head")
    if h2h:
        rounds = len(next(iter(next(iter(h2h.values())).values())))
        lines += [
            "",
            f"q/s in the targets are medians of {rounds} interleaved rounds (every contender once per round and batch "
            "size, so a slow spell of the shared machine slows them alike); the contenders are every exact row and, "
            "per batch size, the fastest funnel with a first stage on ≤ 64 dims and the fastest config of each HNSW "
            "library at dev recall ≥ 0.99 (picked by the single measurement in the table below).",
            "",
            "## Head to head",
            "",
            "| config | recall@10 dev | recall@10 test | q/s batch 1, median (min–max) | q/s batch 32, median (min–max) |",
            "|---|---:|---:|---:|---:|",
        ]
        by_name = {r["config"]: r for r in rows}
        for name, runs in h2h.items():
            r = by_name[name]
            cells = [f"{np.median(runs[f'batch={b}']):,.1f} ({min(runs[f'batch={b}']):,.1f}–{max(runs[f'batch={b}']):,.1f})"
                     for b in BATCHES]
            lines.append(f"| {name} | {r['recall@10']['dev']:.4f} | {r['recall@10']['test']:.4f} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "## All configs",
        "",
        "Each config measured once, in order. Speed-ups are against the fastest exact row of this table at each batch "
        "size. Build: graph or view build on "
        f"{report['threads']['build']} threads (the rotated funnels include fitting the rotation). Structure: bytes "
        "per vector of what the search walks or scans (a funnel's first-stage view; an HNSW's graph with its vectors; "
        "exact: the vectors it scans); total: with the full vectors a funnel keeps for its re-rank.",
        "",
        "| config | recall@10 dev | recall@10 test | q/s batch 1 | q/s batch 32 | build s | structure B/vec | total B/vec |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['recall@10']['dev']:.4f} | {r['recall@10']['test']:.4f} | "
            + " | ".join(f"{r['qps'][f'batch={b}']:,.1f} ({r['qps'][f'batch={b}'] / sequential[f'batch={b}']:.1f}×)"
                         for b in BATCHES)
            + f" | {r['build_seconds']:,.1f} | {r['structure_bytes_per_vector']:,.0f} | {r['total_bytes_per_vector']:,.0f} |"
        )
    lines += [
        "",
        "![recall@10 against queries/s](funnel.png)",
        "",
        "Exact search (`matryoshka.indexes.faiss.exact.top_k_inner_product`, the index's exact stage) runs over one of "
        "two layouts. Over the stored `(N, dim)` rows (what an index of this size scans by default): below 20 queries "
        "FAISS's SIMD scan, else a numpy matrix product `rows @ queries.T` per 2,048 rows. Over a dimension-major "
        "copy (`ColumnBlocks`: one 384 × 2,048 block per 2,048 rows, built once, the build column above; an index "
        "makes it when its view budget allows): `queries @ block` per block, which BLAS runs without packing the "
        "large operand. Both keep a running top-k threshold per query and look only at the queries whose block "
        "maximum beats it. The verdicts take the faster layout at each batch size. faiss.knn at batch 32 runs its "
        "products through the older OpenBLAS its wheel ships.",
        "",
        "`ivfpq` first stages (`dim:ivfpq:keep:probe`): FAISS `IndexIVFPQFastScan` over the unit prefix, 4·√N "
        "inverted lists, one 4-bit code per dimension (half a byte per dimension, read 32 codes at a time by "
        "SIMD table lookups); `probe` lists are scanned for a shortlist of `keep`. The next stage re-scores that "
        "shortlist on int8 codes of the 128-dim prefix, read in place (128 bytes per vector), and the last on "
        "the full vectors. Their structure column counts both code sets, the list ids and the centroids.",
        "",
        "`full:graph:10` last stages (`matryoshka.indexes.faiss.neighbours`): each hit of the stage before is joined by "
        "its 16 nearest neighbours in a graph of the full vectors, and all of them are re-scored on the full "
        "vectors. The graph is built approximately, like an inverted file: spherical k-means into 2·√N lists, each "
        "vector's neighbours taken from the lists nearest its own (6 at 1M, more for a smaller N). Its build is in the build column (added to the "
        "first stage's), its 64 bytes per vector in the structure column.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"exact": ("*", "black"), "hnsw": ("s", "tab:red"), "rotated": ("o", "tab:blue"), "base": ("^", "tab:gray")}
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, batch in zip(axes, BATCHES):
        for r in report["results"]:
            style = r.get("view") if r["kind"] == "funnel" else r["kind"]
            if r["kind"] == "hnsw" and r["config"].startswith("usearch"):
                marker, color = "D", "tab:orange"
            else:
                marker, color = styles[style]
            x, y = r["recall@10"]["test"], r["qps"][f"batch={batch}"]
            ax.scatter(x, y, marker=marker, color=color, s=60 if r["kind"] != "exact" else 120, zorder=3)
            ax.annotate(r["config"].split(": ", 1)[1].replace(",full:float32:10", "").replace("index exact stage ", ""),
                        (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.axvline(report["targets"]["recall"], color="green", linestyle=":", linewidth=1)
        ax.set_xlabel("recall@10 against exact (test queries)")
        ax.set_ylabel("queries/s (1 thread, log)")
        ax.set_title(f"batch {batch}, N = {report['data']['n']:,}")
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, color=c, linestyle="", label=label) for label, (m, c) in
               {"exact": styles["exact"], "funnel (rotated)": styles["rotated"], "funnel (base)": styles["base"],
                "FAISS HNSW (full vectors)": styles["hnsw"], "usearch HNSW (full vectors)": ("D", "tab:orange")}.items()]
    axes[0].legend(handles=handles, loc="lower left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _probes(machine: dict) -> str:
    """How the bandwidth bound was measured (runs before 2026-12-04 measured a numpy sum only)."""
    probes = machine.get("bandwidth_probes")
    if not probes:
        return "numpy sum"
    names = {"sum": "numpy sum", "matvec": "BLAS matrix-vector product"}
    return "the faster of " + " and ".join(f"{names[k]} {v:.1f}" for k, v in probes.items())


def _load(values) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
