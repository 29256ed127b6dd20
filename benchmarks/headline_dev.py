"""Screen whole-model training recipes for the headline goal on STS-B dev only (never test).

    python benchmarks/headline_dev.py                     # every variant not yet in the JSONL, in order
    python benchmarks/headline_dev.py ref inbatch-pairs   # only these (skipped when already done)
    python benchmarks/headline_dev.py sts@1 sts@2         # a variant again with seeds 1 and 2
    python benchmarks/headline_dev.py --render            # only redraw the table from the JSONL
    python benchmarks/headline_dev.py --list              # the variants and their configs

The goal (issue): a Matryoshka model of the packaged all-MiniLM-L6-v2 (384-d) that keeps >= 98% of its
full-size STS-B Spearman at 32 dims, full size no lower than the untouched model's minus 0.3 points, and
beats its standard twin (same recipe without ``MatryoshkaLoss``) at every size of 64 and below.

Each variant trains from the packaged base with :func:`matryoshka.training.train.train` and is scored on
STS-B dev per dim (Spearman of cosine x 100; retention = score at d / score at full size). Its result
is appended to ``benchmarks/results/headline/dev-runs.jsonl`` as soon as it finishes, and a variant
already there is skipped, so the script resumes after an interruption; ``dev.md`` is redrawn from the
JSONL after every run. Models and cached teacher tables go under ``runs/headline/`` (not committed).

Screening runs are capped at ``--steps`` optimizer steps over ``steps x batch_size`` rows (one pass,
no row seen twice: the first rows of each source's seeded order), so variants compared share a step
count. ``max_examples`` is set to that, so the teacher only encodes rows that are trained on.

The ``mix`` data (one text per row, for the in-batch self-distillation) is built here, because
``TrainConfig.pair_sources`` has only pair sources: it is written to ``runs/headline/mix.jsonl`` and
passed as ``data=`` (``matryoshka.data.user`` reads a one-column JSONL as texts). It holds every
unique STS-B *train* sentence, every unique SNLI dev/test sentence, SciFact titles and abstracts' first
sentences, NPL documents and WordNet definitions and example sentences (each cut to 40 words), with
every sentence of STS-B dev and test removed (their text only is read for that; no score is).

One thread (``--threads``): the machine's other core is busy with other work.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "headline"
RUNS_JSONL = RESULTS / "dev-runs.jsonl"
RUNS_DIR = ROOT / "runs" / "headline"
MIX = RUNS_DIR / "mix.jsonl"
DIMS = (384, 256, 128, 64, 32, 16)
WEIGHTS = (1.0, 1.0, 1.0, 2.0, 8.0, 4.0)  # CompareConfig.distill's
STEPS = 300
MAX_WORDS = 40

_STS: dict[str, Any] = {"objective": "sts", "batch_size": 16, "max_steps": 359, "max_examples": None}

#: name -> (description, TrainConfig overrides on top of CompareConfig.distill, None for the untouched base).
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "base": ("untouched all-MiniLM-L6-v2", None),
    "ref": ("today's recipe: CoSENT on teacher cosines of STS-B+SNLI pairs", {}),
    "inbatch-pairs": ("in-batch similarity distillation, same STS-B+SNLI pairs", {"distill_loss": "inbatch"}),
    "inbatch-mix": ("in-batch similarity distillation over single texts of every local source (64 a step)",
                    {"distill_loss": "inbatch", "data": "mix", "batch_size": 64}),
    "ref-w4-16-8": ("today's recipe, weights doubled on 64, 32 and 16: 1,1,1,4,16,8",
                    {"weights": (1.0, 1.0, 1.0, 4.0, 16.0, 8.0)}),
    "ref-standard": ("standard twin of ref (and of every ref-weights variant): no MatryoshkaLoss",
                     {"matryoshka": False}),
    "ref-lr1e-4": ("today's recipe at learning rate 1e-4", {"learning_rate": 1e-4}),
    "ref-lr1e-4-standard": ("standard twin of ref-lr1e-4", {"learning_rate": 1e-4, "matryoshka": False}),
    "ref-lr2e-4": ("today's recipe at learning rate 2e-4", {"learning_rate": 2e-4}),
    # objective "sts": CoSENT on STS-B train's gold scores (5,749 pairs; one pass at batch 16 is 359 steps)
    "sts": ("CoSENT on STS-B train's gold scores, one pass, batch 16, lr 5e-5, weights 1,1,1,2,8,4",
            {**_STS, "learning_rate": 5e-5}),
    "sts-standard": ("standard twin of sts", {**_STS, "learning_rate": 5e-5, "matryoshka": False}),
    "sts-lr1e-4": ("sts at learning rate 1e-4", {**_STS, "learning_rate": 1e-4}),
    "sts-lr2e-5": ("sts at learning rate 2e-5", {**_STS, "learning_rate": 2e-5}),
    "sts-2ep": ("sts, two passes (718 steps)", {**_STS, "learning_rate": 5e-5, "max_steps": 718}),
    "sts-w32": ("sts, weights 1,1,1,4,32,8 (the 32-dim prefix weighs most)",
                {**_STS, "learning_rate": 5e-5, "weights": (1.0, 1.0, 1.0, 4.0, 32.0, 8.0)}),
    "sts-small": ("sts with no weight on 384, 256 and 128 (0,0,0,2,8,4): gold scores teach the small prefixes "
                  "only, full size moves only through them", {**_STS, "learning_rate": 5e-5,
                                                               "weights": (0.0, 0.0, 0.0, 2.0, 8.0, 4.0)}),
    "sts-4ep": ("sts, four passes (1,436 steps; sentence-transformers' matryoshka_sts runs four)",
                {**_STS, "learning_rate": 5e-5, "max_steps": 1436}),
    "sts-4ep-standard": ("standard twin of sts-4ep", {**_STS, "learning_rate": 5e-5, "max_steps": 1436, "matryoshka": False}),
}


def base_config(steps: int) -> Any:
    from matryoshka.experiments.compare import CompareConfig

    recipe = CompareConfig().distill
    return replace(recipe, dims=DIMS, weights=WEIGHTS, max_steps=steps, show_progress_bar=False)


def split_name(name: str) -> tuple[str, int]:
    """``"sts@2"`` -> ``("sts", 2)``: a variant run with another seed (data order, dropout); no suffix is seed 0."""
    base, _, seed = name.partition("@")
    return base, int(seed) if seed else 0


def variant_config(name: str, steps: int) -> Any:
    name, seed = split_name(name)
    overrides = {**(VARIANTS[name][1] or {}), "seed": seed}
    if overrides.get("data") == "mix":
        overrides["data"] = str(MIX)
    config = replace(base_config(steps), **overrides)
    if "max_examples" in overrides:  # e.g. every STS-B train pair, for more than one pass
        return config
    return replace(config, max_examples=config.max_steps * config.batch_size)


def _words(text: str, limit: int = MAX_WORDS) -> str:
    return " ".join(text.split()[:limit])


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_mix(seed: int = 0) -> dict[str, int]:
    """Write ``runs/headline/mix.jsonl`` (``{"text": ...}`` per line); return the count per source."""
    from matryoshka.data.local import data_root, find_file
    from matryoshka.data.nli import read_nli_file
    from matryoshka.data.sts import load_sts

    root = data_root()
    if root is None:
        raise SystemExit("set MATRYOSHKA_DATA to the local data directory")
    rng = random.Random(seed)
    held_out = {s for split in ("dev", "test") for p in load_sts(split) for s in (p.sentence1, p.sentence2)}
    sources: dict[str, list[str]] = {}
    sources["stsb-train"] = [s for p in load_sts("train") for s in (p.sentence1, p.sentence2)]
    sources["snli-dev-test"] = [s for split in ("dev", "test")
                                for row in read_nli_file(find_file(root / "snli", f"snli_{split}.tsv")) for s in row[:2]]
    scifact = _jsonl(find_file(root / "scifact", "corpus.jsonl"))
    sources["scifact"] = [d["title"] for d in scifact] + [d["text"].split(". ")[0] for d in scifact]
    npl = [d["text"] for d in _jsonl(find_file(root / "npl-vaswani", "corpus.jsonl"))]
    sources["npl"] = rng.sample(npl, 6000)
    glosses = [g["gloss"] for g in _jsonl(find_file(root / "wordnet-glosses", "wordnet30_glosses.jsonl"))]
    definitions = [g.split(";")[0].strip() for g in glosses]
    examples = [e.strip().strip('"') for g in glosses for e in g.split(";")[1:] if e.strip().startswith('"')]
    sources["wordnet"] = rng.sample(definitions, 12000) + rng.sample(examples, 6000)
    seen: set[str] = set()
    counts: dict[str, int] = {}
    MIX.parent.mkdir(parents=True, exist_ok=True)
    tmp = MIX.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for source, texts in sources.items():
            counts[source] = 0
            for text in texts:
                text = _words(text)
                if len(text.split()) < 3 or text in seen or text in held_out:
                    continue
                seen.add(text)
                f.write(json.dumps({"text": text}) + "\n")
                counts[source] += 1
    tmp.replace(MIX)
    (MIX.with_suffix(".counts.json")).write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def cached_data(config: Any, teacher: Any) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """The training set of ``config`` and the teacher's embeddings of its rows (cached on disk by content)."""
    from datasets import Dataset

    from matryoshka.training.teachers import teacher_table
    from matryoshka.training.train import load_rows, pair_dataset

    rows = load_rows(config)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    cache = RUNS_DIR / "cache" / f"{digest}.pt"
    if cache.exists():
        table = torch.load(cache)
    else:
        started = time.perf_counter()
        table = teacher_table(rows, teacher, show_progress_bar=False)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(table, cache)
        print(f"  teacher table {tuple(table.shape)} in {time.perf_counter() - started:.0f}s", flush=True)
    info = {"rows": len(rows), "columns": len(rows[0]), "rows_sha256_16": digest}
    if len(rows[0]) == 1:
        return Dataset.from_dict({"text": [r[0] for r in rows], "label": list(range(len(rows)))}), table, info
    return pair_dataset(rows, table, config.distill_loss), table, info


def scores_of(model: Any) -> tuple[dict[str, float], dict[str, float]]:
    from matryoshka.data.sts import load_sts
    from matryoshka.evaluation.sts import evaluate_sts

    scores = evaluate_sts(model, load_sts("dev"), DIMS, batch_size=128)
    full = scores[max(DIMS)]
    return ({str(d): round(100 * s, 2) for d, s in scores.items()},
            {str(d): round(100 * s / full, 2) for d, s in scores.items()})


def done() -> dict[str, dict[str, Any]]:
    if not RUNS_JSONL.exists():
        return {}
    return {r["variant"]: r for r in map(json.loads, RUNS_JSONL.read_text().splitlines()) if r}


def run_variant(name: str, steps: int, command: str, teacher: Any) -> dict[str, Any]:
    from matryoshka.models.loading import load_model
    from matryoshka.training.train import train

    description, overrides = VARIANTS[split_name(name)[0]]
    if split_name(name)[1]:
        description += f" (seed {split_name(name)[1]})"
    record: dict[str, Any] = {"variant": name, "description": description, "command": command,
                              "date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads()}
    if overrides is None:
        started = time.perf_counter()
        record.update({"config": None, "seed": None, "steps": 0, "train_seconds": 0.0})
        record["scores"], record["retention"] = scores_of(teacher)
        record["eval_seconds"] = round(time.perf_counter() - started, 1)
        return record
    config = variant_config(name, steps)
    if config.data == str(MIX) and not MIX.exists():
        print(f"  mix: {build_mix(config.seed)}", flush=True)
    if config.objective == "sts":
        from matryoshka.training.train import gold_sts_dataset

        dataset, table, info = gold_sts_dataset(config), None, {"rows": None, "source": "STS-B train, gold scores"}
        info["rows"] = len(dataset)
    else:
        dataset, table, info = cached_data(config, teacher)
    torch.manual_seed(config.seed)
    model = load_model(device="cpu")
    clock = time.perf_counter()

    def progress(step: int, total: int, loss: float | None) -> None:
        if step % 25 == 0 or step == total:
            print(f"  {name}: step {step}/{total} loss {loss} {time.perf_counter() - clock:.0f}s", flush=True)

    result = train(model, config, RUNS_DIR / name, train_dataset=dataset, teacher_table=table, progress=progress)
    started = time.perf_counter()
    record["scores"], record["retention"] = scores_of(result.model)
    config_dict = asdict(result.config)
    if config.data == str(MIX):
        config_dict["data"] = "runs/headline/mix.jsonl"
        info["mix_counts"] = json.loads(MIX.with_suffix(".counts.json").read_text())
    record.update({"config": config_dict, "seed": config.seed, "steps": result.steps, "data": info,
                   "train_seconds": round(result.seconds, 1), "eval_seconds": round(time.perf_counter() - started, 1),
                   "final_loss": result.losses[-1] if result.losses else None})
    return record


def seeds_section(records: dict[str, dict[str, Any]]) -> list[str]:
    """Variants run with more seeds (``name@seed``): mean and spread per dim, and against their standard twin
    (``<name>-standard``) seed by seed, so a margin can be read against the noise."""
    import statistics

    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for name, record in records.items():
        base, seed = split_name(name)
        groups.setdefault(base, {})[seed] = record
    lines: list[str] = []
    for base, runs in groups.items():
        twin = groups.get(f"{base}-standard", {})
        seeds = sorted(set(runs) & set(twin))
        if len(seeds) < 2 or base.endswith("-standard"):
            continue
        if not lines:
            lines = ["", "## Seeds (mean ± sample sd over seeds; margin = variant − its standard twin, seed by seed)", "",
                     "| variant | seeds | " + " | ".join(map(str, DIMS)) + " | ret@32 |",
                     "|---|---|" + "---:|" * len(DIMS) + "---:|"]

        def cell(values: list[float]) -> str:
            return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

        for label, source in ((base, runs), (f"{base}-standard", twin)):
            per_dim = {d: [source[s]["scores"][str(d)] for s in seeds] for d in DIMS}
            ret = [source[s]["retention"]["32"] for s in seeds]
            lines.append(f"| {label} | {','.join(map(str, seeds))} | " + " | ".join(cell(per_dim[d]) for d in DIMS)
                         + f" | {cell(ret)}% |")
        margins = {d: [runs[s]["scores"][str(d)] - twin[s]["scores"][str(d)] for s in seeds] for d in DIMS}
        lines.append(f"| margin | {','.join(map(str, seeds))} | " + " | ".join(
            f"{cell(margins[d])} (min {min(margins[d]):+.2f})" for d in DIMS) + " | |")
    return lines


def render(records: dict[str, dict[str, Any]]) -> str:
    base = records.get("base", {}).get("scores")
    lines = ["# Headline recipe screening on STS-B dev (Spearman of cosine x 100; STS-B test is not read)", "",
             "Produced by `python benchmarks/headline_dev.py` (each row's exact command and full TrainConfig are "
             "in `dev-runs.jsonl`); rendered " + time.strftime("%Y-%m-%d %H:%M") + ". Every trained variant "
             "starts from the packaged all-MiniLM-L6-v2, dims 384..16, seed 0 (name@N: seed N), one thread; rows compared share "
             "their step count. ret = score at d / score at 384. Goal: ret@32 >= 98%, 384 >= base - 0.30, "
             "and above the standard twin at 64, 32 and 16.", "",
             "| variant | loss | data | MRL | weights | lr | bs | steps | " + " | ".join(map(str, DIMS))
             + " | ret@64 | ret@32 | ret@16 | 384 vs base | train s |",
             "|---|---|---|---|---|---:|---:|---:|" + "---:|" * len(DIMS) + "---:|---:|---:|---:|---:|"]
    for name, r in records.items():
        c = r.get("config") or {}
        data = "" if not c else ("mix" if c.get("data") else "stsb gold" if c.get("objective") == "sts"
                                 else "+".join(c["pair_sources"]))
        weights = "" if not c else ("-" if not c["matryoshka"] else ",".join(f"{w:g}" for w in c["weights"]))
        cells = " | ".join(f"{r['scores'][str(d)]:.2f}" for d in DIMS)
        delta = f"{r['scores']['384'] - base['384']:+.2f}" if base else ""
        lines.append(
            f"| {name} | {c.get('distill_loss', '')} | {data} | {c.get('matryoshka', '') if c else ''} | {weights} | "
            f"{c.get('learning_rate', '') if c else ''} | {c.get('batch_size', '') if c else ''} | {r['steps']} | {cells} | "
            f"{r['retention']['64']:.2f}% | {r['retention']['32']:.2f}% | {r['retention']['16']:.2f}% | {delta} | "
            f"{r['train_seconds']:.0f} |")
    lines += seeds_section(records)
    lines += ["", "Variants:", ""] + [f"- `{n}`: {r['description']}" for n, r in records.items()]
    commands = list(dict.fromkeys(r["command"] for r in records.values()))
    lines += ["", "Commands that made these rows (environment: `PYTHONPATH=src HF_HUB_OFFLINE=1 "
              "MATRYOSHKA_DATA=<shared/data> TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1`):", ""]
    lines += [f"- `{c}`" for c in commands]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help="variants to run (default: all, in order)")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per trained variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only redraw dev.md from the JSONL")
    parser.add_argument("--list", action="store_true", help="print the variants' configs and exit")
    args = parser.parse_args()
    unknown = {split_name(v)[0] for v in args.variants} - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.list:
        for name, (description, overrides) in VARIANTS.items():
            print(name, "-", description, "-", None if overrides is None else asdict(variant_config(name, args.steps)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.render:
        torch.set_num_threads(args.threads)
        from matryoshka.models.loading import load_model, quiet_loading

        quiet_loading()
        command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/headline_dev.py", *sys.argv[1:]])
        teacher = load_model(device="cpu")
        for name in args.variants or list(VARIANTS):
            if name in done():
                print(f"{name}: already in {RUNS_JSONL.name}, skipped", flush=True)
                continue
            print(f"{name}: {VARIANTS[split_name(name)[0]][0]}", flush=True)
            record = run_variant(name, args.steps, command, teacher)
            with open(RUNS_JSONL, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name}: {record['scores']} ret {record['retention']} ({record['train_seconds']:.0f}s)", flush=True)
            (RESULTS / "dev.md").write_text(render(done()))
    (RESULTS / "dev.md").write_text(render(done()))


if __name__ == "__main__":
    main()
