"""Which layers to keep, and whether distillation has converged: STS-B dev only (issue 13, fewer layers).

    python benchmarks/layers_distill_dev.py subsets                 # untouched model, every kept-layer set tried
    python benchmarks/layers_distill_dev.py models DIR [DIR ...]    # e.g. a distillation's checkpoints

``subsets`` scores all-MiniLM-L6-v2 with only some of its six layers kept (``models.layers.keep_layers``,
what ``matryoshka cut --keep`` saves), untrained, on STS-B dev at 384, 128, 64 and 32 dims.
``models`` scores saved models the same way (the checkpoints of ``matryoshka train --teacher``, say).
Both merge their rows into ``benchmarks/results/encode/layers-distill-dev.{json,md}``. STS-B test is
never read here; ``encode_speed.py --stage quality`` scores the chosen model on it once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from matryoshka.data.sts import StsPair, load_sts
from matryoshka.evaluation.sts import evaluate_sts
from matryoshka.models.layers import keep_layers, num_layers
from matryoshka.models.loading import load_model

OUT = Path("benchmarks/results/encode/layers-distill-dev")
DIMS = (384, 128, 64, 32)
SUBSETS = ((0, 1, 2, 3, 4, 5), (0, 1), (0, 3), (0, 4), (0, 5), (1, 5),
           (0, 1, 2), (0, 1, 5), (0, 2, 5), (0, 3, 5), (0, 4, 5), (0, 2, 4, 5))


def score(model: SentenceTransformer, pairs: list[StsPair]) -> dict[str, float]:
    scores = evaluate_sts(model, pairs, dims=DIMS)
    return {str(d): round(100 * s, 2) for d, s in scores.items()}


def render(rows: dict[str, dict]) -> str:
    lines = ["# Fewer layers: which to keep, and distillation progress (STS-B dev Spearman × 100)", "",
             "Produced by `python benchmarks/layers_distill_dev.py subsets` and `... models DIR ...`; "
             "the commands of each row are in the JSON. STS-B test is not read here.", "",
             "| model | layers | " + " | ".join(str(d) for d in DIMS) + " | full vs 6 layers |",
             "|---|---:|" + "---:|" * len(DIMS) + "---:|"]
    full = rows.get("all-MiniLM-L6-v2 layers 0,1,2,3,4,5", {}).get("scores", {}).get("384")
    for name, row in rows.items():
        cells = " | ".join(f"{row['scores'][str(d)]:.2f}" for d in DIMS)
        share = f"{100 * row['scores']['384'] / full:.1f}%" if full else ""
        lines.append(f"| {name} | {row['layers']} | {cells} | {share} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["subsets", "models"])
    parser.add_argument("dirs", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = OUT.with_suffix(".json")
    rows: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}
    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M")
    dev = load_sts("dev")
    if args.stage == "subsets":
        for subset in SUBSETS:
            model = keep_layers(load_model(), subset)
            name = f"all-MiniLM-L6-v2 layers {','.join(map(str, subset))}"
            rows[name] = {"layers": len(subset), "scores": score(model, dev), "command": command, "run": when}
            print(name, rows[name]["scores"], flush=True)
    else:
        if not args.dirs:
            parser.error("models needs at least one model directory")
        for directory in args.dirs:
            model = load_model(str(directory))
            rows[str(directory)] = {"layers": num_layers(model), "scores": score(model, dev), "command": command, "run": when}
            print(directory, rows[str(directory)]["scores"], flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    OUT.with_suffix(".md").write_text(render(rows))


if __name__ == "__main__":
    main()
