"""End to end on SciFact: an adaptor fitted and served through an upstream API scores what the same adaptor
scores on the model directly.

Through the API: the upstream is ``matryoshka serve --backend torch --threads 1`` (the packaged
all-MiniLM-L6-v2, OMP_NUM_THREADS=1); ``matryoshka adapt --upstream ... --corpus scifact --pairs scifact``
fits and saves an adaptor file (and its report); ``matryoshka serve --upstream ... --adaptor FILE`` serves it;
the official ``openai`` client encodes SciFact's corpus and its 300 test queries at ``dimensions=64`` through
that server, and :func:`matryoshka.evaluation.retrieval.score_vectors` scores nDCG@10.

On the model directly: ``matryoshka adapt --corpus scifact --pairs scifact --out DIR`` (the packaged model),
then ``matryoshka evaluate -m DIR --task scifact --dims 64``.

Target (the issue): the same nDCG@10 to 1e-4. Every command's vector cache is under ``--work``
(``MATRYOSHKA_CACHE``), so a rerun sends nothing the first run sent.

    HF_HUB_OFFLINE=1 MATRYOSHKA_DATA=../shared/data TOKENIZERS_PARALLELISM=false python benchmarks/upstream_scifact.py
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from upstream import MODEL, ROOT, child_env, log, proxy_server, proxy_stats, run_command, shown, tidy, upstream_server

DIM = 64
TOLERANCE = 1e-4
#: Texts per request the client sends (the server's default limit is 2,048).
REQUEST_TEXTS = 128


def encode_through(url: str, texts: list[str]) -> np.ndarray:
    """``texts`` at ``DIM`` dimensions from the server at ``url``, with the official client, as base64."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    rows = []
    for start in range(0, len(texts), REQUEST_TEXTS):
        answer = client.embeddings.create(model=MODEL, input=texts[start : start + REQUEST_TEXTS], dimensions=DIM,
                                          encoding_format="base64")
        rows += [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in answer.data]  # type: ignore[arg-type]
    return np.stack(rows)


def served_check(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """adapt --upstream, serve --upstream --adaptor, encode through it, score."""
    import httpx

    from matryoshka.data.beir import load_beir
    from matryoshka.evaluation.retrieval import score_vectors

    dataset = load_beir("scifact")
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    adaptor = work / "api-adaptor.safetensors"
    with upstream_server(work, env, "torch", pin=False) as upstream:
        up = ["--upstream", f"{upstream.url}/v1", "--upstream-model", MODEL]
        log("through the API: adapt --upstream")
        fitted = run_command(["adapt", "--corpus", "scifact", "--pairs", "scifact", "--out", str(adaptor), *up], env,
                             upstream)
        log(f"  {fitted['cli_line']}; the upstream counted {fitted['upstream_requests']} requests")
        with proxy_server(upstream, work, env, adaptor, pin=False) as proxy:
            card = httpx.get(f"{proxy.url}/v1/models/{MODEL}", timeout=30).json()
            before, requests_before = proxy_stats(proxy), upstream.embedding_requests()
            log(f"through the API: encoding {len(doc_ids):,} documents and {len(query_ids)} queries at {DIM} dims")
            started = time.perf_counter()
            docs = encode_through(proxy.url, [dataset.corpus[i] for i in doc_ids])
            queries = encode_through(proxy.url, [dataset.queries[i] for i in query_ids])
            seconds = time.perf_counter() - started
            after = proxy_stats(proxy)
            time.sleep(0.5)
            requests = upstream.embedding_requests() - requests_before
    scores = score_vectors(dataset.qrels, doc_ids, docs, query_ids, queries, [DIM], k_values=(10,))
    return {
        "adapt": fitted, "matryoshka_dimensions": card.get("matryoshka_dimensions"),
        "encode_seconds": round(seconds, 1), "ndcg@10": scores["ndcg@10"][DIM],
        "proxy": {k: after[k] - before[k] for k in ("calls", "texts", "cache_hits", "cache_misses")},
        "upstream_requests_while_encoding": requests,
        "vector_norms": [round(float(np.linalg.norm(docs, axis=1).min()), 6), round(float(np.linalg.norm(docs, axis=1).max()), 6)],
    }


def matryoshka(args: list[str], env: dict[str, str]) -> float:
    """Run ``matryoshka ARGS`` (no upstream); its seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "matryoshka.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"matryoshka {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - started, 1)


def direct_check(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """adapt on the packaged model, then evaluate the adapted model at DIM dims."""
    from matryoshka.evaluation.results import Results

    adapted, evaluated = work / "adapted", work / "evaluate"
    adapt_args = ["adapt", "--corpus", "scifact", "--pairs", "scifact", "--out", str(adapted)]
    evaluate_args = ["evaluate", "-m", str(adapted), "--task", "scifact", "--dims", str(DIM), "--out", str(evaluated)]
    log("on the model: adapt")
    adapt_seconds = matryoshka(adapt_args, env)
    log("on the model: evaluate")
    evaluate_seconds = matryoshka(evaluate_args, env)
    results = Results.load(evaluated / "results.json")
    (name, by_dim), = results.scores.items()
    config = json.loads((adapted / "config.json").read_text()) if (adapted / "config.json").is_file() else {}
    return {"adapt": {"command": shown(adapt_args), "seconds": adapt_seconds},
            "evaluate": {"command": shown(evaluate_args), "seconds": evaluate_seconds},
            "metric": results.metric, "model": name, "ndcg@10": by_dim[DIM],
            "config_matryoshka_dimensions": config.get("matryoshka_dimensions")}


def compare_adaptors(work: Path) -> dict[str, Any]:
    """How far apart the two fits are: the saved candidates, and the largest difference of their weights in
    the rows that make the first ``DIM`` output dimensions (what a ``DIM``-dim prefix reads) and in all rows."""
    from matryoshka.adapt import Adaptor

    served = Adaptor.load(work / "api-adaptor.safetensors")
    direct = Adaptor.load(work / "adapted" / "adaptor.safetensors")
    reports = [json.loads(path.read_text()) for path in (work / "api-adaptor.adapt-report.json",
                                                         work / "adapted" / "adapt-report.json")]
    by_row = np.abs(served.weight - direct.weight).max(axis=1)  # row i makes output dimension i
    return {"chosen": [report.get("chosen") for report in reports],
            "max_abs_weight_difference": float(by_row.max()),
            "max_abs_weight_difference_prefix_rows": float(by_row[:DIM].max()),
            "rows_differing_by_more_than_0.01": [int(i) for i in np.flatnonzero(by_row > 0.01)]}


def markdown(report: dict[str, Any]) -> str:
    served, direct = report["served"], report["direct"]
    diff = report["difference"]
    proxy = served["proxy"]
    return "\n".join([
        "# SciFact end to end: served through an upstream API vs on the model", "",
        f"Command: `{report['command']}` ({report['date']}, {report['cpus']} CPUs, load average "
        f"{report['load_start']:.2f} at the start, {report['load_end']:.2f} at the end; a training job shared the "
        "machine, which slows the encoding but changes no score)."
        + (f" Report written again from those measurements by `{report['rendered']['command']}` "
           f"({report['rendered']['date']})." if "rendered" in report else ""), "",
        f"| path | nDCG@10 at {DIM} dims |", "|---|---:|",
        f"| `adapt --upstream` + `serve --upstream --adaptor`, `openai` client, `dimensions={DIM}` | {served['ndcg@10']:.6f} |",
        f"| `adapt` + `evaluate` on the model directly | {direct['ndcg@10']:.6f} |",
        f"| difference | {diff:.2e} |", "",
        f"Target: the same to {TOLERANCE:g}: **{'met' if abs(diff) <= TOLERANCE else 'missed'}**.", "",
        f"- Both fits saved the `{report['adaptors']['chosen'][0]}` / `{report['adaptors']['chosen'][1]}` candidate. "
        f"In the {DIM} rows that make the {DIM}-dim prefix their weights differ by at most "
        f"{report['adaptors']['max_abs_weight_difference_prefix_rows']:.2e}; over all rows by "
        f"{report['adaptors']['max_abs_weight_difference']:.2e}, in rows "
        f"{report['adaptors']['rows_differing_by_more_than_0.01']} (the corpus's least-variance directions, where "
        "two fits on vectors equal to float precision may settle on different bases; a prefix that short never "
        "reads them).",
        f"- Safe dimensions: `/v1/models` lists {served['matryoshka_dimensions']}; the adapted model's `config.json` "
        f"has {direct['config_matryoshka_dimensions']}.",
        f"- Cost in upstream calls: `adapt --upstream` {served['adapt']['cli_calls']:,} calls by its own line "
        f"({served['adapt']['upstream_requests']:,} requests in the upstream's log; `{served['adapt']['cli_line']}`). "
        f"Encoding the corpus and the test queries through the server then cost {proxy['calls']:,} calls "
        f"({served['upstream_requests_while_encoding']:,} in the upstream's log): {proxy['cache_hits']:,} texts came "
        f"from the cache and {proxy['cache_misses']:,} were not in it.",
        f"- Times: `adapt --upstream` {served['adapt']['seconds']} s; encoding through the server "
        f"{served['encode_seconds']} s; `adapt` {direct['adapt']['seconds']} s and `evaluate` "
        f"{direct['evaluate']['seconds']} s on the model.", "",
        "Commands:", "",
        f"- `{tidy(served['adapt']['command'])}` (the upstream: `matryoshka serve --backend torch --threads 1`)",
        f"- `matryoshka serve --upstream http://127.0.0.1:PORT/v1 --upstream-model {MODEL} --adaptor "
        f"{report['work']}/api-adaptor.safetensors` (a free port)",
        f"- `{tidy(direct['adapt']['command'])}`", f"- `{tidy(direct['evaluate']['command'])}`", "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-upstream-scifact",
                        help="adaptors, logs and the vector cache (kept: a rerun costs no call)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "upstream")
    parser.add_argument("--reuse", action="store_true", help="take both measurements from the results JSON in --out "
                        "(and the adaptors from --work) and only compare them and write the report again")
    args = parser.parse_args(argv)
    from matryoshka.files import write_atomic

    if args.reuse:
        report = json.loads((args.out / "scifact.json").read_text())
        report["rendered"] = {"command": "python benchmarks/upstream_scifact.py " + " ".join(sys.argv[1:] if argv is None else argv),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        report["adaptors"] = compare_adaptors(args.work)
        write_atomic(args.out / "scifact.json", (json.dumps(report, indent=2) + "\n").encode())
        write_atomic(args.out / "scifact.md", markdown(report).encode())
        return
    args.work.mkdir(parents=True, exist_ok=True)
    env = child_env(args.work / "cache")
    report: dict[str, Any] = {
        "command": "python benchmarks/upstream_scifact.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "load_start": os.getloadavg()[0], "work": str(args.work.relative_to(ROOT) if args.work.is_relative_to(ROOT)
                                                      else args.work),
    }
    report["served"] = served_check(args.work, env)
    report["direct"] = direct_check(args.work, env)
    report["difference"] = report["served"]["ndcg@10"] - report["direct"]["ndcg@10"]
    report["met"] = abs(report["difference"]) <= TOLERANCE
    report["adaptors"] = compare_adaptors(args.work)
    report["load_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "scifact.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(args.out / "scifact.md", markdown(report).encode())
    log(f"served {report['served']['ndcg@10']:.6f}, direct {report['direct']['ndcg@10']:.6f}, "
        f"difference {report['difference']:.2e}: {'met' if report['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
