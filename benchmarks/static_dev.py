"""Choose the static Matryoshka model's settings on STS-B dev; then score the choice on STS-B test once.

    python benchmarks/static_dev.py dev                       # the search, STS-B dev only
    matryoshka static --out runs/static/minilm-static-mrl ... # the chosen settings (printed by dev)
    python benchmarks/static_dev.py test --model runs/static/minilm-static-mrl
    python benchmarks/static_dev.py render                    # static.md again from the JSON, no measuring

``dev`` distils the packaged all-MiniLM-L6-v2 with model2vec at each ``pca_dims`` and searches the
training step greedily, one axis at a time (loss x learning rate, then epochs x data, then the
Matryoshka weights, then pca_dims), keeping the setting with the best *mean* STS-B dev Spearman over
the full size, 128, 64 and 32 dims. It writes ``benchmarks/results/encode/static-dev.json``.

``test`` rebuilds the plain distillation and the standard twin (same settings, plain loss) with the
chosen settings, scores them, the ``--model`` built by ``matryoshka static`` and the base
transformer on STS-B test, and times encoding against the torch transformer on the same texts
(STS-B test sentences, batch 64, one thread, interleaved rounds). It writes
``benchmarks/results/encode/static.{md,json}``.

Both stages use one thread (``torch.set_num_threads(1)``) and cache the teacher's embeddings under
``runs/cache``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matryoshka.data import load_sts
from matryoshka.evaluation import evaluate_sts
from matryoshka.files import save_model_atomic, write_atomic
from matryoshka.models.loading import (
    load_model,
    model_dimension,
    quiet_loading,
    resolve_model_name,
)
from matryoshka.training.static import (
    StaticConfig,
    build_static,
    distill_static,
    evaluation_sentences,
    static_training_pairs,
    teacher_table,
    train_static,
)
from matryoshka.training.train import TrainConfig

RESULTS = Path("benchmarks/results/encode")
WORK = Path("runs/static-dev")
CACHE = Path("runs/cache")
REPORT_DIMS = (128, 64, 32)
WORDNET_PAIRS = 10_000


def report_dims(full: int) -> list[int]:
    return [full, *[d for d in REPORT_DIMS if d < full]]


def distilled(teacher: Any, pca_dims: int) -> Path:
    """The plain model2vec distillation at ``pca_dims``, built once under ``runs/static-dev``."""
    path = WORK / f"distill-{pca_dims}"
    if not (path / "modules.json").is_file():
        save_model_atomic(distill_static(teacher, pca_dims, source=resolve_model_name(None)), path)
    return path


DATA = {"sts+snli": ("stsb", "snli-dev"), "sts+snli+wordnet": ("stsb", "snli-dev", f"wordnet:{WORDNET_PAIRS}")}


def static_config(setting: dict[str, Any], standard: bool = False) -> StaticConfig:
    """The :class:`StaticConfig` (what ``matryoshka static`` builds) of one searched setting."""
    training = TrainConfig(
        objective="distill", distill_loss=setting["loss"], matryoshka=not standard and setting["matryoshka"],
        dims=tuple(setting["dims"]), weights=tuple(setting["weights"]) if setting["weights"] else None,
        learning_rate=setting["lr"], batch_size=256, epochs=setting["epochs"], show_progress_bar=False,
    )
    return StaticConfig(pca_dims=setting["pca_dims"], sources=DATA[setting["data"]], training=training, cache_dir=CACHE)


def label(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def dev_search(out: Path) -> dict[str, Any]:
    """The greedy search; every row's dev scores are kept in the output."""
    quiet_loading()
    teacher = load_model(None, device="cpu")
    dev = load_sts("dev")
    rows_by_data: dict[str, list[tuple[str, str]]] = {}
    tables: dict[str, torch.Tensor] = {}
    # Every finished run is appended to a JSON-lines log, and a rerun reads it back instead of
    # retraining (training is seeded, so a logged row is what the run would give again).
    log_file = WORK / "dev-rows.jsonl"
    results: list[dict[str, Any]] = []
    if log_file.is_file():
        results = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    base_dev = evaluate_sts(teacher, dev, report_dims(model_dimension(teacher)))
    print("base", base_dev, flush=True)

    def run(setting: dict[str, Any]) -> float:
        for row in results:
            if row["setting"] == json.loads(json.dumps(setting)):
                return float(row["mean"])
        path = distilled(teacher, setting["pca_dims"])
        student = load_model(path, device="cpu")
        dims = report_dims(setting["pca_dims"])
        started = time.perf_counter()
        if setting["loss"] == "none":
            scores = evaluate_sts(student, dev, dims)
            steps = 0
        else:
            config = static_config(setting)
            data = setting["data"]
            if data not in rows_by_data:
                rows_by_data[data] = static_training_pairs(config.sources, exclude=evaluation_sentences())
                tables[data] = teacher_table(rows_by_data[data], teacher, CACHE, None)
            result = train_static(student, teacher, rows_by_data[data], config.training, WORK / "last",
                                  table=tables[data])
            scores = evaluate_sts(result.model, dev, dims)
            steps = result.steps
        mean = float(np.mean(list(scores.values())))
        row = {"setting": setting, "dev": {str(d): round(v, 4) for d, v in scores.items()}, "mean": round(mean, 4),
               "steps": steps, "seconds": round(time.perf_counter() - started, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        with log_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        return mean

    for pca in (256, 384):
        run({"pca_dims": pca, "loss": "none"})
    best: dict[str, Any] = {"pca_dims": 256, "dims": list(StaticConfig.dims_for(256)), "loss": "inbatch",
                            "lr": 0.01, "epochs": 1.0, "data": "sts+snli", "weights": None, "matryoshka": True}

    def choose(variants: list[dict[str, Any]]) -> dict[str, Any]:
        scored = [(run({**best, **v}), {**best, **v}) for v in variants]
        return max(scored, key=lambda s: s[0])[1]

    best = choose([{"loss": loss, "lr": lr} for loss in ("inbatch", "cosent") for lr in (0.003, 0.01, 0.03, 0.1)])
    best = choose([{"epochs": e, "data": d} for e in (1.0, 3.0, 10.0) for d in ("sts+snli", "sts+snli+wordnet")])
    full_weight_count = len(StaticConfig.dims_for(best["pca_dims"]))
    best = choose([{"weights": None}, {"weights": tuple([1.0] * (full_weight_count - 3) + [2.0, 4.0, 4.0])}])
    best = choose([{"pca_dims": 256, "dims": list(StaticConfig.dims_for(256))},
                   {"pca_dims": 384, "dims": list(StaticConfig.dims_for(384)),
                    "weights": _weights_for(best["weights"], 384, best["pca_dims"])}])
    twin = run({**best, "matryoshka": False})
    summary = {
        "selection": "greedy, one axis at a time; criterion: mean STS-B dev Spearman over full, 128, 64, 32 dims",
        "base_dev": {str(d): round(v, 4) for d, v in base_dev.items()},
        "rows": results,
        "chosen": best,
        "standard_twin_dev_mean": twin,
        "command": "python benchmarks/static_dev.py dev",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    write_atomic(out / "static-dev.json", (json.dumps(summary, indent=2) + "\n").encode())
    print("chosen:", json.dumps(best))
    print("build it with:", static_command(best, Path("runs/static/minilm-static-mrl")))
    return summary


def _weights_for(weights: tuple[float, ...] | None, full: int, was: int) -> tuple[float, ...] | None:
    """The same per-size weights after the full size changes (one more or fewer leading size)."""
    if weights is None:
        return None
    extra = len(StaticConfig.dims_for(full)) - len(StaticConfig.dims_for(was))
    return tuple([1.0] * extra + list(weights)) if extra >= 0 else tuple(weights[-extra:])


def static_command(setting: dict[str, Any], out: Path, standard: bool = False) -> str:
    """The ``matryoshka static`` command line that builds ``setting``."""
    parts = ["matryoshka", "static", "--out", str(out), "--pca-dims", str(setting["pca_dims"]),
             "--loss", setting["loss"], "--lr", f"{setting['lr']:g}", "--epochs", f"{setting['epochs']:g}",
             "--pairs", ",".join(DATA[setting["data"]])]
    if tuple(setting["dims"]) != StaticConfig.dims_for(setting["pca_dims"]):
        parts += ["--dims", ",".join(map(str, setting["dims"]))]
    if setting["weights"]:
        parts += ["--weights", ",".join(f"{w:g}" for w in setting["weights"])]
    if standard:
        parts.append("--standard")
    return shlex.join(parts)


def texts_per_second(model: Any, texts: list[str], rounds: int) -> list[float]:
    """Texts/s of ``rounds`` full passes over ``texts`` at batch 64."""
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        speeds.append(len(texts) / (time.perf_counter() - started))
    return speeds


def test_report(model_path: Path, out: Path) -> None:
    """STS-B test once for the four models, and the encode-speed ratio, from the dev choice."""
    quiet_loading()
    chosen_file = out / "static-dev.json"
    dev = json.loads(chosen_file.read_text())
    best = dev["chosen"]
    best["weights"] = tuple(best["weights"]) if best["weights"] else None
    teacher = load_model(None, device="cpu")
    test = load_sts("test")
    full = best["pca_dims"]
    dims = report_dims(full)
    base_dims = report_dims(model_dimension(teacher))
    twin_path = Path("runs/static/minilm-static-standard")
    started = time.perf_counter()
    plain_path = distilled(teacher, full)
    build_static(None, twin_path, static_config(best, standard=True))
    built = time.perf_counter() - started
    models = {
        "base (all-MiniLM-L6-v2, torch)": (teacher, base_dims),
        "model2vec distill (plain)": (load_model(plain_path, device="cpu"), dims),
        "distill + Matryoshka training": (load_model(model_path, device="cpu"), dims),
        "distill + standard training (twin)": (load_model(twin_path, device="cpu"), dims),
    }
    # The --model must be the chosen setting: its dev scores must equal the search's row for it.
    model_dev = evaluate_sts(models["distill + Matryoshka training"][0], load_sts("dev"), dims)
    scores = {name: evaluate_sts(m, test, d) for name, (m, d) in models.items()}
    sentences = list(dict.fromkeys(s for p in test for s in (p.sentence1, p.sentence2)))
    static_model = models["distill + Matryoshka training"][0]
    texts_per_second(teacher, sentences[:256], 1)  # warm-up
    texts_per_second(static_model, sentences[:256], 1)
    torch_speed: list[float] = []
    static_speed: list[float] = []
    for _ in range(3):  # interleaved, so a busy moment on the machine hits both
        torch_speed += texts_per_second(teacher, sentences, 1)
        static_speed += texts_per_second(static_model, sentences, 5)
    speed = {"texts": len(sentences), "batch_size": 64, "threads": torch.get_num_threads(),
             "torch_texts_per_s": round(float(np.median(torch_speed)), 1),
             "static_texts_per_s": round(float(np.median(static_speed)), 1)}
    speed["ratio"] = round(speed["static_texts_per_s"] / speed["torch_texts_per_s"], 1)
    base_full = scores["base (all-MiniLM-L6-v2, torch)"][model_dimension(teacher)]
    mrl = scores["distill + Matryoshka training"]
    targets = {
        "full_size_vs_base": {"value": round(mrl[full] / base_full, 4), "target": 0.85, "spearman": round(mrl[full], 4),
                              "spearman_target": 0.70},
        "dim64_vs_own_full": {"value": round(mrl[64] / mrl[full], 4), "target": 0.97},
        "speed_ratio": {"value": speed["ratio"], "target": 50.0},
    }
    for t in targets.values():
        t["met"] = bool(t["value"] >= t["target"] and t.get("spearman", 1.0) >= t.get("spearman_target", 0.0))
    command = f"python benchmarks/static_dev.py test --model {model_path}"
    record = {
        "command": command,
        "model_command": static_command(best, model_path),
        "twin_command": static_command(best, twin_path, standard=True),
        "chosen_on_dev": best,
        "model_dev_spearman": {str(d): round(v, 4) for d, v in model_dev.items()},
        "stsb_test_spearman": {name: {str(d): round(v, 4) for d, v in s.items()} for name, s in scores.items()},
        "speed": speed,
        "targets": targets,
        "build_seconds_plain_and_twin": round(built, 1),
        "platform": platform.platform(),
    }
    write_atomic(out / "static.json", (json.dumps(record, indent=2) + "\n").encode())
    write_atomic(out / "static.md", markdown(record, dev, dims).encode())
    print((out / "static.md").read_text())


def markdown(record: dict[str, Any], dev: dict[str, Any], dims: list[int]) -> str:
    """The results page: the dev search, the test scores, the speed, the targets."""
    best = record["chosen_on_dev"]
    lines = [
        "# A static Matryoshka model from all-MiniLM-L6-v2 (issue 13, part 3)",
        "",
        f"Produced by `python benchmarks/static_dev.py dev` (selection, STS-B dev only), then "
        f"`{record['model_command']}`, then `{record['command']}` (STS-B test, once).",
        "",
        f"Chosen on STS-B dev: `{json.dumps(best)}`. Selection: {dev['selection']}. The model scored here gives "
        f"STS-B dev {json.dumps(record['model_dev_spearman'])}, the search's numbers for that setting.",
        "",
        "## STS-B test Spearman (cosine)",
        "",
        "| model | full | " + " | ".join(str(d) for d in dims[1:]) + " | 64 / full |",
        "|---|---|" + "---|" * (len(dims) - 1) + "---|",
    ]
    for name, by_dim in record["stsb_test_spearman"].items():
        values = list(by_dim.values())
        full_key = next(iter(by_dim))
        lines.append(f"| {name} | {values[0]:.4f} ({full_key}) | "
                     + " | ".join(f"{by_dim[str(d)]:.4f}" for d in dims[1:])
                     + f" | {by_dim['64'] / by_dim[full_key]:.1%} |")
    s = record["speed"]
    lines += [
        "",
        f"## Encode speed ({s['texts']:,} distinct STS-B test sentences, batch {s['batch_size']}, "
        f"{s['threads']} thread(s), median of interleaved rounds)",
        "",
        f"torch transformer {s['torch_texts_per_s']:,.0f} texts/s; static model {s['static_texts_per_s']:,.0f} texts/s: "
        f"**{s['ratio']:.0f}x**.",
        "",
        "## Targets (issue 13)",
        "",
    ]
    t = record["targets"]
    lines += [
        f"- full size ≥ 85% of the base and ≥ 0.70: {t['full_size_vs_base']['spearman']:.4f}, "
        f"{t['full_size_vs_base']['value']:.1%} of the base — **{'met' if t['full_size_vs_base']['met'] else 'MISSED'}**",
        f"- 64 dims ≥ 97% of its own full size: {t['dim64_vs_own_full']['value']:.1%} — "
        f"**{'met' if t['dim64_vs_own_full']['met'] else 'MISSED'}**",
        f"- ≥ 50x torch's texts/s: {t['speed_ratio']['value']:.0f}x — **{'met' if t['speed_ratio']['met'] else 'MISSED'}**",
        "",
    ]
    twin = record["stsb_test_spearman"]["distill + standard training (twin)"]
    mrl = record["stsb_test_spearman"]["distill + Matryoshka training"]
    higher = [d for d in twin if twin[d] > mrl[d]]
    lines += [
        f"The standard twin scores higher than the Matryoshka model at {len(higher)} of {len(twin)} sizes "
        f"({', '.join(higher) or 'none'}); its 64 / full is {twin['64'] / next(iter(twin.values())):.1%}, "
        f"{'above' if twin['64'] / next(iter(twin.values())) >= 0.97 else 'below'} the 97% target.",
        "",
        "## STS-B dev search (every run)",
        "",
        "| setting | " + " | ".join(["full", "128", "64", "32"]) + " | mean | steps | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in dev["rows"]:
        values = list(row["dev"].values())
        cells = [f"{v:.4f}" for v in values] + [""] * (4 - len(values))
        lines.append(f"| {label(row['setting'])} | " + " | ".join(cells) + f" | {row['mean']:.4f} | {row['steps']} | {row['seconds']:.0f} |")
    chosen_mean = next(r["mean"] for r in dev["rows"] if r["setting"] == json.loads(json.dumps(best)))
    lines += ["", f"Base transformer on STS-B dev: {json.dumps(dev['base_dev'])}. Mean dev Spearman of the "
              f"chosen Matryoshka setting {chosen_mean:.4f}; of its standard twin {dev['standard_twin_dev_mean']:.4f}.",
              "Rows with `loss=none` are the plain distillation. The row with `dims=[384, 192, 96, 48, 24]` was "
              "trained with an earlier default (halving the size) and is kept as measured."]
    top = max((r for r in dev["rows"] if r["setting"].get("matryoshka")), key=lambda r: r["mean"])
    if top["mean"] > chosen_mean:
        lines.append(f"The best Matryoshka row of all is `{label(top['setting'])}` (mean {top['mean']:.4f}, "
                     f"{top['mean'] - chosen_mean:+.4f} over the chosen one). It is not chosen because the search "
                     "compares pca_dims at the default sizes (the full size, then powers of two). One seed only.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("dev", "test", "render"))
    parser.add_argument("--model", type=Path, default=Path("runs/static/minilm-static-mrl"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.stage == "dev":
        dev_search(args.out)
    elif args.stage == "render":  # rewrite static.md from the two JSON files, measuring nothing
        record = json.loads((args.out / "static.json").read_text())
        dev = json.loads((args.out / "static-dev.json").read_text())
        dims = [int(d) for d in record["stsb_test_spearman"]["distill + Matryoshka training"]]
        write_atomic(args.out / "static.md", markdown(record, dev, dims).encode())
    else:
        if not (args.model / "modules.json").is_file():
            sys.exit(f"no model at {args.model}; build it with the command that `static_dev.py dev` prints")
        test_report(args.model, args.out)


if __name__ == "__main__":
    main()
