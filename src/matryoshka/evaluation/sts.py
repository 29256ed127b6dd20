"""Semantic textual similarity per dimension: Spearman correlation of cosine with gold scores.

Every sentence is encoded once at full size; each dimension is a truncated, re-normalized view of
those vectors, so scoring six dimensions costs one encoding pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import spearmanr

from matryoshka.data.sts import StsPair
from matryoshka.embeddings.vectors import check_dim, truncate
from matryoshka.errors import InputError
from matryoshka.models.loading import model_dimension

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel


def spearman_by_dim(
    embeddings1: np.ndarray, embeddings2: np.ndarray, scores: Sequence[float], dims: Sequence[int]
) -> dict[int, float]:
    """Spearman of the cosine between row pairs against ``scores``, for each prefix length in ``dims``."""
    gold = np.asarray(scores, dtype=np.float64)
    result = {}
    for dim in dims:
        a = truncate(embeddings1, dim)
        b = truncate(embeddings2, dim)
        cosine = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
        result[int(dim)] = float(spearmanr(cosine, gold).statistic)
    return result


def evaluate_sts(
    model: AnyModel,
    pairs: Sequence[StsPair],
    dims: Sequence[int] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[int, float]:
    """Spearman correlation of cosine similarity with the gold scores of ``pairs`` at each of ``dims``.

    Matches sentence-transformers' ``EmbeddingSimilarityEvaluator(..., truncate_dim=d)`` (``spearman_cosine``).

    Example:
        >>> evaluate_sts(model, load_sts("test"), dims=[384, 64])  # doctest: +SKIP
        {384: 0.8203, 64: 0.7921}
    """
    full = model_dimension(model)
    dims = [check_dim(d, full) for d in (dims or [full])]
    if not pairs:
        raise InputError("no STS pairs to evaluate")
    sentences, left, right = sentence_rows(pairs)
    vectors = model.encode(
        sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=show_progress_bar
    )
    return spearman_by_dim(vectors[left], vectors[right], [p.score for p in pairs], dims)


def sentence_rows(pairs: Sequence[StsPair]) -> tuple[list[str], list[int], list[int]]:
    """Each distinct sentence of ``pairs`` once, and the rows of every pair's first and second sentence,
    so a pair set is encoded once per sentence and scored from any view of those vectors."""
    sentences = list(dict.fromkeys([p.sentence1 for p in pairs] + [p.sentence2 for p in pairs]))
    row = {s: i for i, s in enumerate(sentences)}
    return sentences, [row[p.sentence1] for p in pairs], [row[p.sentence2] for p in pairs]
