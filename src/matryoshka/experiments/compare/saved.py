"""The models a comparison fits, saved under its output directory, so every row can be used afterwards.

A fine-tuned twin is already a model directory (``<out>/models/<label>``). The rows fitted on top of
the base are saved here as ordinary sentence-transformers directories too: an adaptor as the base
followed by its map (:func:`matryoshka.adapt.save_adapted_model`, with its adaptor file), a top-layer
twin as the tuned model. Each lands in ``<out>/models/<task>/<label>``, where the task is the data its
map or layer was fitted for (``stsb``, or the retrieval set's name), since a row such as
``adaptor-matryoshka`` is fitted once per task. ``matryoshka evaluate``, ``encode``, ``index build``
and ``serve`` take any of them with ``--model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matryoshka.adapt import Adaptor, AdaptReport, save_adapted_model
from matryoshka.files import save_model_atomic

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["model_dir", "save_adaptors", "save_tuned"]


def model_dir(out: Path, task: str, label: str) -> Path:
    """Where the row ``label`` fitted for ``task`` is saved."""
    return Path(out) / "models" / task / label


def save_adaptors(
    out: Path, task: str, base: SentenceTransformer, adaptors: dict[str, Adaptor],
    reports: dict[str, AdaptReport] | None = None,
) -> dict[str, str]:
    """Save each adaptor row as the base plus its map; returns ``{label: directory}``."""
    saved = {}
    for label, adaptor in adaptors.items():
        target = save_adapted_model(base, adaptor, model_dir(out, task, label), report=(reports or {}).get(label))
        saved[label] = str(target)
    return saved


def save_tuned(out: Path, task: str, label: str, model: SentenceTransformer) -> str:
    """Save a model tuned in place of the base (a top-layer twin); returns its directory."""
    return str(save_model_atomic(model, model_dir(out, task, label)))
