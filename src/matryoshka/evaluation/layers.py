"""Score a model on a grid of (layers, dims): what fewer layers cost in quality and buy in speed.

A model trained with ``Matryoshka2dLoss`` (``matryoshka train --layers``) can be run on its first
layers only; each row of the grid cuts it to that many layers, scores every dimension on one task
and measures the texts per second of that encoding, so the trade-off is one table and one picture.

Example:
    >>> grid = evaluate_layers("runs/layers/minilm-2d", layers=[6, 3, 2], dims=[384, 64])  # doctest: +SKIP
    >>> grid.save("runs/evaluate")  # layers.json, layers.md, layers.png  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matryoshka.errors import InputError
from matryoshka.evaluation.results import Results, png_bytes, save_outputs
from matryoshka.files import write_atomic

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel


@dataclass
class TaskScores:
    """One model's scores on one task: the primary metric per dim, every metric, and the texts encoded."""

    metric: str
    primary: dict[int, float]
    metrics: dict[str, dict[int, float]]
    texts: int
    seconds: float


def score_on_task(
    model: AnyModel, task: str, dims: Sequence[int] | None, split: str = "test", limit: int | None = None,
    show_progress_bar: bool = False,
) -> TaskScores:
    """Score ``model`` at ``dims`` on ``stsb`` (Spearman) or a BEIR set (nDCG@10 and more), timing the encoding.

    ``dims=None`` scores the model's full size and the usual prefixes below it
    (:func:`matryoshka.embeddings.vectors.dimension_ladder`), so a 256- or 768-dim model needs no list.
    """
    from matryoshka.embeddings.vectors import dimension_ladder
    from matryoshka.models.loading import model_dimension

    if dims is None:
        dims = dimension_ladder(model_dimension(model))
    started = time.perf_counter()
    if task == "stsb":
        from matryoshka.data import load_sts
        from matryoshka.evaluation.sts import evaluate_sts, sentence_rows

        pairs = load_sts(split)[:limit]  # type: ignore[arg-type]
        primary = evaluate_sts(model, pairs, dims, show_progress_bar=show_progress_bar)
        texts = len(sentence_rows(pairs)[0])
        return TaskScores("spearman_cosine", primary, {"spearman_cosine": primary}, texts, time.perf_counter() - started)
    from matryoshka.data.beir import load_beir
    from matryoshka.evaluation.retrieval import evaluate_retrieval

    dataset = load_beir(task, split=split)
    per_metric = evaluate_retrieval(model, dataset, dims)
    texts = len(dataset.corpus) + len(dataset.queries)
    return TaskScores("ndcg@10", per_metric["ndcg@10"], per_metric, texts, time.perf_counter() - started)


@dataclass
class LayerGrid:
    """Scores per (layers, dim) and encoding speed per layer count, of one model on one task."""

    model: str
    task: str
    metric: str
    scores: dict[int, dict[int, float]]
    texts_per_second: dict[int, float]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The uncut model's full :class:`TaskScores` when the grid scored it (every metric; not saved).
    full_depth: TaskScores | None = field(default=None, repr=False)

    def to_results(self) -> Results:
        """The grid as per-dimension :class:`Results`, one row per layer count (``"<model> L3"``)."""
        return Results(task=self.task, metric=self.metric,
                       scores={f"{self.model} L{n}": by_dim for n, by_dim in self.scores.items()},
                       metadata=self.metadata)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "metric": self.metric,
            "scores": {str(n): {str(d): round(v, 6) for d, v in sorted(by.items(), reverse=True)}
                       for n, by in self.scores.items()},
            "texts_per_second": {str(n): round(v, 1) for n, v in self.texts_per_second.items()},
            "metadata": self.metadata,
        }

    def to_markdown(self) -> str:
        """One row per layer count: score × 100 per dim, share of the deepest row's full-size score, texts/s."""
        dims = sorted({d for by in self.scores.values() for d in by}, reverse=True)
        deepest = max(self.scores)
        top = self.scores[deepest][dims[0]]
        speed = self.texts_per_second[deepest]
        lines = [
            (f"**{self.model}** on {self.task}: {self.metric} × 100 per (layers, dims); kept = score at full size / "
            f"the {deepest}-layer model's; speed = texts/s of the task's encoding, and its ratio to {deepest} layers"),
            "",
            *([f"Command: `{self.metadata['command']}`", ""] if self.metadata.get("command") else []),
            "| layers | " + " | ".join(str(d) for d in dims) + " | kept | texts/s | speed-up |",
            "|---:|" + "---:|" * len(dims) + "---:|---:|---:|",
        ]
        for n in sorted(self.scores, reverse=True):
            by = self.scores[n]
            cells = [f"{100 * by[d]:.2f}" if d in by else "" for d in dims]
            rate = self.texts_per_second[n]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {100 * by[dims[0]] / top:.1f}% | {rate:.0f} | "
                         f"{rate / speed:.2f}× |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Left: score against dims, one line per layer count. Right: score at full size against texts/s."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
        dims = sorted({d for by in self.scores.values() for d in by})
        for n in sorted(self.scores, reverse=True):
            by = self.scores[n]
            shown = [d for d in dims if d in by]
            left.plot(shown, [by[d] for d in shown], marker="o", label=f"{n} layers")
        left.set_xscale("log", base=2)
        left.set_xticks(dims, [str(d) for d in dims])
        left.minorticks_off()
        left.set_xlabel("dimensions kept (log scale)")
        left.set_ylabel(self.metric)
        left.set_title(f"{self.model}: {self.task}")
        left.grid(True, alpha=0.3)
        left.legend(loc="lower right")
        full = max(dims)
        for n, by in self.scores.items():
            right.scatter(self.texts_per_second[n], by[full], s=40)
            right.annotate(f"{n} layers", (self.texts_per_second[n], by[full]), textcoords="offset points",
                           xytext=(6, 4))
        right.set_xlabel("texts / s (this machine)")
        right.set_ylabel(f"{self.metric} at {full} dims")
        right.set_title("quality against encoding speed")
        right.grid(True, alpha=0.3)
        fig.tight_layout()
        write_atomic(Path(path), png_bytes(fig))
        plt.close(fig)

    def save(self, directory: str | os.PathLike[str], stem: str = "layers") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``directory``; return their paths."""
        return save_outputs(directory, stem, self.to_dict(), self.to_markdown(), self.plot)


def evaluate_layers(
    name: str | None,
    layers: Sequence[int],
    dims: Sequence[int] | None,
    task: str = "stsb",
    split: str = "test",
    limit: int | None = None,
    backend: str = "torch",
    quantize: str | None = None,
    label: str | None = None,
) -> LayerGrid:
    """Cut model ``name`` to each of ``layers``, score it at ``dims`` on ``task`` and time its encoding
    (``dims=None``: the model's full size and the usual prefixes below it, as :func:`score_on_task`)."""
    from matryoshka.models.layers import num_layers
    from matryoshka.models.loading import load_model

    if not layers:
        raise InputError("layers must name at least one layer count")
    depth = num_layers(load_model(name))
    scores: dict[int, dict[int, float]] = {}
    speed: dict[int, float] = {}
    metric = "spearman_cosine"
    full_depth = None
    for n in sorted(set(layers), reverse=True):
        model = load_model(name, backend=backend, quantize=quantize, layers=n)
        result = score_on_task(model, task, dims, split, limit)
        scores[n], speed[n], metric = result.primary, result.texts / result.seconds, result.metric
        if n == depth:
            full_depth = result
    return LayerGrid(model=label or (Path(name).name if name else "all-MiniLM-L6-v2"), task=f"{task}-{split}",
                     metric=metric, scores=scores, texts_per_second=speed,
                     metadata={"backend": backend, "quantize": quantize, "layers": sorted(scores, reverse=True)},
                     full_depth=full_depth)
