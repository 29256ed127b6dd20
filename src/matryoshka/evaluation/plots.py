"""The main job's picture: each model's gain over the untouched base, per dimension, one panel per task.

Raw scores per dimension bury the point (every curve falls as dimensions shrink, and the curves lie
on top of each other at full size); the gain over the base at the same dimension shows at a glance
which models hold up where it matters, at 64 dimensions and below. The legend sits below the panels,
clear of the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matryoshka.errors import InputError
from matryoshka.evaluation.results import Results, png_bytes
from matryoshka.files import write_atomic


def plot_gains(results: Sequence[Results], path: str | os.PathLike[str], baseline: str = "base") -> None:
    """Plot ``score(model, d) - score(baseline, d)`` (in points, x100) for every model of each ``Results``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in results if baseline in r.scores]
    if not panels:
        raise InputError(f"no results hold the baseline {baseline!r}")
    names = list(dict.fromkeys(n for r in panels for n in r.scores if n != baseline))
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=120, squeeze=False)
    for ax, result in zip(axes[0], panels):
        base = result.scores[baseline]
        dims = sorted(base)
        ax.axhline(0.0, color="black", linewidth=1.2, label=f"{baseline} (untouched, truncated)")
        for name in names:
            by_dim = result.scores.get(name)
            if not by_dim:
                continue
            shown = [d for d in dims if d in by_dim]
            style = "-" if "matryoshka" in name else "--"
            ax.plot(shown, [100 * (by_dim[d] - base[d]) for d in shown], style, marker="o", color=colors[name],
                    linewidth=2.2 if "matryoshka" in name else 1.4, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("dimensions kept (log scale)")
        ax.set_ylabel(f"{result.metric} gain over {baseline} (points)")
        ax.set_title(result.task)
        ax.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
            labels.setdefault(label, label)
    fig.legend(list(handles.values()), list(labels.values()), loc="lower center", ncol=min(4, len(handles)),
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.06 + 0.055 * rows, 1, 1))
    buffer = png_bytes(fig)
    plt.close(fig)
    write_atomic(Path(path), buffer)
