"""What ``matryoshka adapt`` checked and chose: every candidate per dim on held-out data, and why.

Written beside the result as ``adapt-report.json`` and ``adapt-report.md``. The scores are means over
held-out queries (or texts); the gain of the learned map over the rotation comes with a 95% interval
from the paired per-query differences, and with folds, how many folds it won. The report also states
``matryoshka_dimensions``: the dims at which the saved candidate keeps ``safe_share`` (95%) of its
full-size held-out score, what a server lists and may restrict requests to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matryoshka.evaluation.results import SAFE_SHARE, safe_dimensions
from matryoshka.files import write_atomic

if TYPE_CHECKING:
    from matryoshka.adapt.learned import LearnedConfig
    from matryoshka.adapt.validation import ValidationConfig

REPORT_STEM = "adapt-report"


@dataclass
class CandidateScores:
    """One candidate's per-query (or per-text) scores: ``{metric: {dim: array}}``, queries in name order."""

    metrics: dict[str, dict[int, np.ndarray]]

    @classmethod
    def of(cls, scores: dict[str, dict[int, np.ndarray]]) -> CandidateScores:
        return cls({metric: {int(d): np.asarray(v, dtype=np.float64) for d, v in by_dim.items()}
                    for metric, by_dim in scores.items()})

    @classmethod
    def concat(cls, parts: list[dict[str, dict[int, np.ndarray]]], names: list[list[str]]) -> CandidateScores:
        """Pool per-fold scores (each in its fold's ``sorted(names)`` order) into ``sorted(all names)`` order."""
        pooled: dict[str, dict[int, np.ndarray]] = {}
        everyone = sorted(n for fold in names for n in fold)
        for metric in parts[0]:
            pooled[metric] = {}
            for dim in parts[0][metric]:
                value = {name: v for part, fold in zip(parts, names)
                         for name, v in zip(sorted(fold), part[metric][dim])}
                pooled[metric][dim] = np.array([value[name] for name in everyone])
        return cls(pooled)

    @property
    def primary(self) -> str:
        """The metric the choice is made on (the first one)."""
        return next(iter(self.metrics))

    def mean(self, metric: str, dim: int) -> float:
        return float(self.metrics[metric][dim].mean())

    def means(self) -> dict[str, dict[int, float]]:
        return {metric: {dim: round(float(v.mean()), 6) for dim, v in by_dim.items()}
                for metric, by_dim in self.metrics.items()}


@dataclass
class AdaptReport:
    """The validated choice of :func:`~matryoshka.adapt.choice.choose_adaptor`, ready to save and print."""

    method: str
    dims: list[int]
    full_dim: int
    corpus_vectors: int
    validation: ValidationConfig
    config: LearnedConfig
    signal: str = ""
    scheme: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, CandidateScores] = field(default_factory=dict)
    fold_rows: dict[str, list[CandidateScores]] = field(default_factory=dict)
    learned: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    chosen: str = "rotation"
    reason: str = ""
    safe_share: float = SAFE_SHARE

    @property
    def metric(self) -> str:
        return self.rows["rotation"].primary if "rotation" in self.rows else ""

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        """The dims (ascending) where the saved candidate keeps ``safe_share`` of its full-size held-out
        score; ``None`` when it was not scored (no held-out data could be carved) or scored zero at full size."""
        scores = self.chosen_scores()
        if scores is None or not scores[str(self.full_dim)] > 0:
            return None
        return safe_dimensions({int(d): v for d, v in scores.items()}, self.safe_share)

    def gain(self, dim: int) -> dict[str, float]:
        """The learned map's gain over the rotation at ``dim``: mean, 95% interval, folds won."""
        mean, low, high = _interval(self.rows["learned"].metrics[self.metric][dim]
                                    - self.rows["rotation"].metrics[self.metric][dim])
        out = {"mean": mean, "low": low, "high": high}
        folds = self.fold_rows.get("learned", [])
        if len(folds) > 1:
            won = sum(f.mean(self.metric, dim) > r.mean(self.metric, dim)
                      for f, r in zip(folds, self.fold_rows["rotation"]))
            out["folds_won"], out["folds"] = float(won), float(len(folds))
        return out

    def average_gain_interval(self) -> tuple[float, float]:
        """95% interval of the learned map's gain over the rotation, averaged over the asked dims, from
        the paired per-query differences."""
        metric = self.metric
        _, low, high = _interval(np.mean([self.rows["learned"].metrics[metric][d] - self.rows["rotation"].metrics[metric][d]
                                          for d in self.dims], axis=0))
        return low, high

    def decide(self, method: str) -> None:
        """Set ``chosen`` and ``reason`` by the floors of :class:`ValidationConfig` (or the forced method)."""
        if "learned" not in self.rows:
            self.chosen = "rotation"
            if method == "rotation":
                self.reason = "the rotation was asked for (--method rotation)"
            elif self.learned.get("steps_chosen") == 0:
                self.reason = "no step of the learned fit scored above its start (the rotation) on held-out data"
            else:
                self.reason = "no learned map could be checked: " + "; ".join(self.warnings or ["no held-out data"])
            return
        if self.learned.get("steps_chosen") == 0:
            self.chosen = "rotation"
            self.reason = ("no step of the learned fit scored above its start (the rotation) on held-out data, "
                           "so the learned map is the rotation")
            return
        metric, tol, full = self.metric, self.validation.tolerance, self.full_dim
        learned, rotation, base = self.rows["learned"], self.rows["rotation"], self.rows["base"]
        below = {d: learned.mean(metric, d) - rotation.mean(metric, d) for d in self.dims
                 if learned.mean(metric, d) < rotation.mean(metric, d) - tol}
        full_loss = learned.mean(metric, full) - base.mean(metric, full)
        gain = float(np.mean([learned.mean(metric, d) - rotation.mean(metric, d) for d in self.dims]))
        problems = []
        if below:
            problems.append("below the rotation at " + ", ".join(f"{d} ({100 * v:+.2f})" for d, v in below.items()))
        if full_loss < -self.validation.full_tolerance:
            problems.append(f"below the untouched model at full size ({100 * full_loss:+.2f})")
        if gain < self.validation.min_gain:
            problems.append(f"an average gain of {100 * gain:+.2f} points over the rotation "
                            f"(it needs {100 * self.validation.min_gain:+.2f})")
        else:
            low, high = self.average_gain_interval()
            if low <= 0:
                problems.append(f"an average gain of {100 * gain:+.2f} points that held-out data cannot tell from "
                                f"noise (95% interval [{100 * low:+.2f}, {100 * high:+.2f}])")
        if method == "learned":
            self.chosen = "learned"
            self.reason = "the learned map was asked for (--method learned)"
            if problems:
                self.warnings.append("the saved learned map is " + "; ".join(problems) + " on held-out data: "
                                     "--method auto would have saved the rotation")
            return
        if problems:
            self.chosen = "rotation"
            self.reason = "the learned map did not earn its place: " + "; ".join(problems)
            return
        self.chosen = "learned"
        self.reason = (f"the learned map beats the rotation by {100 * gain:+.2f} points on average over "
                       f"{', '.join(map(str, self.dims))}, is never below it, and is {100 * full_loss:+.2f} "
                       f"against the untouched model at full size")

    def confidence(self) -> str:
        """One sentence on how sure the choice is."""
        if "learned" not in self.rows:
            return ""
        gains = {d: self.gain(d) for d in self.dims}
        sure_up = [d for d, g in gains.items() if g["low"] > 0]
        sure_down = [d for d, g in gains.items() if g["high"] < 0]
        n = len(next(iter(self.rows["learned"].metrics[self.metric].values())))
        text = (f"On {n} held-out {'texts' if self.scheme.get('kind') == 'held-out texts' else 'queries'}"
                f", the learned map's gain over the rotation is above zero with 95% confidence at "
                f"{len(sure_up)} of {len(gains)} dims and below zero at {len(sure_down)}.")
        if n < 50:
            text += f" With {n} held-out items the intervals are wide: treat the choice as provisional."
        return text

    def summary(self) -> dict[str, Any]:
        """The short form stored in the adaptor's metadata."""
        return {"chosen": self.chosen, "reason": self.reason, "signal": self.signal, "scheme": self.scheme.get("kind"),
                "matryoshka_dimensions": self.matryoshka_dimensions, "safe_share": self.safe_share,
                "metric": self.metric, "held_out_scores": self.chosen_scores()}

    def chosen_scores(self) -> dict[str, float] | None:
        """The saved candidate's mean held-out score per dim (primary metric), from which the safe
        dimensions at any share follow; ``None`` when it was not scored."""
        scores = self.rows.get(self.chosen)
        if scores is None or not self.metric:
            return None
        return {str(d): round(scores.mean(self.metric, d), 6) for d in self.dims}

    def to_json(self) -> dict[str, Any]:
        rows = {name: scores.means() for name, scores in self.rows.items()}
        out: dict[str, Any] = {
            "chosen": self.chosen, "reason": self.reason, "confidence": self.confidence(), "method": self.method,
            "signal": self.signal, "metric": self.metric, "dims": self.dims, "full_dim": self.full_dim,
            "corpus_vectors": self.corpus_vectors, "matryoshka_dimensions": self.matryoshka_dimensions,
            "safe_share": self.safe_share, "scheme": self.scheme, "validation": rows,
            "gain_over_rotation": {d: self.gain(d) for d in self.dims} if "learned" in self.rows else {},
            "floors": {"tolerance": self.validation.tolerance, "full_tolerance": self.validation.full_tolerance,
                       "min_gain": self.validation.min_gain},
            "learned": self.learned, "seconds": self.seconds, "warnings": self.warnings, "counts": self.counts,
            "validation_config": asdict(self.validation), "learned_config": asdict(self.config),
        }
        return json.loads(json.dumps(out, default=_plain))

    def table(self, metric: str | None = None) -> list[list[str]]:
        """Rows of ``[candidate, score per dim...]`` (×100), then the gain row with its interval."""
        metric = metric or self.metric
        lines = [[name, *(f"{100 * scores.mean(metric, d):.2f}" for d in self.dims)]
                 for name, scores in self.rows.items() if metric in scores.metrics]
        if "learned" in self.rows and metric == self.metric:
            lines.append(["learned − rotation (95%)", *(
                f"{100 * g['mean']:+.2f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"
                for g in (self.gain(d) for d in self.dims))])
        return lines

    def to_markdown(self) -> str:
        lines = ["# Adapt report", "", f"**Saved: {self.chosen}.** {self.reason}.", ""]
        if self.confidence():
            lines += [self.confidence(), ""]
        scheme = ", ".join(f"{k} {v}" for k, v in self.scheme.items() if k != "held_out")
        lines += [f"Held-out signal: {self.signal} ({scheme}). Scores ×100; base is the untouched model, "
                  f"rotation the free map (full size unchanged).", ""]
        for metric in self.rows.get("rotation", CandidateScores({})).metrics:
            lines += [f"## {metric}", "", "| candidate | " + " | ".join(map(str, self.dims)) + " |",
                      "|---|" + "---:|" * len(self.dims)]
            lines += ["| " + " | ".join(row) + " |" for row in self.table(metric)]
            lines.append("")
        if self.learned:
            lines += [f"Learned map: best at {self.learned.get('steps_chosen')} steps on held-out data"
                      + ("; refitted on all the data for that many steps" if self.learned.get("refit") else "")
                      + ".", ""]
        floors = (f"Floors: a learned map is saved only if it is within {100 * self.validation.tolerance:.2f} "
                  f"points of the rotation at every dim, within {100 * self.validation.full_tolerance:.2f} of the "
                  f"untouched model at full size, and {100 * self.validation.min_gain:.2f}+ points better than the "
                  "rotation on average, with a 95% interval of that gain above zero.")
        lines += [floors, ""]
        safe = self.matryoshka_dimensions
        if safe is not None:
            lines += [f"Safe dimensions (`matryoshka_dimensions`): {', '.join(map(str, safe))}: the {self.chosen} keeps "
                      f"{100 * self.safe_share:.0f}% of its full-size held-out {self.metric} there.", ""]
        if self.counts:
            lines += ["Inputs: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.counts.items()) + ".", ""]
        if self.warnings:
            lines += ["Warnings:", "", *(f"- {w}" for w in self.warnings), ""]
        if self.seconds:
            lines += ["Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()) + ".", ""]
        return "\n".join(lines)

    def save(self, directory: str | Path, stem: str = REPORT_STEM) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``directory`` (atomically)."""
        target = Path(directory)
        json_path, md_path = target / f"{stem}.json", target / f"{stem}.md"
        write_atomic(json_path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        write_atomic(md_path, self.to_markdown().encode())
        return json_path, md_path


def _interval(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired per-query differences and its 95% interval (normal approximation)."""
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    return float(diff.mean()), float(diff.mean()) - half, float(diff.mean()) + half


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-ready: {type(value).__name__}")  # json.dumps's ``default`` protocol: a TypeError
