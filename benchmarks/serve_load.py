"""Load test of ``/v1/embeddings``: N concurrent clients for a fixed time against a server on loopback.

Reports requests/s, texts/s, p50/p99 latency, errors (must be 0), the server's peak memory (RSS), the
batch sizes the micro-batcher formed, and the ratio of served texts/s to a direct in-process
``matryoshka.embeddings.vectors.encode`` of the same texts, measured in the same run with the same number of
torch threads (target: >= 0.8, i.e. HTTP, JSON and batching cost at most a fifth of the model's speed).

The server runs on ``--backend`` (default ``auto``, what ``matryoshka serve`` picks: the fastest backend
that agrees with torch); the direct baseline runs on ``--direct-backend`` (default ``torch``), so the
ratio is the served speed against the PyTorch model in-process. ``--direct-backend`` equal to the
server's backend measures the serving overhead alone.

The server runs in a subprocess, so its memory and CPU are its own. Texts are real WordNet glosses.

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --clients 4 --duration 12 --direct-seconds 6 --rounds 3
    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py ... --backend torch   # the server on torch, as before
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SERVER_CODE = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from matryoshka.cli.serve import serve_command
serve_command(port=int(sys.argv[1]), batch_max_texts=int(sys.argv[3]), batch_wait_ms=float(sys.argv[4]), log_level="warning",
              backend=sys.argv[5])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def corpus(count: int) -> list[str]:
    """Real texts: WordNet glosses (Debian's wordnet-base or the staged copy), else a synthetic fallback."""
    from matryoshka.data.wordnet import (
        JSONL_RELATIVE,
        WordNetNotFound,
        find_source,
        load_glosses,
    )

    for root in (os.environ.get("MATRYOSHKA_DATA"), str(ROOT.parent / "shared" / "data")):
        if root and (Path(root) / JSONL_RELATIVE).exists():
            return load_glosses(count, Path(root) / JSONL_RELATIVE)[1]
    try:
        return load_glosses(count, find_source())[1]
    except WordNetNotFound:
        return [f"sentence {i} about matryoshka dolls nested inside each other" for i in range(count)]


class Direct:
    """In-process ``encode`` of the same texts, ``chunk`` texts per call (as many as the clients keep in flight,
    i.e. the batches the server can form at best), ``batch_size`` per forward pass (the server's setting)."""

    def __init__(self, texts: list[str], threads: int, chunk: int, batch_size: int = 64, backend: str = "torch") -> None:
        import torch

        from matryoshka.models.loading import load_model

        torch.set_num_threads(threads)
        self.model = load_model(device="cpu", backend=backend)
        self.texts, self.chunk, self.batch_size, self.position = texts, chunk, batch_size, 0
        self.run(0.0)  # warm up

    def run(self, seconds: float) -> tuple[int, float]:
        """Encode for about ``seconds`` (at least one call); return (texts, elapsed seconds)."""
        from matryoshka.embeddings.vectors import encode

        done, started = 0, time.perf_counter()
        while True:
            chunk = [self.texts[(self.position + j) % len(self.texts)] for j in range(self.chunk)]
            self.position += self.chunk
            encode(self.model, chunk, batch_size=self.batch_size, show_progress_bar=False)
            done += len(chunk)
            if time.perf_counter() - started >= seconds:
                return done, time.perf_counter() - started


async def load(
    url: str, texts: list[str], clients: int, per_request: int, duration: float, dimensions: int | None, offset: int = 0
) -> dict:
    """``clients`` loops, each posting ``per_request`` texts at a time until ``duration`` is up."""
    latencies: list[float] = []
    errors: list[str] = []
    served_texts = 0
    deadline = time.perf_counter() + duration

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal served_texts
        position = offset + worker * per_request
        while time.perf_counter() < deadline:
            batch = [texts[(position + j) % len(texts)] for j in range(per_request)]
            position += clients * per_request
            body = {"model": "all-MiniLM-L6-v2", "input": batch, "encoding_format": "base64"}
            if dimensions:
                body["dimensions"] = dimensions
            started = time.perf_counter()
            try:
                response = await http.post("/v1/embeddings", json=body)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                data = response.json()["data"]
                vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
                if len(vectors) != per_request:
                    errors.append(f"got {len(vectors)} vectors for {per_request} texts")
                    continue
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - started)
            served_texts += per_request

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(clients)])
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "texts": served_texts, "seconds": elapsed}


def summarize(rounds: list[dict]) -> dict:
    latencies = sorted(x * 1000 for r in rounds for x in r["latencies"])
    errors = [e for r in rounds for e in r["errors"]]
    seconds = sum(r["seconds"] for r in rounds)
    texts = sum(r["texts"] for r in rounds)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 1) if latencies else None

    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 2),
        "texts_per_s": round(texts / seconds, 1),
        "latency_ms": {
            "p50": pct(0.5),
            "p99": pct(0.99),
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
            "max": round(latencies[-1], 1) if latencies else None,
        },
    }


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    load_, cfg = result["load"], result["config"]
    lines = [
        "# Serving load test (`benchmarks/serve_load.py`)",
        "",
        f"Command: `HF_HUB_OFFLINE=1 python benchmarks/{' '.join(result['command'])}`",
        "",
        f"{cfg['clients']} concurrent clients x {cfg['texts_per_request']} texts per request (base64), "
        f"{cfg['duration_s']} s of load and {cfg['direct_s']} s of direct `encode`, alternated in {cfg['rounds']} rounds; "
        f"server and baseline on {cfg['torch_threads']} thread(s); {result['machine']}.",
        f"Server `--backend {cfg.get('backend', 'torch')}` → ran on **{result.get('server_backend', 'torch')}**; "
        f"direct baseline on **{cfg.get('direct_backend', 'torch')}**.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| requests/s | {load_['requests_per_s']} |",
        f"| texts/s served | {load_['texts_per_s']} |",
        f"| texts/s direct `encode` ({cfg.get('direct_backend', 'torch')}) | {result['direct_texts_per_s']} |",
        f"| **served / direct** | **{result['throughput_ratio']}** |",
        f"| latency p50 / p99 (ms) | {load_['latency_ms']['p50']} / {load_['latency_ms']['p99']} |",
        f"| errors | {load_['errors']} of {load_['requests'] + load_['errors']} |",
        f"| server peak RSS | {result['server_peak_rss_mb']} MiB |",
        f"| mean texts per model call | {result['batching']['mean_texts_per_call']} |",
        "",
        f"Run {result['timestamp']}.",
        "",
    ]
    (out / "serve_load.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load in total (split over rounds)")
    parser.add_argument(
        "--direct-seconds", type=float, default=15.0, help="seconds of the in-process baseline in total"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate baseline and load this many times, so that drifting CPU load (other processes) hits both alike",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the server and the baseline")
    parser.add_argument("--dimensions", type=int, default=None)
    parser.add_argument("--corpus", type=int, default=512, help="distinct texts cycled through")
    parser.add_argument("--batch-max-texts", type=int, default=256)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--backend", default="auto", help="the server's --backend (auto: what serve picks)")
    parser.add_argument("--direct-backend", default="torch", help="backend of the in-process baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = corpus(args.corpus)
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=str(args.threads),
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER_CODE,
            str(port),
            str(args.threads),
            str(args.batch_max_texts),
            str(args.batch_wait_ms),
            args.backend,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        in_flight = min(args.clients * args.texts_per_request, args.batch_max_texts)
        direct = Direct(texts, args.threads, chunk=in_flight, backend=args.direct_backend)  # loads the model here while the server starts
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()[-2000:] if server.stderr else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > 180:
                raise SystemExit("server did not start in 180 s")
            time.sleep(0.25)
        print(f"server up after {time.perf_counter() - started:.1f} s", file=sys.stderr)
        direct_texts, direct_seconds, rounds = 0, 0.0, []
        for i in range(args.rounds):
            done, seconds = direct.run(args.direct_seconds / args.rounds)
            direct_texts, direct_seconds = direct_texts + done, direct_seconds + seconds
            rounds.append(
                asyncio.run(
                    load(
                        url,
                        texts,
                        args.clients,
                        args.texts_per_request,
                        args.duration / args.rounds,
                        args.dimensions,
                        offset=i * 9973,
                    )
                )
            )
            print(
                f"round {i + 1}: direct {done / seconds:.1f} texts/s, served {rounds[-1]['texts'] / rounds[-1]['seconds']:.1f} texts/s",
                file=sys.stderr,
            )
        result_load = summarize(rounds)
        stats = httpx.get(f"{url}/health", timeout=10).json()["batches"]["all-MiniLM-L6-v2"]
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()  # SIGTERM: uvicorn drains and exits
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    log = server.stderr.read() if server.stderr else ""
    chosen = [line.rsplit("backend ", 1)[1].strip() for line in log.splitlines() if line.startswith("model ") and "backend " in line]
    direct_rate = direct_texts / direct_seconds
    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "config": {
            "clients": args.clients,
            "texts_per_request": args.texts_per_request,
            "duration_s": args.duration,
            "direct_s": args.direct_seconds,
            "rounds": args.rounds,
            "torch_threads": args.threads,
            "dimensions": args.dimensions,
            "encoding_format": "base64",
            "batch_max_texts": args.batch_max_texts,
            "batch_wait_ms": args.batch_wait_ms,
            "corpus_texts": len(texts),
            "backend": args.backend,
            "direct_backend": args.direct_backend,
        },
        "server_backend": chosen[0] if chosen else "unknown",
        "load": result_load,
        "direct_texts_per_s": round(direct_rate, 1),
        "throughput_ratio": round(result_load["texts_per_s"] / direct_rate, 3),
        "rounds": [{"served_texts_per_s": round(r["texts"] / r["seconds"], 1)} for r in rounds],
        "server_peak_rss_mb": round(rss, 1),
        "server_exit_code": server.returncode,
        "batching": {
            "calls": stats["calls"],
            "texts": stats["texts"],
            "mean_texts_per_call": round(stats["texts"] / max(stats["calls"], 1), 1),
            "largest_batch": stats["largest_batch"],
        },
    }
    write_reports(result, args.out)
    print(json.dumps(result, indent=2))
    if result_load["errors"]:
        raise SystemExit(f"{result_load['errors']} errors")


if __name__ == "__main__":
    main()
