"""What ``matryoshka serve --upstream`` costs and saves: the proxy's added latency and throughput, and the
upstream calls the vector cache saves between ``adapt`` and ``index build``.

The upstream is a second ``matryoshka serve`` process: the packaged all-MiniLM-L6-v2 on torch, one thread,
``OMP_NUM_THREADS=1`` (a stand-in for text-embeddings-inference or a hosted API, which would answer in tens
of ms too, usually more). The proxy is ``matryoshka serve --upstream http://127.0.0.1:PORT/v1
--upstream-model all-MiniLM-L6-v2 --adaptor FILE``, serving the adaptor part 1 fitted through it. Both run
in subprocesses with their default request logging; the clients run in this process. ``--pin`` pins the
upstream to CPU 0 and the proxy to CPU 1 with ``taskset`` (default: the scheduler places them).

1. calls: ``adapt --upstream ... --corpus npl --limit N --method rotation``, then ``index build --upstream`` of
   the same texts, then the same ``adapt`` again (a re-fit), then ``index build --no-cache`` (what the build
   costs without the cache). Calls as each command prints them, and as the upstream's access log counts its
   ``POST /v1/embeddings`` requests.
2. latency, 1 client: each WordNet gloss (never sent before) goes once to the upstream directly and once
   through the proxy (a cache miss there), one text per request, ``encoding_format=base64`` (what the
   ``openai`` client sends), direct first for even pairs and proxied first for odd ones, so drift hits both
   alike. Then the same glosses again: through the proxy they are cache hits, each beside a direct call.
3. throughput: 1, 4 and 16 concurrent clients post one fresh gloss per request for ``--seconds``, direct and
   proxied, the order swapped every round.

Targets (the issue): the proxy adds <= 10% to the upstream's p50 latency on a cache miss at 1 client; a
cache hit answers >= 10x faster than the upstream; the second command makes no upstream call for texts
already seen.

    HF_HUB_OFFLINE=1 MATRYOSHKA_DATA=../shared/data TOKENIZERS_PARALLELISM=false python benchmarks/upstream.py
    python benchmarks/upstream.py --pairs 100 --seconds 3 --rounds 1 --limit 300 --out /tmp/up   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
#: The issue's targets.
MAX_ADDED_P50, MIN_HIT_SPEEDUP = 0.10, 10.0
COST_LINE = re.compile(r"upstream \S+: ([\d,]+) calls(?: \((\d+) retries\))?, ([\d,]+) texts embedded; "
                       r"cache (?:([\d,]+) hits, ([\d,]+) misses|off)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(cache: Path) -> dict[str, str]:
    """The environment of every command and server here: offline, one thread, the vector cache in ``cache``."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "MATRYOSHKA_CACHE": str(cache)}


class Server:
    """A ``matryoshka serve`` subprocess on a free port, its output in ``log_path``, until ``/health`` answers."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cpu: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.command = [*pin, sys.executable, "-m", "matryoshka.cli", "serve", *args, "--port", str(self.port)]
        with log_path.open("w") as out:
            self.process = subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.command)} exited {self.process.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(self.command)} did not start:\n{self.log_path.read_text()}")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health", timeout=30).json())

    def embedding_requests(self) -> int:
        """``POST /v1/embeddings`` requests this server logged (its access log: one JSON line per request)."""
        count = 0
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    count += record.get("msg") == "request" and record.get("path") == "/v1/embeddings"
        return count


def cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) each running process has used so far, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            used[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return used


class OtherLoad:
    """How many cores processes other than this benchmark's used during a phase (those that ended inside
    it are missed, so this is a floor): the noise every number here shares."""

    def __init__(self) -> None:
        self.ours: set[int] = {os.getpid()}
        self.phases: dict[str, float] = {}
        self._start, self._since = cpu_seconds(), time.perf_counter()

    def phase(self, name: str) -> None:
        """Close the phase that began at the last call (or at creation) under ``name``; start the next."""
        now, elapsed = cpu_seconds(), time.perf_counter() - self._since
        used = sum(seconds - self._start.get(pid, 0.0) for pid, seconds in now.items() if pid not in self.ours)
        self.phases[name] = round(used / elapsed, 2)
        self._start, self._since = now, time.perf_counter()


def upstream_server(work: Path, env: dict[str, str], backend: str, pin: bool) -> Server:
    return Server(["--backend", backend, "--threads", "1"], env, work / "upstream.log", 0 if pin else None)


def proxy_server(upstream: Server, work: Path, env: dict[str, str], adaptor: Path | None, pin: bool,
                 name: str = "proxy") -> Server:
    args = ["--upstream", f"{upstream.url}/v1", "--upstream-model", MODEL]
    args += ["--adaptor", str(adaptor)] if adaptor is not None else []
    return Server(args, env, work / f"{name}.log", 1 if pin else None)


def proxy_stats(proxy: Server) -> dict[str, Any]:
    return dict(proxy.health()["upstream"][MODEL])


# -- 1. calls saved by the cache ----------------------------------------------------------------------------


def run_command(args: list[str], env: dict[str, str], upstream: Server) -> dict[str, Any]:
    """Run ``matryoshka ARGS``; what it printed about its upstream calls, and what the upstream counted."""
    before = upstream.embedding_requests()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "matryoshka.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"matryoshka {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    found = COST_LINE.search(done.stderr)
    if found is None:
        raise RuntimeError(f"matryoshka {' '.join(args)} printed no upstream cost line:\n{done.stderr[-3000:]}")
    number = lambda group: int(found.group(group).replace(",", "")) if found.group(group) else None  # noqa: E731
    time.sleep(0.5)  # the upstream's last log line
    return {"command": shown(args), "seconds": round(seconds, 1),
            "cli_line": found.group(0), "cli_calls": number(1), "cli_retries": number(2) or 0,
            "cli_texts": number(3), "cache_hits": number(4), "cache_misses": number(5),
            "upstream_requests": upstream.embedding_requests() - before}


def calls_part(upstream: Server, work: Path, env: dict[str, str], corpus: str, limit: int) -> tuple[list[dict], Path]:
    url = f"{upstream.url}/v1"
    up = ["--upstream", url, "--upstream-model", MODEL]
    source = ["--corpus", corpus, "--limit", str(limit)]
    adaptor = work / "npl-adaptor.safetensors"
    steps = [
        ("adapt (first: the corpus is sent)", ["adapt", *source, "--method", "rotation", "--out", str(adaptor), *up]),
        ("index build (same texts)", ["index", "build", *source, "--out", str(work / "index"), *up]),
        ("adapt again (a re-fit)", ["adapt", *source, "--method", "rotation", "--out", str(adaptor), *up]),
        ("index build --no-cache (the build without the cache)",
         ["index", "build", *source, "--out", str(work / "index-nocache"), *up, "--no-cache"]),
    ]
    rows = []
    for label, args in steps:
        log(f"calls: {label}")
        rows.append({"step": label, **run_command(args, env, upstream)})
        log(f"  {rows[-1]['cli_line']}; upstream counted {rows[-1]['upstream_requests']}")
    return rows, adaptor


# -- 2. latency at 1 client -----------------------------------------------------------------------------------


def glosses() -> list[str]:
    """Every distinct WordNet gloss, shuffled with a fixed seed: the fresh texts the clients send."""
    from matryoshka.data.wordnet import JSONL_RELATIVE, find_source, load_glosses

    root = os.environ.get("MATRYOSHKA_DATA")
    source = Path(root) / JSONL_RELATIVE if root and (Path(root) / JSONL_RELATIVE).exists() else find_source()
    texts = list(dict.fromkeys(load_glosses(None, source)[1]))
    random.Random(0).shuffle(texts)
    return texts


def body(text: str) -> dict[str, Any]:
    return {"model": MODEL, "input": [text], "encoding_format": "base64"}


def timed_post(http: httpx.Client, url: str, text: str) -> float:
    started = time.perf_counter()
    response = http.post(f"{url}/v1/embeddings", json=body(text))
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def quantiles(values: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "mean_ms": round(float(np.mean(values)), 2),
            "n": len(values)}


def paired(direct: Server, proxy: Server, texts: list[str]) -> dict[str, Any]:
    """Each text to the upstream and through the proxy, alternating which goes first."""
    times: dict[str, list[float]] = {"direct": [], "proxied": []}
    with httpx.Client(timeout=120) as to_direct, httpx.Client(timeout=120) as to_proxy:
        for warm in ("warm-up text one", "warm-up text two"):  # connections opened, first-call costs paid
            timed_post(to_direct, direct.url, warm)
            timed_post(to_proxy, proxy.url, warm)
        for i, text in enumerate(texts):
            order = [("direct", to_direct, direct), ("proxied", to_proxy, proxy)]
            for side, http, server in order if i % 2 == 0 else order[::-1]:
                times[side].append(timed_post(http, server.url, text))
    d, p = times["direct"], times["proxied"]
    result: dict[str, Any] = {"direct": quantiles(d), "proxied": quantiles(p)}
    result["p50_ratio"] = round(result["proxied"]["p50_ms"] / result["direct"]["p50_ms"], 3)
    result["p99_ratio"] = round(result["proxied"]["p99_ms"] / result["direct"]["p99_ms"], 3)
    result["paired_difference_p50_ms"] = round(float(np.median(np.subtract(p, d))), 2)
    return result


def latency_part(upstream: Server, proxy: Server, texts: list[str]) -> dict[str, Any]:
    before_stats, before_calls = proxy_stats(proxy), upstream.embedding_requests()
    log(f"latency: {len(texts)} pairs, cache misses at the proxy")
    miss = paired(upstream, proxy, texts)
    after_miss = proxy_stats(proxy)
    miss["proxy_cache"] = {k: after_miss[k] - before_stats[k] for k in ("cache_hits", "cache_misses", "calls")}
    log(f"  direct p50 {miss['direct']['p50_ms']} ms, proxied p50 {miss['proxied']['p50_ms']} ms")
    log(f"latency: the same {len(texts)} texts again, cache hits at the proxy")
    calls_before_hits = upstream.embedding_requests()
    hit = paired(upstream, proxy, texts)
    after_hit = proxy_stats(proxy)
    hit["proxy_cache"] = {k: after_hit[k] - after_miss[k] for k in ("cache_hits", "cache_misses", "calls")}
    # every upstream request in the hit phase is a direct one (plus the two warm-up texts' direct calls)
    hit["upstream_requests_beyond_direct"] = upstream.embedding_requests() - calls_before_hits - len(texts) - 2
    hit["speedup_p50"] = round(hit["direct"]["p50_ms"] / hit["proxied"]["p50_ms"], 2)
    log(f"  direct p50 {hit['direct']['p50_ms']} ms, proxied (hit) p50 {hit['proxied']['p50_ms']} ms")
    return {"miss": miss, "hit": hit, "upstream_requests": upstream.embedding_requests() - before_calls}


# -- 3. throughput ------------------------------------------------------------------------------------------


async def load(url: str, texts: Iterator[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` loops posting one fresh text per request, back to back, for ``seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await http.post(f"{url}/v1/embeddings", json=body(next(texts)))  # open a connection first
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                response = await http.post(f"{url}/v1/embeddings", json=body(next(texts)))
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - begin) * 1000)
                else:
                    errors.append(f"{response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds": round(elapsed, 2), "rps": round(len(latencies) / elapsed, 1), **quantiles(latencies or [0.0])}


def batches(server: Server) -> dict[str, int]:
    """The server's micro-batcher counters: model calls (for the proxy: calls into the upstream model) and texts."""
    stats = server.health()["batches"][MODEL]
    return {"calls": int(stats["calls"]), "texts": int(stats["texts"])}


def throughput_part(upstream: Server, proxy: Server, texts: Iterator[str], clients: list[int], seconds: float,
                    rounds: int) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict]]] = {str(c): {"direct": [], "proxied": []} for c in clients}
    hits_before = proxy_stats(proxy)["cache_hits"]
    for r in range(rounds):
        for c in clients:
            sides = [("direct", upstream), ("proxied", proxy)]
            for side, server in sides if r % 2 == 0 else sides[::-1]:
                before = {"upstream": batches(upstream), "proxy": batches(proxy)}
                result = asyncio.run(load(server.url, texts, c, seconds))
                for name, counted in (("upstream", upstream), ("proxy", proxy)):
                    after = batches(counted)
                    calls = after["calls"] - before[name]["calls"]
                    result[f"{name}_texts_per_batch"] = round((after["texts"] - before[name]["texts"]) / calls, 2) if calls else None
                runs[str(c)][side].append(result)
                log(f"throughput: round {r + 1}, {c} clients, {side}: {result['rps']} req/s, p50 {result['p50_ms']} ms, "
                    f"texts per upstream model call {result['upstream_texts_per_batch']}")
    summary = {}
    for c, sides_runs in runs.items():
        row = {side: {"rps_median": float(np.median([x["rps"] for x in rs])), "rps_runs": [x["rps"] for x in rs],
                      "p50_ms_median": float(np.median([x["p50_ms"] for x in rs])),
                      "upstream_texts_per_batch": float(np.median([x["upstream_texts_per_batch"] or 0 for x in rs])),
                      "errors": sum(x["errors"] for x in rs)} for side, rs in sides_runs.items()}
        row["ratio"] = round(row["proxied"]["rps_median"] / row["direct"]["rps_median"], 3)
        summary[c] = row
    return {"runs": runs, "summary": summary, "proxy_cache_hits": proxy_stats(proxy)["cache_hits"] - hits_before}


# -- the report --------------------------------------------------------------------------------------------


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    miss, hit = report["latency"]["miss"], report["latency"]["hit"]
    added = miss["p50_ratio"] - 1
    second = report["calls"][1]
    return [
        {"target": f"the proxy adds <= {MAX_ADDED_P50:.0%} to the upstream's p50 on a cache miss, 1 client",
         "value": f"+{100 * added:.1f}% ({miss['proxied']['p50_ms']} vs {miss['direct']['p50_ms']} ms)",
         "met": added <= MAX_ADDED_P50},
        {"target": f"a cache hit answers >= {MIN_HIT_SPEEDUP:g}x faster than the upstream (p50)",
         "value": f"{hit['speedup_p50']}x ({hit['proxied']['p50_ms']} vs {hit['direct']['p50_ms']} ms)",
         "met": hit["speedup_p50"] >= MIN_HIT_SPEEDUP},
        {"target": "the second command (index build after adapt) makes no upstream call for texts already seen",
         "value": f"{second['cli_calls']} calls by its own count, {second['upstream_requests']} at the upstream",
         "met": second["cli_calls"] == 0 and second["upstream_requests"] == 0},
    ]


def context(report: dict[str, Any]) -> list[str]:
    """What the latency numbers mean in milliseconds: the proxy's own cost, and the upstream speed at which
    each latency target would hold with that cost (a reading aid; the verdicts above are what was measured)."""
    miss, hit = report["latency"]["miss"], report["latency"]["hit"]
    added = miss["proxied"]["p50_ms"] - miss["direct"]["p50_ms"]
    own = hit["proxied"]["p50_ms"]
    return [f"In milliseconds: on a miss the proxy added {added:.2f} ms at p50 (median paired difference "
            f"{miss['paired_difference_p50_ms']} ms) to an upstream answering in {miss['direct']['p50_ms']} ms; a hit "
            f"took {own} ms, the proxy's own HTTP path. The same costs would meet the 10% target beside an upstream "
            f"whose p50 is {added / MAX_ADDED_P50:.0f} ms or more, and the 10x target beside one of "
            f"{own * MIN_HIT_SPEEDUP:.0f} ms or more (this upstream is on the same machine and runs a 6-layer "
            "model; an API across a network adds its round trip to every miss)."]


def tidy(line: str) -> str:
    """A command line as the results show it: paths relative to the repository, the upstream's port as PORT."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line.replace(f"{ROOT}/", ""))


def shown(args: list[str]) -> str:
    return tidy("matryoshka " + " ".join(args))


def markdown(report: dict[str, Any]) -> str:
    lat, thr = report["latency"], report["throughput"]["summary"]
    lines = [
        "# `serve --upstream`: added latency, throughput, calls saved by the cache", "",
        f"Command: `{report['command']}` ({report['date']}, {report['cpus']} CPUs, load average "
        f"{report['load_start']:.2f} at the start and {report['load_end']:.2f} at the end). {report['setup']}", "",
        f"**Noise.** This machine is a VM with {report['cpus']} cores; other jobs (training and comparison runs, "
        f"tests) come and go on it. During this run, processes outside this benchmark used "
        f"{report['other_cores']['latency']} cores on average in the latency part and "
        f"{report['other_cores']['throughput']} in the throughput part (a floor: processes that ended meanwhile are "
        "missed). The upstream, the proxy and the clients share the rest, so absolute milliseconds and requests/s "
        "are noisy and differ from run to run, and not only with the load inside the VM. The interleaved "
        "direct/proxied ratios are what to read; p99 and the 16-client numbers are the noisiest.", "",
        "## Targets", "", "| target | measured | |", "|---|---|---|",
        *[f"| {v['target']} | {v['value']} | {'met' if v['met'] else '**missed**'} |" for v in report["verdicts"]], "",
        *context(report), "",
        f"## Latency, 1 client ({lat['miss']['direct']['n']} requests each side)", "",
        "| phase | direct p50 | direct p99 | proxied p50 | proxied p99 | p50 ratio | p99 ratio | median paired difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in ("miss", "hit"):
        m = lat[phase]
        lines.append(f"| cache {phase} | {m['direct']['p50_ms']} ms | {m['direct']['p99_ms']} ms | {m['proxied']['p50_ms']} ms"
                     f" | {m['proxied']['p99_ms']} ms | {m['p50_ratio']} | {m['p99_ratio']} | {m['paired_difference_p50_ms']} ms |")
    mc, hc = lat["miss"]["proxy_cache"], lat["hit"]["proxy_cache"]
    lines += ["", f"The proxy's own counters: miss phase {mc['cache_misses']} misses, {mc['cache_hits']} hits, "
              f"{mc['calls']} upstream calls; hit phase {hc['cache_hits']} hits, {hc['cache_misses']} misses, "
              f"{hc['calls']} upstream calls (the upstream logged {lat['hit']['upstream_requests_beyond_direct']} "
              "requests beyond the direct ones).", "",
              f"## Throughput (one fresh text per request, cache misses; median of {report['args']['rounds']} runs of "
              f"{report['args']['seconds']} s)", "",
              "| clients | direct req/s | proxied req/s | proxied / direct | direct p50 | proxied p50 | texts per upstream "
              "forward pass (direct; proxied) | runs, req/s (direct; proxied) |",
              "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c, row in thr.items():
        d, p = row["direct"], row["proxied"]
        lines.append(f"| {c} | {d['rps_median']:.1f} | {p['rps_median']:.1f} | {row['ratio']} | {d['p50_ms_median']:.1f} ms"
                     f" | {p['p50_ms_median']:.1f} ms | {d['upstream_texts_per_batch']:.1f}; {p['upstream_texts_per_batch']:.1f}"
                     f" | {', '.join(map(str, d['rps_runs']))}; {', '.join(map(str, p['rps_runs']))} |")
    lines += ["", "Texts per upstream forward pass: the upstream's micro-batcher merges concurrent requests into one model "
              "call. Through the proxy its requests come from the proxy's own micro-batcher, which keeps up to "
              "`--upstream-concurrency` (4) calls in flight and merges what queued meanwhile into the next."]
    errors = sum(row[s]["errors"] for row in thr.values() for s in ("direct", "proxied"))
    lines += ["", f"Errors: {errors}. Cache hits at the proxy during the throughput runs: "
              f"{report['throughput']['proxy_cache_hits']} (every proxied request was a miss).", "",
              f"## Upstream calls: `adapt` then `index build` on the same corpus ({report['args']['corpus']}, first "
              f"{report['args']['limit']:,} texts)", "",
              "| step | calls (the command's own line) | requests the upstream logged | cache hits / misses | seconds |",
              "|---|---:|---:|---|---:|"]
    for row in report["calls"]:
        cache = f"{row['cache_hits']:,} / {row['cache_misses']:,}" if row["cache_hits"] is not None else "off"
        lines.append(f"| {row['step']} | {row['cli_calls']:,} | {row['upstream_requests']:,} | {cache} | {row['seconds']} |")
    saved = report["calls"][3]["cli_calls"]
    lines += ["", f"Without the cache the build would have cost {saved:,} calls (the `--no-cache` row); with it, "
              f"{report['calls'][1]['cli_calls']}. Commands, in order:", "",
              *[f"- `{row['command']}`" for row in report["calls"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="latency: texts, each sent direct and proxied")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput: length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: runs per client count and side")
    parser.add_argument("--corpus", default="npl", help="calls: the corpus adapt and index build share")
    parser.add_argument("--limit", type=int, default=3000, help="calls: its first N texts")
    parser.add_argument("--backend", default="torch", help="the upstream's --backend")
    parser.add_argument("--pin", action="store_true", help="taskset: the upstream on CPU 0, the proxy on CPU 1")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-upstream", help="caches, logs, index")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "upstream")
    parser.add_argument("--render", action="store_true", help="only write upstream.md again from upstream.json")
    args = parser.parse_args(argv)
    from matryoshka.files import write_atomic

    if args.render:
        write_atomic(args.out / "upstream.md", markdown(json.loads((args.out / "upstream.json").read_text())).encode())
        return
    work = args.work / datetime.now().strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    env = child_env(work / "cache")  # a fresh vector cache: every first call is a real miss
    report: dict[str, Any] = {
        "command": "python benchmarks/upstream.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "load_start": os.getloadavg()[0], "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "setup": (f"Upstream: `matryoshka serve --backend {args.backend} --threads 1` (packaged {MODEL}, "
                  "OMP_NUM_THREADS=1). Proxy: `matryoshka serve --upstream http://127.0.0.1:PORT/v1 --upstream-model "
                  f"{MODEL} --adaptor <the adaptor of the calls part>`. "
                  + ("Pinned with taskset: upstream on CPU 0, proxy on CPU 1; the clients unpinned."
                     if args.pin else "Not pinned: the scheduler places the upstream, the proxy and the clients.")),
    }
    texts = glosses()
    needed = args.pairs + 2000 * args.rounds * len(args.clients.split(","))
    log(f"{len(texts):,} distinct glosses (about {needed:,} may be needed)")
    other = OtherLoad()
    with upstream_server(work, env, args.backend, args.pin) as upstream:
        other.ours.add(upstream.process.pid)
        report["calls"], adaptor = calls_part(upstream, work, env, args.corpus, args.limit)
        with proxy_server(upstream, work, env, adaptor, args.pin) as proxy:
            other.ours.add(proxy.process.pid)
            other.phase("calls")  # includes the commands' own processes, which end inside it
            report["latency"] = latency_part(upstream, proxy, texts[: args.pairs])
            other.phase("latency")
            fresh = iter(texts[args.pairs :])
            clients = [int(c) for c in args.clients.split(",")]
            report["throughput"] = throughput_part(upstream, proxy, fresh, clients, args.seconds, args.rounds)
            other.phase("throughput")
    report["other_cores"] = other.phases
    report["load_end"] = os.getloadavg()[0]
    report["verdicts"] = verdicts(report)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "upstream.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(args.out / "upstream.md", markdown(report).encode())
    log(f"wrote {args.out / 'upstream.md'}")
    for verdict in report["verdicts"]:
        log(f"{'met' if verdict['met'] else 'MISSED'}: {verdict['target']}: {verdict['value']}")


if __name__ == "__main__":
    main()
