"""Adaptors that never make search worse (issue 31): what ``matryoshka adapt`` saves, beside every variant.

Two user-style splits of real data, with the base model's vectors (cached under ``--cache``):

- **SciFact**: the train qrels (809 queries) label the fit, the 300 test queries score it.
- **NPL**: its 93 queries split in half by a seeded permutation: 46 label the fit, 47 score it.
  NPL judges about 22 documents per query.

``--stage dev`` chooses settings without touching a test query: each learned variant is run through the
validated path itself (``choose_adaptor`` with ``method="learned"``) on the *train* queries only, and its
out-of-fold scores (SciFact: 20% of train held out; NPL: 5 folds over the 46 train queries) are compared
with the rotation's on the same held-out queries. It also checks the label-free signal against real
queries: on SciFact's held-out train queries, does "full-size neighbours kept" rank the rotation and the
unsupervised map the way nDCG@10 does?

``--stage test`` scores on the test queries (they choose nothing): base, rotation, the learned maps as a user fits them
with ``fit_learned``'s defaults (unsupervised; supervised on the train pairs), and the validated ``adapt``
result without and with pairs (what the command saves). SciFact's supervised rows are also split into
the test queries whose relevant documents some train query also judged, and the rest.

    python benchmarks/adapt_validated.py --stage dev
    python benchmarks/adapt_validated.py --stage test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matryoshka.adapt import (
    Judgements,
    LearnedConfig,
    ValidationConfig,
    choose_adaptor,
    fit_learned,
    fit_rotation,
    pair_set_from_judgements,
)
from matryoshka.adapt.validation import NeighbourTask, retrieval_scores
from matryoshka.data.beir import load_beir
from matryoshka.embeddings.cache import cached_encode
from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.models.loading import load_model

OUT = Path("benchmarks/results/retrieval")


def judged(qrels: dict[str, dict[str, int]], names: list[str], qvec: dict[str, np.ndarray],
           row: dict[str, int]) -> Judgements:
    """Judgements of the queries ``names`` (those with a relevant corpus document)."""
    kept = [q for q in names if any(r > 0 and d in row for d, r in qrels[q].items())]
    return Judgements(np.stack([qvec[q] for q in kept]),
                      [[row[d] for d, r in qrels[q].items() if r > 0 and d in row] for q in kept], kept)


def load_split(name: str, cache: Path, seed: int) -> dict[str, Any]:
    """Corpus vectors and the (train, test) judgements of the user-style split of ``name``."""
    model = load_model()
    test = load_beir(name, split="test")
    doc_ids = list(test.corpus)
    docs = cached_encode(model, [test.corpus[d] for d in doc_ids], cache, None, show_progress_bar=True)
    row = {d: i for i, d in enumerate(doc_ids)}
    if name == "scifact":
        train = load_beir(name, split="train")
        qvec = dict(zip(train.queries, cached_encode(model, list(train.queries.values()), cache, None)))
        qvec.update(zip(test.queries, cached_encode(model, list(test.queries.values()), cache, None)))
        train_j = judged(train.qrels, sorted(train.qrels), qvec, row)
        test_j = judged(test.qrels, sorted(test.qrels), qvec, row)
    else:
        qvec = dict(zip(test.queries, cached_encode(model, list(test.queries.values()), cache, None)))
        ids = sorted(test.qrels)
        order = np.random.default_rng(seed).permutation(len(ids))
        half = len(ids) // 2
        train_j = judged(test.qrels, sorted(ids[i] for i in order[:half]), qvec, row)
        test_j = judged(test.qrels, sorted(ids[i] for i in order[half:]), qvec, row)
    assert not set(train_j.names) & set(test_j.names), "a test query leaked into the train side"
    return {"docs": docs, "train": train_j, "test": test_j, "dims": dimension_ladder(docs.shape[1])}


def means(scores: dict[str, dict[int, np.ndarray]]) -> dict[str, dict[int, float]]:
    return {m: {d: round(float(v.mean()), 4) for d, v in by_dim.items()} for m, by_dim in scores.items()}


def dev_stage(args: argparse.Namespace) -> None:
    """Variants scored out-of-fold on train queries only; the label-free signal checked against real queries."""
    base = LearnedConfig(threads=args.threads)
    variants = {
        "default (up to 2000 steps)": base,
        "up to 1000 steps": replace(base, steps=1000),
        "a query's other judged documents masked as negatives (up to 1000 steps)": replace(
            base, steps=1000, mask_judged=True),
        "keep 3 (up to 1000 steps)": replace(base, steps=1000, keep_weight=3.0),
        "no early stopping (1000 steps, the old default)": replace(base, steps=1000, patience=None, eval_every=1000),
    }
    if args.variants:
        variants = {k: v for k, v in variants.items() if any(s in k for s in args.variants.split(","))}
    report: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "sets": {}}
    for name in args.sets.split(","):
        data = load_split(name, args.cache, args.seed)
        rows: dict[str, Any] = {}
        validation = ValidationConfig(seed=args.seed, refit=False)
        for label, config in variants.items():
            started = time.perf_counter()
            _, rep = choose_adaptor(data["docs"], data["train"], method="learned", config=config, validation=validation)
            rows[label] = {"learned": rep.rows["learned"].means(), "steps": rep.learned.get("steps_chosen"),
                           "seconds": round(time.perf_counter() - started, 1)}
            rows.setdefault("rotation", {"learned": rep.rows["rotation"].means()})
            rows.setdefault("base", {"learned": rep.rows["base"].means()})
            rows.setdefault("scheme", {k: v for k, v in rep.scheme.items() if k != "held_out"})
            print(name, label, json.dumps(rows[label]), flush=True)
        report["sets"][name] = rows
        if name == "scifact":
            report["label_free_check"] = label_free_check(data, args)
    (args.out / "adapt-dev.json").write_text(json.dumps(report, indent=2) + "\n")
    render_dev(report, args.out / "adapt-dev.md")


def label_free_check(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """On SciFact's held-out train queries: nDCG@10 and the label-free signal of rotation vs unsupervised map."""
    docs, dims = data["docs"], data["dims"]
    held = ValidationConfig(seed=args.seed).query_folds(len(data["train"].relevant))[0]
    check = data["train"].subset(held)
    task, fit_rows = NeighbourTask.carve(docs, ValidationConfig(seed=args.seed))
    rotation = fit_rotation(docs[fit_rows])
    learned = fit_learned(docs[fit_rows], LearnedConfig(steps=1000, threads=args.threads), init=rotation)
    out = {}
    for label, weight in (("base", None), ("rotation", rotation.weight), ("learned unsupervised, 1000 steps", learned.weight)):
        out[label] = {"ndcg@10 (held-out train queries)": means(retrieval_scores(weight, docs, check, dims, (10,)))["ndcg@10"],
                      "neighbours@10 (held-out texts)": means(task.scores(weight, dims))["neighbours@10"]}
    return out


def _code(command: str) -> str:
    """``command`` as inline code; a text that already holds code spans (several commands) is left as it is."""
    return command if "`" in command else f"`{command}`"


def render_dev(report: dict[str, Any], path: Path) -> None:
    lines = ["# Adaptor settings chosen on train queries only (issue 31)", "",
             f"Command: {_code(report['command'])} ({report['date']}). Every learned variant runs through the validated "
             "path (`choose_adaptor(..., method=\"learned\")`) on the train queries alone; the table gives its "
             "out-of-fold nDCG@10 ×100 on held-out *train* queries beside the rotation's. No test query is used.", ""]
    for name, rows in report["sets"].items():
        scheme = rows.get("scheme", {})
        dims = list(rows["rotation"]["learned"]["ndcg@10"])
        lines += [f"## {name} ({scheme.get('kind')}, {scheme.get('validation_queries')} held-out of "
                  f"{scheme.get('labelled_queries')} train queries)", "",
                  "| variant | steps | " + " | ".join(map(str, dims)) + " |", "|---|---:|" + "---:|" * len(dims)]
        for label, row in rows.items():
            if label == "scheme":
                continue
            lines.append(f"| {label} | {row.get('steps', '')} | " + " | ".join(
                f"{100 * row['learned']['ndcg@10'][d]:.2f}" for d in dims) + " |")
        lines.append("")
    if "label_free_check" in report:
        check = report["label_free_check"]
        dims = list(next(iter(check.values()))["ndcg@10 (held-out train queries)"])
        lines += ["## The label-free signal against real queries (SciFact train, held-out queries and texts)", "",
                  "| candidate | signal | " + " | ".join(map(str, dims)) + " |", "|---|---|" + "---:|" * len(dims)]
        for label, by_signal in check.items():
            for signal, by_dim in by_signal.items():
                lines.append(f"| {label} | {signal} | " + " | ".join(f"{100 * by_dim[d]:.2f}" for d in dims) + " |")
        lines.append("")
    for key, title in (("chosen", "What was chosen"), ("note", "Note")):
        if key in report:
            lines += [f"## {title}", "", report[key], ""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def test_stage(args: argparse.Namespace) -> None:
    """Every variant once on the test queries; the validated results are what ``matryoshka adapt`` saves."""
    report: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "sets": {}}
    for name in args.sets.split(","):
        report["sets"][name] = score_test_set(name, args)
        print(name, json.dumps(report["sets"][name]["rows"]), flush=True)
    (args.out / "adapt-validated.json").write_text(json.dumps(report, indent=2) + "\n")
    render_test(report, args.out / "adapt-validated.md")


def score_test_set(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit every variant on ``name``'s train side and score it on its test queries."""
    data = load_split(name, args.cache, args.seed)
    docs, train, test, dims = data["docs"], data["train"], data["test"], data["dims"]
    config = LearnedConfig(threads=args.threads)
    blind = replace(config, steps=1000)  # fitted without a check, for the old default's fixed step count
    seconds: dict[str, float] = {}
    choices: dict[str, Any] = {}

    def timed(label: str, make: Any) -> Any:
        started = time.perf_counter()
        value = make()
        seconds[label] = round(time.perf_counter() - started, 1)
        return value

    rotation = timed("rotation", lambda: fit_rotation(docs))
    unsup = timed("learned, unsupervised", lambda: fit_learned(docs, blind, init=rotation))
    sup = timed("learned, supervised", lambda: fit_learned(
        docs, blind, pair_set_from_judgements(train.queries, train.relevant, docs), init=rotation))
    chosen_unsup, rep_unsup = timed("adapt (validated, no pairs)", lambda: choose_adaptor(docs, None, config=config))
    chosen_sup, rep_sup = timed("adapt (validated, with pairs)", lambda: choose_adaptor(docs, train, config=config))
    for label, rep in (("adapt (validated, no pairs)", rep_unsup), ("adapt (validated, with pairs)", rep_sup)):
        choices[label] = {"chosen": rep.chosen, "reason": rep.reason, "confidence": rep.confidence(),
                          "steps": rep.learned.get("steps_chosen"), "validation": {k: v.means() for k, v in rep.rows.items()}}
    weights = {"base": None, "rotation": rotation.weight, "learned, unsupervised": unsup.weight,
               "learned, supervised": sup.weight, "adapt (validated, no pairs)": chosen_unsup.weight,
               "adapt (validated, with pairs)": chosen_sup.weight}
    rows = {label: means(retrieval_scores(w, docs, test, dims)) for label, w in weights.items()}
    groups = {}
    if name == "scifact":
        train_docs = {r for rel in train.relevant for r in rel}
        seen = [q for q, rel in zip(test.names, test.relevant) if set(rel) & train_docs]
        unseen = [q for q in test.names if q not in set(seen)]
        for group, names in (("a relevant document judged for a train query", seen), ("no such document", unseen)):
            subset = test.subset([test.names.index(q) for q in names])
            groups[f"{group} ({len(names)} queries)"] = {
                label: means(retrieval_scores(weights[label], docs, subset, dims))
                for label in ("base", "rotation", "learned, supervised", "adapt (validated, with pairs)")}
    return {"rows": rows, "groups": groups, "choices": choices, "seconds": seconds,
            "train_queries": len(train.relevant), "test_queries": len(test.relevant),
            "train_pairs": sum(len(r) for r in train.relevant)}


def render_test(report: dict[str, Any], path: Path) -> None:
    lines = ["# Adaptors that never make search worse: test queries (issue 31)", "",
             f"Command: `{report['command']}` ({report['date']}). Settings were chosen on train queries only "
             "([adapt-dev.md](adapt-dev.md)). Scores ×100. `adapt (validated, ...)` is what `matryoshka adapt` saves "
             "with its defaults; the learned rows are fitted blind, as `fit_learned` fitted them before validation (1,000 steps, no check).", ""]
    for name, data in report["sets"].items():
        lines += [f"## {name}: {data['train_queries']} train queries ({data['train_pairs']} pairs), "
                  f"{data['test_queries']} test queries", ""]
        for metric in ("ndcg@10", "recall@100"):
            dims = list(data["rows"]["base"][metric])
            lines += [f"### {metric}", "", "| variant | " + " | ".join(map(str, dims)) + " |",
                      "|---|" + "---:|" * len(dims)]
            lines += [f"| {label} | " + " | ".join(f"{100 * row[metric][d]:.2f}" for d in dims) + " |"
                      for label, row in data["rows"].items()]
            lines.append("")
        for label, choice in data["choices"].items():
            lines += [f"- **{label}** saved **{choice['chosen']}**: {choice['reason']}. {choice['confidence']}"]
        lines.append("")
        for group, rows in data["groups"].items():
            dims = list(rows["base"]["ndcg@10"])
            lines += [f"### nDCG@10, test queries with {group}", "", "| variant | " + " | ".join(map(str, dims)) + " |",
                      "|---|" + "---:|" * len(dims)]
            lines += [f"| {label} | " + " | ".join(f"{100 * row['ndcg@10'][d]:.2f}" for d in dims) + " |"
                      for label, row in rows.items()]
            lines.append("")
        lines += ["Seconds on 2 cores: " + ", ".join(f"{k} {v}" for k, v in data["seconds"].items()) + ".", ""]
    if "note" in report:
        lines += ["## Note", "", report["note"], ""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("dev", "test"), required=True)
    parser.add_argument("--sets", default="scifact,npl")
    parser.add_argument("--variants", default="", help="dev: only variants whose label contains one of these")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dev_stage(args) if args.stage == "dev" else test_stage(args)


if __name__ == "__main__":
    main()
