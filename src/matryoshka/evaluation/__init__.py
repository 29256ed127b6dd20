"""Per-dimension evaluation: STS Spearman, retrieval metrics, and the shared results format."""

from matryoshka.evaluation.results import Results, safe_dimensions
from matryoshka.evaluation.retrieval import evaluate_retrieval
from matryoshka.evaluation.sts import evaluate_sts

__all__ = ["Results", "evaluate_retrieval", "evaluate_sts", "safe_dimensions"]
