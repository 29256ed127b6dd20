"""Training Matryoshka models: whole models, top layers, static models, and their losses.

- ``train``: :func:`train` and :class:`TrainConfig` (distillation, NLI, retrieval objectives).
- ``losses``: the Matryoshka losses beside sentence-transformers' own.
- ``teachers``: teacher tables, the full-size teacher embeddings the distillation losses learn from.
- ``top_layer``: re-train only the top transformer layer on cached layer inputs.
- ``static``: static (model2vec) models distilled from a sentence-transformer.

Names are imported on first use, so ``import matryoshka.training`` does not load torch.

Example:
    >>> from matryoshka.training import TrainConfig, train
    >>> result = train(TrainConfig(objective="distill", max_pairs=2000), output_dir="runs/mrl")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matryoshka.training.static import StaticBuild, StaticConfig, build_static
    from matryoshka.training.top_layer import TopLayerConfig, cache_layer_inputs, tune_top_layer
    from matryoshka.training.train import TrainConfig, TrainResult, train

_LAZY = {
    **dict.fromkeys(["TrainConfig", "TrainResult", "train"], "matryoshka.training.train"),
    **dict.fromkeys(["TopLayerConfig", "cache_layer_inputs", "tune_top_layer"], "matryoshka.training.top_layer"),
    **dict.fromkeys(["StaticBuild", "StaticConfig", "build_static"], "matryoshka.training.static"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'matryoshka.training' has no attribute {name!r}")


__all__ = [
    "StaticBuild", "StaticConfig", "TopLayerConfig", "TrainConfig", "TrainResult", "build_static",
    "cache_layer_inputs", "train", "tune_top_layer",
]
