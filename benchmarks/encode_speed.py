"""Encode faster on a CPU: every way to run all-MiniLM-L6-v2 here, side by side, with its quality.

Variants (all through ``matryoshka.models.loading.load_model`` and ``SentenceTransformer.encode``, so the
tokenizer, pooling and normalization are the same code for all of them):

- ``torch``: the PyTorch model as sentence-transformers runs it (the baseline of every ratio);
- ``onnx`` / ``onnx-int8``: ONNX Runtime on the exported graph, fp32 and dynamic int8;
- ``openvino`` / ``openvino-int8``: OpenVINO (its default precision: bf16 on this AMX CPU), and NNCF
  int8 weights;
- ``layers-N``: the 2D-Matryoshka model (``matryoshka train --layers``) cut to N of its 6 layers, on
  torch, and ``openvino+layers-3``, both levers at once;
- ``distilled-LN``: a model cut to N layers and then trained toward the 6-layer model
  (``matryoshka cut`` then ``matryoshka train --teacher``), when ``--distilled`` names one, on torch
  and as ``openvino+distilled-LN``;
- ``static``: the static Matryoshka model (``matryoshka static``), when ``--static`` names one.

Two stages, so that the timing runs on a quiet machine and the (long) quality runs need not:

    python benchmarks/encode_speed.py --stage quality   # STS-B test and SciFact test, full size and 64 dims
    python benchmarks/encode_speed.py --stage speed     # texts/s, interleaved, on a quiet machine

``--stage speed`` measures texts/s at batch 1 and 64, on short texts (STS-B test sentences) and long
ones (SciFact abstracts, cut at the model's 256 tokens), with 1 and 2 threads. Every round times
every variant on the same texts in a rotating order; a ratio to torch is taken within each round and
the median over rounds is reported. ``--only a,b`` times just those variants (and torch, in the same
rounds) and merges their rows into ``speed.json``, so one new variant need not re-time all the others;
each row records its run. Both stages write ``benchmarks/results/encode/``; the report
(``results.md``) is rebuilt from whatever stages have run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from matryoshka.data import load_sts
from matryoshka.data.beir import load_beir
from matryoshka.evaluation.retrieval import encode_dataset, score_vectors
from matryoshka.evaluation.sts import sentence_rows, spearman_by_dim
from matryoshka.files import write_atomic
from matryoshka.models.layers import num_layers
from matryoshka.models.loading import load_model, model_dimension, quiet_loading

OUT = Path("benchmarks/results/encode")
LAYERS_MODEL = Path("runs/layers/minilm-2d-inbatch")  # chosen on STS-B dev over the cosent recipe (layers-dev*/)
STATIC_MODEL = Path("runs/static/minilm-static-mrl")


def variants(
    layers_model: Path, static_model: Path | None, distilled: Path | None = None, only: set[str] | None = None
) -> dict[str, Callable[[], Any]]:
    """Name → loader (all, or torch and ``only``); loaders read ``torch.get_num_threads()`` for their thread count."""
    table: dict[str, Callable[[], Any]] = {
        "torch": lambda: load_model(),
        "onnx": lambda: load_model(backend="onnx"),
        "onnx-int8": lambda: load_model(backend="onnx", quantize="int8"),
        "openvino": lambda: load_model(backend="openvino"),
        "openvino-int8": lambda: load_model(backend="openvino", quantize="int8"),
    }
    if layers_model.is_dir():
        for n in (4, 3, 2):
            table[f"layers-{n}"] = lambda n=n: load_model(str(layers_model), layers=n)
        table["openvino+layers-3"] = lambda: load_model(str(layers_model), layers=3, backend="openvino")
    if static_model is not None and static_model.is_dir():
        table["static"] = lambda: load_model(str(static_model))
    if distilled is not None and distilled.is_dir():
        depth = num_layers(load_model(str(distilled)))
        table[f"distilled-L{depth}"] = lambda: load_model(str(distilled))
        table[f"openvino+distilled-L{depth}"] = lambda: load_model(str(distilled), backend="openvino")
    if only is not None:
        missing = only - set(table)
        if missing:
            raise SystemExit(f"--only names unknown variants {sorted(missing)}; known: {', '.join(table)}")
        table = {name: load for name, load in table.items() if name == "torch" or name in only}
    return table


def texts_for_speed() -> dict[str, list[str]]:
    sts = load_sts("test")
    short = list(dict.fromkeys(p.sentence1 for p in sts))[:512]
    corpus = load_beir("scifact", split="test").corpus
    long = list(corpus.values())[:256]
    return {"short": short, "long": long}


def _time_encode(model: Any, texts: list[str], batch: int) -> float:
    """Texts per second of ``model.encode`` over ``texts`` in batches of ``batch`` (batch 1: one call per text)."""
    started = time.perf_counter()
    if batch == 1:
        for text in texts:
            model.encode([text], batch_size=1, show_progress_bar=False)
    else:
        model.encode(texts, batch_size=batch, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - started)


def speed_stage(args: argparse.Namespace) -> dict[str, Any]:
    texts = texts_for_speed()
    table = variants(args.layers_model, args.static, args.distilled, args.only)
    run = time.strftime("%Y-%m-%d %H:%M") + (f" (--only {','.join(sorted(args.only))})" if args.only else " (all)")
    settings = [(kind, batch) for kind in ("short", "long") for batch in (1, 64)]
    # batch 1 encodes fewer texts so one round stays short; every variant gets the same texts
    sample = {("short", 1): texts["short"][:96], ("short", 64): texts["short"],
              ("long", 1): texts["long"][:16], ("long", 64): texts["long"][:128]}
    rows: dict[str, Any] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        models = {name: load() for name, load in table.items()}  # sessions take the thread count now
        for model in models.values():  # warm up every path (first calls allocate and JIT)
            model.encode(texts["short"][:64], batch_size=64, show_progress_bar=False)
            model.encode(texts["long"][:4], batch_size=4, show_progress_bar=False)
        names = list(models)
        per_round: dict[tuple[str, str, int], list[float]] = {}
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for kind, batch in settings:
                for name in order:
                    rate = _time_encode(models[name], sample[(kind, batch)], batch)
                    per_round.setdefault((name, kind, batch), []).append(rate)
            print(f"threads {threads}: round {round_ + 1}/{args.rounds} done", flush=True)
        for (name, kind, batch), rates in per_round.items():
            base = per_round[("torch", kind, batch)]
            ratios = [r / b for r, b in zip(rates, base, strict=True)]
            rows[f"{name}|{kind}|{batch}|{threads}"] = {
                "variant": name, "texts": kind, "batch": batch, "threads": threads,
                "texts_per_s": round(statistics.median(rates), 1), "ratio_to_torch": round(statistics.median(ratios), 2),
                "rounds": [round(r, 1) for r in rates], "run": run,
            }
        del models
    return {"rows": rows, "rounds": args.rounds, "threads": args.threads,
            "texts": {f"{kind}|{batch}": len(v) for (kind, batch), v in sample.items()}}


def quality_stage(args: argparse.Namespace, done: dict[str, Any]) -> dict[str, Any]:
    sts = load_sts("test")
    sentences, left, right = sentence_rows(sts)
    gold = [p.score for p in sts]
    scifact = load_beir("scifact", split="test")
    out = dict(done)
    for name, load in variants(args.layers_model, args.static, args.distilled, args.only).items():
        if name in out and not args.redo:
            continue
        started = time.perf_counter()
        model = load()
        dims = (model_dimension(model), 64)  # full size (the static model has 256) and 64
        vec = model.encode(sentences, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        stsb = spearman_by_dim(vec[left], vec[right], gold, dims)
        doc_ids, d, query_ids, q = encode_dataset(model, scifact, show_progress_bar=False)
        ndcg = score_vectors(scifact.qrels, doc_ids, d, query_ids, q, dims, (10,))["ndcg@10"]
        out[name] = {"stsb": {str(k): round(v, 6) for k, v in stsb.items()},
                     "scifact_ndcg10": {str(k): round(v, 6) for k, v in ndcg.items()},
                     "seconds": round(time.perf_counter() - started, 1)}
        print(name, out[name], flush=True)
        write_atomic(args.out / "quality.json", (json.dumps(out, indent=2) + "\n").encode())
    return out


def report(speed: dict[str, Any] | None, quality: dict[str, Any] | None) -> str:
    lines = ["# Encoding speed and quality per inference variant", "",
             "Commands (from the repository root, `.venv` active, `MATRYOSHKA_DATA=../shared/data`):", "",
             "    python benchmarks/encode_speed.py --stage quality", "    python benchmarks/encode_speed.py --stage speed",
             "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}.",
             ""]
    if quality:
        base = quality.get("torch")
        lines += ["## Quality (STS-B test Spearman, SciFact test nDCG@10 on the whole corpus; × 100)", "",
                  "Full = the model's own size (384; the static model's is 256).", "",
                  "| variant | STS-B full | STS-B 64 | 64/full | SciFact full | SciFact 64 | STS-B full vs torch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in quality.items():
            s, r = row["stsb"], row["scifact_ndcg10"]
            full = str(max(int(k) for k in s))
            delta = f"{100 * (s[full] - base['stsb']['384']):+.2f}" if base else ""
            lines.append(f"| {name} | {100 * s[full]:.2f} | {100 * s['64']:.2f} | {100 * s['64'] / s[full]:.1f}% | "
                         f"{100 * r[full]:.2f} | {100 * r['64']:.2f} | {delta} |")
        lines.append("")
    if speed:
        rows = speed["rows"]
        names = list(dict.fromkeys(r["variant"] for r in rows.values()))
        cols = [(kind, batch, threads) for threads in speed["threads"] for kind in ("short", "long") for batch in (1, 64)]
        runs = sorted({r.get("run", "") for r in rows.values()} - {""})
        lines += ["## Speed: ratio to torch (median over rounds), texts/s in brackets", "",
                  f"{speed['rounds']} interleaved rounds; short = STS-B test sentences, long = SciFact abstracts.", ""]
        if len(runs) > 1:
            lines += [f"Rows come from {len(runs)} runs ({'; '.join(runs)}). Each ratio is against torch timed in "
                      "the same rounds of its own run; the torch row shows the first run's texts/s.", ""]
        lines += ["| variant | " + " | ".join(f"{k} b{b} t{t}" for k, b, t in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name in names:
            cells = []
            for kind, batch, threads in cols:
                row = rows.get(f"{name}|{kind}|{batch}|{threads}")
                cells.append(f"{row['ratio_to_torch']:.2f}× ({row['texts_per_s']:.0f})" if row else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["speed", "quality", "report"], required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layers-model", type=Path, default=LAYERS_MODEL)
    parser.add_argument("--static", type=Path, default=STATIC_MODEL)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--redo", action="store_true", help="Quality: rescore variants already in quality.json.")
    parser.add_argument("--distilled", type=Path, default=None, help="A cut-then-distilled model (train --teacher).")
    parser.add_argument("--only", type=lambda v: {x.strip() for x in v.split(",") if x.strip()}, default=None,
                        help="Comma-separated variants to run (torch is always timed); speed rows are merged.")
    args = parser.parse_args()
    quiet_loading()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    speed_path, quality_path = out / "speed.json", out / "quality.json"
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else None
    quality = json.loads(quality_path.read_text()) if quality_path.exists() else None
    if args.stage == "speed":
        measured = speed_stage(args)
        if args.only and speed is not None:  # keep the other variants' rows, and torch's from the first run
            kept = {k: v for k, v in speed["rows"].items() if v["variant"] not in args.only}
            new = {k: v for k, v in measured["rows"].items() if v["variant"] != "torch" or k not in kept}
            measured = {**speed, "rows": {**kept, **new}}
        speed = measured
        write_atomic(speed_path, (json.dumps(speed, indent=2) + "\n").encode())
    elif args.stage == "quality":
        quality = quality_stage(args, quality or {})
    write_atomic(out / "results.md", report(speed, quality).encode())
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
