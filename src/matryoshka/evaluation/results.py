"""One shape for every per-dimension result: JSON, a Markdown table and a PNG plot.

The JSON maps each model to its primary score per dimension, e.g.
``{"matryoshka": {"384": 0.83, "32": 0.81}, "standard": {...}, "task": "stsb-test", ...}``,
next to the reserved keys ``task``, ``metric``, ``retention``, ``metrics`` (every metric measured,
``{metric: {model: {dim: value}}}``) and ``metadata``. Tables, plots, the advisor and the demo's
chart all read this file, and :func:`safe_dimensions` turns it into the dims a server may offer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matryoshka.errors import DataError, InputError
from matryoshka.files import write_atomic

RESERVED_KEYS = ("task", "metric", "retention", "metrics", "metadata")
#: The share of full-size quality a dimension must keep to be listed as safe (``matryoshka_dimensions``).
SAFE_SHARE = 0.95


def safe_dimensions(scores: Mapping[int, float], share: float = SAFE_SHARE) -> list[int]:
    """The dims (ascending) whose score keeps at least ``share`` of the score at full size (the largest dim).

    What ``/v1/models`` lists as ``matryoshka_dimensions`` and ``serve --strict-dimensions`` accepts; the
    full size is always in it. Higher scores must be better (nDCG, recall, Spearman).

    Example:
        >>> safe_dimensions({384: 0.80, 128: 0.78, 64: 0.75, 32: 0.70})
        [64, 128, 384]

    Raises:
        InputError: ``share`` is not in (0, 1], there are no scores, or the full-size score is not positive
            (a share of it means nothing).
    """
    if not 0 < share <= 1:
        raise InputError(f"the share of full-size quality must be in (0, 1], got {share}")
    if not scores:
        raise InputError("no per-dimension scores to choose safe dimensions from")
    by_dim = {int(d): float(v) for d, v in scores.items()}
    full = by_dim[max(by_dim)]
    if not full > 0:  # also NaN
        raise InputError(f"the full-size ({max(by_dim)}) score is {full}; safe dimensions need a positive one")
    return sorted(d for d, v in by_dim.items() if v >= share * full)


@dataclass
class Results:
    """Per-dimension scores of one or more models on one task.

    Attributes:
        task: what was measured, e.g. ``"stsb-test"`` or ``"scifact"``.
        metric: the primary metric, e.g. ``"spearman_cosine"`` or ``"ndcg@10"``.
        scores: ``{model: {dim: primary metric}}``.
        metrics: every metric measured, ``{metric: {model: {dim: value}}}`` (includes the primary one).
        metadata: configuration, seeds, timings, versions.
    """

    task: str
    metric: str
    scores: dict[str, dict[int, float]]
    metrics: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [name for name in self.scores if name in RESERVED_KEYS]
        if bad:
            raise InputError(f"model names {bad} collide with reserved result keys {RESERVED_KEYS}")
        self.metrics.setdefault(self.metric, self.scores)

    @property
    def dims(self) -> list[int]:
        """Every dimension some model was scored at, largest first."""
        return sorted({d for by_dim in self.scores.values() for d in by_dim}, reverse=True)

    def retention(self) -> dict[str, dict[int, float]]:
        """Score at each dimension divided by the score at the model's largest dimension."""
        out = {}
        for name, by_dim in self.scores.items():
            full = by_dim[max(by_dim)]
            out[name] = {d: (v / full if full else float("nan")) for d, v in by_dim.items()}
        return out

    def safe_dimensions(self, model: str | None = None, share: float = SAFE_SHARE) -> list[int]:
        """:func:`safe_dimensions` of ``model``'s scores (default: the only model of the file).

        Raises:
            InputError: ``model`` is not in the file, or none is named and the file has several.
        """
        if model is None:
            if len(self.scores) != 1:
                raise InputError(f"the results hold {len(self.scores)} models ({', '.join(self.scores)}); name one")
            model = next(iter(self.scores))
        if model not in self.scores:
            raise InputError(f"the results hold no model {model!r} (they hold {', '.join(self.scores) or 'none'})")
        return safe_dimensions(self.scores[model], share)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form described in the module docstring."""

        def keyed(by_dim: dict[int, float]) -> dict[str, float]:
            return {str(d): round(float(v), 6) for d, v in sorted(by_dim.items(), reverse=True)}

        data: dict[str, Any] = {name: keyed(by_dim) for name, by_dim in self.scores.items()}
        data["task"] = self.task
        data["metric"] = self.metric
        data["retention"] = {name: keyed(r) for name, r in self.retention().items()}
        data["metrics"] = {m: {n: keyed(v) for n, v in per.items()} for m, per in self.metrics.items()}
        data["metadata"] = self.metadata
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """Read the JSON form back."""
        try:
            scores = {
                name: {int(d): float(v) for d, v in by_dim.items()}
                for name, by_dim in data.items()
                if name not in RESERVED_KEYS
            }
            metrics = {
                m: {n: {int(d): float(v) for d, v in by_dim.items()} for n, by_dim in per.items()}
                for m, per in data.get("metrics", {}).items()
            }
            return cls(data["task"], data["metric"], scores, metrics, dict(data.get("metadata", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # int(), float() and lookups of a malformed file
            raise DataError(f"not a matryoshka results file: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Results:
        """Load ``results.json``."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", path) from exc

    def to_markdown(self) -> str:
        """A table with one row per dimension and, per model, the score and its retention."""
        names = list(self.scores)
        dims = self.dims
        retention = self.retention()
        lines = [
            f"**{self.task}**, {self.metric} per dimension (retention = score at d / score at full size)",
            "",
            *([f"Command: `{self.metadata['command']}`", ""] if self.metadata.get("command") else []),
            "| dim | " + " | ".join(f"{n} | {n} retention" for n in names) + " |",
            "|---:|" + "---:|---:|" * len(names),
        ]
        for d in dims:
            cells = []
            for n in names:
                if d in self.scores[n]:
                    cells += [f"{self.scores[n][d]:.4f}", f"{100 * retention[n][d]:.2f}%"]
                else:
                    cells += ["", ""]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> None:
        """Score against dimension (log axis), one line per model, saved as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for name, by_dim in self.scores.items():
            dims = sorted(by_dim)
            ax.plot(dims, [by_dim[d] for d in dims], marker="o", label=name)
        all_dims = sorted(self.dims)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_dims, [str(d) for d in all_dims])
        ax.minorticks_off()
        ax.set_xlabel("embedding dimensions (log scale)")
        ax.set_ylabel(self.metric)
        ax.set_title(title or f"{self.task}: {self.metric} per dimension")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = png_bytes(fig)
        plt.close(fig)
        write_atomic(Path(path), buffer)

    def save(self, directory: str | os.PathLike[str], stem: str = "results") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``directory``; return their paths."""
        return save_outputs(directory, stem, self.to_dict(), self.to_markdown(), self.plot)


def save_outputs(
    directory: str | os.PathLike[str], stem: str, data: dict[str, Any], markdown: str, plot: Any
) -> dict[str, Path]:
    """Write ``data`` as ``<stem>.json``, ``markdown`` as ``<stem>.md`` and ``plot(path)`` as ``<stem>.png``."""
    directory = Path(directory)
    paths = {ext: directory / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    write_atomic(paths["json"], (json.dumps(data, indent=2) + "\n").encode())
    write_atomic(paths["md"], markdown.encode())
    plot(paths["png"])
    return paths


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, for the callers' atomic writes."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
