"""Soak test of ``matryoshka serve`` under load and faults, on 127.0.0.1 only, for a bounded time.

32 clients send a mix of good and bad requests (1 to 2,048 texts, every ``dimensions`` and both encoding
formats, searches, and the malformed requests the docs list), while 100 "slowloris" connections trickle
their headers a byte a second and other clients drop out in the middle of a body. Phases without large
requests alternate with phases with them, so drifting load from other processes hits both alike.

Reported (``benchmarks/results/soak.{json,md}``):

* small-request (<= 8 texts) latency p50/p99 with large requests running against without them
  (target: p99 with <= 3x p99 without);
* unexpected responses: anything but the documented answer (200, the listed 4xx, 429/503 with
  Retry-After), and every 500 in the server log (target 0);
* connections held past their deadline (header/body timeout plus 2 s of grace; target 0);
* server RSS after the warm-up against at the end (target: growth <= 5%).

    HF_HUB_OFFLINE=1 python benchmarks/soak.py                  # 10 minutes (the reported run)
    HF_HUB_OFFLINE=1 python benchmarks/soak.py --duration 90    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HOST = "127.0.0.1"  # the only address this benchmark talks to
DIMS = [None, 8, 16, 32, 48, 64, 100, 128, 200, 256, 384]
GRACE_S = 2.0
SMALL_MAX = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Tally:
    """What the clients saw."""

    small_ms: dict[str, list[float]] = field(default_factory=lambda: {"without": [], "with": []})
    slowest: list[tuple[float, str, int, float]] = field(default_factory=list)  # (ms, phase, client, started at)
    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    requests: int = 0
    large_done: int = 0
    large_in_flight: int = 0
    large_cancelled: int = 0
    throttled: int = 0
    slow_connections: int = 0
    held_past_timeout: int = 0
    slow_lifetimes: list[float] = field(default_factory=list)
    drops: int = 0

    def check(self, kind: str, response: httpx.Response, expected: set[int]) -> None:
        self.requests += 1
        self.statuses[response.status_code] += 1
        status = response.status_code
        if status in (429, 503):
            if "retry-after" not in response.headers:
                self.unexpected.append(f"{kind}: {status} without Retry-After")
            self.throttled += 1
            return
        if status not in expected:
            self.unexpected.append(f"{kind}: got {status}, expected {sorted(expected)}: {response.text[:160]}")
            return
        if status >= 400:
            error = response.json().get("error", {})
            if not error.get("code"):
                self.unexpected.append(f"{kind}: {status} without an error code: {response.text[:160]}")


def bad_requests(texts: list[str]) -> list[tuple[str, str, bytes, set[int]]]:
    """(name, path, body, expected statuses) for the documented client errors."""
    j = lambda v: json.dumps(v).encode()
    return [
        ("dimensions=0", "/v1/embeddings", j({"input": "x", "dimensions": 0}), {400}),
        ("dimensions too big", "/v1/embeddings", j({"input": "x", "dimensions": 999}), {400}),
        ("dimensions string", "/v1/embeddings", j({"input": "x", "dimensions": "64"}), {400}),
        ("empty input", "/v1/embeddings", j({"input": []}), {400}),
        ("empty string", "/v1/embeddings", j({"input": ["a", ""]}), {400}),
        ("too many inputs", "/v1/embeddings", j({"input": ["a"] * 2049}), {400}),
        ("too long", "/v1/embeddings", j({"input": "a" * 40_000}), {400}),
        ("token ids", "/v1/embeddings", j({"input": [[1, 2, 3]]}), {400}),
        ("bad json", "/v1/embeddings", b'{"input": ', {400}),
        ("invalid utf-8", "/v1/embeddings", b'{"input": "\xff\xfe"}', {400}),
        ("5000 digits", "/v1/embeddings", b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}", {400}),
        ("deep nesting", "/v1/embeddings", b"[" * 5000 + b"]" * 5000, {400}),
        ("unknown model", "/v1/embeddings", j({"input": "x", "model": "nope"}), {404}),
        ("stage keeps < k", "/v1/search", j({"query": "x", "k": 100, "stages": [
            {"dim": 64, "codec": "float32", "keep": 10}, {"dim": "full", "codec": "float32", "keep": 5}]}), {400}),
        ("unknown filter key", "/v1/search", j({"query": "x", "filter": {"nope": 1}}), {400}),
        ("binary dim 12", "/demo/api/compare", j({"query": "x", "dim": 12, "codec": "binary"}), {400}),
        ("empty query", "/v1/search", j({"query": " "}), {400}),
        ("unknown url", "/v1/nothing", j({}), {404}),
    ]


async def client(
    number: int, url: str, texts: list[str], tally: Tally, phase: dict[str, str], stop: float, large_clients: int
) -> None:
    rng = random.Random(number)
    bad = bad_requests(texts)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        while time.monotonic() < stop:
            large_turn = phase["name"] in ("with", "warmup") and number < large_clients
            roll = rng.random()
            try:
                if large_turn:
                    count = rng.choice([256, 512, 1024, 2048, rng.randint(9, 2048)])
                    body = {"input": rng.sample(texts, min(count, len(texts))) * (count // len(texts) + 1)}
                    body["input"] = body["input"][:count]
                    body.update(dimensions=rng.choice(DIMS), encoding_format=rng.choice(["float", "base64"]))
                    tally.large_in_flight += 1
                    try:
                        request = asyncio.ensure_future(http.post("/v1/embeddings", json=body))
                        while not request.done():
                            if phase["name"] == "without":  # the baseline phase starts clean: hang up
                                request.cancel()
                                break
                            await asyncio.wait({request}, timeout=0.5)
                        try:
                            response = await request
                        except asyncio.CancelledError:
                            if not request.cancelled():
                                raise  # this client itself is being cancelled
                            tally.large_cancelled += 1
                            continue
                    finally:
                        tally.large_in_flight -= 1
                    tally.check("large embeddings", response, {200})
                    tally.large_done += 1
                elif roll < 0.7:
                    count = rng.randint(1, SMALL_MAX)
                    body = {"input": rng.sample(texts, count), "dimensions": rng.choice(DIMS),
                            "encoding_format": rng.choice(["float", "base64"])}
                    if count == 1 and rng.random() < 0.5:
                        body["input"] = body["input"][0]
                    # "without" only when no large request is in flight, "with" only when one is
                    label = phase["name"] if (phase["name"] == "with") == (tally.large_in_flight > 0) else "mixed"
                    started = time.perf_counter()
                    response = await http.post("/v1/embeddings", json=body)
                    if response.status_code == 200 and label in tally.small_ms:
                        ms = (time.perf_counter() - started) * 1000
                        tally.small_ms[label].append(ms)
                        tally.slowest = sorted([*tally.slowest, (ms, label, number, round(started, 1))], reverse=True)[:10]
                    tally.check("small embeddings", response, {200})
                elif roll < 0.8:
                    body = {"query": rng.choice(texts), "k": rng.choice([1, 5, 10]),
                            "preset": rng.choice(["exact", "funnel", "binary"])}
                    if rng.random() < 0.5:
                        body["dimensions"] = rng.choice([16, 32, 64, 128])
                    response = await http.post("/v1/search", json=body)
                    tally.check("search", response, {200})
                elif roll < 0.83:
                    dim = rng.choice([16, 32, 64, 128, 384])
                    codec = rng.choice(["float32", "float16", "int8", "binary"])
                    response = await http.post("/demo/api/compare", json={"query": rng.choice(texts), "dim": dim, "codec": codec})
                    tally.check("demo compare", response, {200})
                else:
                    name, path, content, expected = rng.choice(bad)
                    response = await http.post(path, content=content, headers={"content-type": "application/json"})
                    tally.check(f"bad: {name}", response, expected)
            except httpx.HTTPError as exc:
                tally.unexpected.append(f"client {number}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)


async def slowloris(port: int, tally: Tally, stop: float, header_timeout: float) -> None:
    """Trickle a header a byte a second; note how long the server keeps the connection."""
    header = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"z" * 400
    while time.monotonic() < stop:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        tally.slow_connections += 1
        closed = None
        try:
            for byte in header:
                if time.monotonic() > stop:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
                    if data == b"" or data:
                        closed = time.monotonic()
                        break
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            closed = time.monotonic()
        finally:
            writer.close()
        if closed is not None:
            lifetime = closed - opened
            tally.slow_lifetimes.append(lifetime)
            if lifetime > header_timeout + GRACE_S:
                tally.held_past_timeout += 1
        elif time.monotonic() - opened > header_timeout + GRACE_S:
            tally.held_past_timeout += 1  # still open at the end of the trickle


async def dropper(number: int, port: int, tally: Tally, stop: float, body_timeout: float) -> None:
    """Clients that hang up mid-body, send less than Content-Length, or send half a body and wait."""
    rng = random.Random(1000 + number)
    while time.monotonic() < stop:
        how = rng.choice(["close", "short", "wait"])
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        opened = time.monotonic()
        if how == "close":
            writer.write(head + b"Content-Length: 2000\r\n\r\n" + b'{"input": ["' + b"a" * 300)
        elif how == "short":
            writer.write(head + b"Content-Length: 900\r\n\r\n" + b'{"input": "short"}')
        else:
            writer.write(head + b"Content-Length: 500\r\n\r\n" + b'{"input": "half')
        await writer.drain()
        if how == "wait":
            try:
                await asyncio.wait_for(reader.read(), timeout=body_timeout + GRACE_S + 5)
                if time.monotonic() - opened > body_timeout + GRACE_S:
                    tally.held_past_timeout += 1
            except asyncio.TimeoutError:
                tally.held_past_timeout += 1
        else:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
        writer.close()
        tally.drops += 1
        await asyncio.sleep(rng.uniform(0.2, 1.0))


async def drive(args: argparse.Namespace, port: int, pid: int, texts: list[str]) -> dict:
    url = f"http://{HOST}:{port}"
    tally = Tally()
    started = time.monotonic()
    stop = started + args.duration
    phase = {"name": "warmup"}
    rss: list[tuple[float, float]] = []
    tasks = [asyncio.create_task(client(i, url, texts, tally, phase, stop, args.large_clients)) for i in range(args.clients)]
    tasks += [asyncio.create_task(slowloris(port, tally, stop, args.header_timeout)) for _ in range(args.slowloris)]
    tasks += [asyncio.create_task(dropper(i, port, tally, stop, args.body_timeout)) for i in range(args.droppers)]
    warm_end = started + args.warmup
    rss_warm = None
    # phases: warm-up with everything, then alternate without / with large requests
    schedule = []
    t = warm_end
    while t < stop:
        schedule.append(("without", t))
        schedule.append(("with", t + args.phase))
        t += 2 * args.phase
    while time.monotonic() < stop:
        now = time.monotonic()
        if now >= warm_end and rss_warm is None:
            rss_warm = rss_mib(pid)
        current = "warmup"
        for name, begins in schedule:
            if now >= begins:
                current = name
        phase["name"] = current
        rss.append((round(now - started, 1), rss_mib(pid)))
        await asyncio.sleep(1.0)
    rss_end = rss_mib(pid)
    await asyncio.wait(tasks, timeout=args.header_timeout + args.body_timeout + 60)
    for task in tasks:
        task.cancel()
    async with httpx.AsyncClient(timeout=60) as http:
        health = (await http.get(f"{url}/health")).json()
    return {"tally": tally, "rss_warm": rss_warm, "rss_end": rss_end, "rss": rss, "health": health,
            "t0": time.perf_counter() - (time.monotonic() - started)}


def build_index(directory: Path, count: int) -> Path:
    from matryoshka.data.wordnet import load_glosses
    from matryoshka.indexes.faiss import FunnelIndex
    from matryoshka.models.loading import load_model
    from matryoshka.retrieval import PRESETS

    ids, texts = load_glosses(count)
    index = FunnelIndex.build(load_model(), texts, ids=ids, model_name="all-MiniLM-L6-v2", stages=PRESETS["funnel"],
                              show_progress_bar=False)
    index.save(directory / "index")
    return directory / "index"


def server_log_statuses(path: Path) -> Counter:
    statuses: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "status" in record:
            statuses[int(record["status"])] += 1
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load in all (bounded)")
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--phase", type=float, default=60, help="seconds per without/with-large phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--large-clients", type=int, default=2, help="clients sending 9-2,048 texts in 'with' phases")
    parser.add_argument("--slowloris", type=int, default=100)
    parser.add_argument("--droppers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--index-size", type=int, default=2000)
    parser.add_argument("--header-timeout", type=float, default=10)
    parser.add_argument("--body-timeout", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.duration > 3600:
        parser.error("--duration is capped at 3600 s")

    from matryoshka.data.wordnet import load_glosses

    texts = load_glosses(3000)[1]
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    index = build_index(work, args.index_size)
    port = free_port()
    log_path = work / "server.log"
    command = [
        sys.executable, "-m", "matryoshka.cli", "serve", "--host", HOST, "--port", str(port), "--index", str(index),
        "--threads", str(args.threads), "--timeout-header", str(args.header_timeout),
        "--timeout-body", str(args.body_timeout), "--log-level", "info",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stderr=log, stdout=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"http://{HOST}:{port}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.5)
            result = asyncio.run(drive(args, port, server.pid, texts))
        finally:
            server.terminate()
            server.wait(timeout=60)
    load_after = os.getloadavg()
    tally: Tally = result["tally"]
    log_statuses = server_log_statuses(log_path)
    without, with_large = tally.small_ms["without"], tally.small_ms["with"]
    p99_without, p99_with = percentile(without, 99), percentile(with_large, 99)
    growth = (result["rss_end"] - result["rss_warm"]) / result["rss_warm"] * 100
    batches = next(iter(result["health"]["batches"].values()))
    report = {
        "command": "HF_HUB_OFFLINE=1 nice -n 5 python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_before": load_before,
                    "load_avg_after": load_after},
        "small_latency_ms": {
            "without_large": {"n": len(without), "p50": percentile(without, 50), "p99": p99_without},
            "with_large": {"n": len(with_large), "p50": percentile(with_large, 50), "p99": p99_with},
            "p99_ratio": p99_with / p99_without if without and with_large else None,
            "target_ratio": 3.0,
        },
        "requests": tally.requests,
        "large_requests_done": tally.large_done,
        "large_requests_cancelled_at_phase_end": tally.large_cancelled,
        "client_statuses": dict(sorted(tally.statuses.items())),
        "throttled_429_503": tally.throttled,
        "unexpected": len(tally.unexpected) + log_statuses.get(500, 0),
        "unexpected_examples": tally.unexpected[:20],
        "slowest_small": [
            {"ms": round(ms), "phase": label, "client": who, "started_s": round(at - result["t0"], 1)}
            for ms, label, who, at in tally.slowest
        ],
        "server_log_statuses": dict(sorted(log_statuses.items())),
        "slowloris_connections": tally.slow_connections,
        "slowloris_lifetime_s": {"median": statistics.median(tally.slow_lifetimes) if tally.slow_lifetimes else None,
                                 "max": max(tally.slow_lifetimes, default=None)},
        "mid_body_drops": tally.drops,
        "held_past_timeout": tally.held_past_timeout,
        "rss_mib": {"after_warmup": result["rss_warm"], "end": result["rss_end"], "growth_pct": growth,
                    "samples": result["rss"][:: max(1, len(result["rss"]) // 60)]},
        "batches": batches,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    lat = r["small_latency_ms"]
    ratio = lat["p99_ratio"]
    rss = r["rss_mib"]
    ok = lambda good: "met" if good else "**missed**"
    lines = [
        "# Soak: `matryoshka serve` under load and faults",
        "",
        f"`{r['command']}`",
        "",
        f"{r['settings']['duration']:.0f} s on 127.0.0.1, {r['settings']['clients']} clients "
        f"({r['settings']['large_clients']} of them sending 9-2,048 texts in the 'with large' phases), "
        f"{r['settings']['slowloris']} slowloris connections, {r['settings']['droppers']} clients dropping mid-body; "
        f"server with {r['settings']['threads']} torch thread(s), a {r['settings']['index_size']}-gloss index, "
        f"header/body timeouts {r['settings']['header_timeout']:g}/{r['settings']['body_timeout']:g} s. "
        f"Machine: {r['machine']['cpus']} CPU cores, load average {r['machine']['load_avg_before'][0]:.1f} before and "
        f"{r['machine']['load_avg_after'][0]:.1f} after.",
        "",
        "| measure | value | target | |",
        "|---|---:|---:|---|",
        f"| small requests (<= {SMALL_MAX} texts) p50 / p99 without large requests | "
        f"{lat['without_large']['p50']:.0f} / {lat['without_large']['p99']:.0f} ms (n={lat['without_large']['n']}) | | |",
        f"| small requests p50 / p99 with large requests | {lat['with_large']['p50']:.0f} / {lat['with_large']['p99']:.0f} ms "
        f"(n={lat['with_large']['n']}) | | |",
        f"| p99 with / p99 without | {'n/a' if ratio is None else f'{ratio:.2f}x'} | <= 3x | "
        f"{ok(ratio is not None and ratio <= 3)} |",
        f"| unexpected responses (client-side + 500s in the server log) | {r['unexpected']} of {r['requests']} | 0 | "
        f"{ok(r['unexpected'] == 0)} |",
        f"| connections held past their timeout + {GRACE_S:g} s | {r['held_past_timeout']} "
        f"({r['slowloris_connections']} slowloris, {r['mid_body_drops']} drops) | 0 | {ok(r['held_past_timeout'] == 0)} |",
        f"| server RSS after warm-up / end | {rss['after_warmup']:.0f} / {rss['end']:.0f} MiB "
        f"({rss['growth_pct']:+.1f}%) | <= +5% | {ok(rss['growth_pct'] <= 5)} |",
        "",
        f"Large requests answered: {r['large_requests_done']} (and {r['large_requests_cancelled_at_phase_end']} hung up "
        "when a phase without large requests began, so that phase starts clean); "
        f"429/503 with Retry-After: {r['throttled_429_503']}. "
        f"Largest model call: {r['batches']['largest_batch']} texts; {r['batches']['calls']} calls.",
        "",
        f"Client-side statuses: {r['client_statuses']}. Server log statuses: {r['server_log_statuses']} "
        "(408: timed-out headers or bodies, 499: clients that hung up).",
        "",
    ]
    if r["unexpected_examples"]:
        lines += ["Unexpected:", "", *[f"- {e}" for e in r["unexpected_examples"]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
