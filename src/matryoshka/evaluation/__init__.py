"""Per-dimension evaluation: STS Spearman, retrieval metrics, and the shared results format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matryoshka._lazy import lazy_getattr

if TYPE_CHECKING:
    from matryoshka.evaluation.results import Results, safe_dimensions
    from matryoshka.evaluation.retrieval import evaluate_retrieval
    from matryoshka.evaluation.sts import evaluate_sts

# Imported on first use: the results format (what the server reads) must not load torch.
__getattr__ = lazy_getattr(__name__, {
    "Results": "matryoshka.evaluation.results", "safe_dimensions": "matryoshka.evaluation.results",
    "evaluate_retrieval": "matryoshka.evaluation.retrieval", "evaluate_sts": "matryoshka.evaluation.sts",
})

__all__ = ["Results", "evaluate_retrieval", "evaluate_sts", "safe_dimensions"]
