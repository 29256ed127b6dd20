"""Held-out checks for adaptors: query splits, and the two signals a candidate is judged by.

- With labels: nDCG@10 (and recall@100) of held-out *queries* against the whole corpus, per prefix,
  scored exactly as ``matryoshka evaluate`` scores (:func:`~matryoshka.evaluation.retrieval.score_vectors_per_query`).
- Without labels: how many of each held-out text's full-size top-10 neighbours (by the untouched
  model) a prefix of the adapted vectors recovers. It needs no judgement, reads as "share of full-size
  search kept", and on the dev splits it ranked the rotation and the unsupervised map the same way as
  nDCG@10 of real queries did (benchmarks/results/retrieval/adapt-dev.md).

Splits are by query, seeded: all judgements of one query fall on the same side, so a query's
documents never teach the map that is scored on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from matryoshka.adapt.adaptor import AdaptError
from matryoshka.embeddings.vectors import truncate


@dataclass
class ValidationConfig:
    """How ``matryoshka adapt`` validates its candidates; defaults chosen on dev splits.

    Attributes:
        folds: ``None`` chooses: one held-out split when there are at least ``holdout_min_queries``
            labelled queries, else ``cv_folds``-fold cross-validation; ``1`` forces one split, ``k > 1``
            k folds.
        holdout_share: share of labelled queries held out by a single split.
        holdout_min_queries: labelled queries from which one split is enough (its share is then 50+).
        cv_folds: folds when labels are few.
        min_queries: fewer labelled queries than this cannot validate a supervised map.
        seed: seeds the splits.
        tolerance: how far below the rotation a learned map may be at any asked dim (validation score).
        full_tolerance: how far below the untouched model it may be at full size.
        min_gain: the mean gain over the asked dims a learned map must show to replace the rotation
            (and the 95% interval of that mean gain, from paired per-query differences, must be above zero).
        heldout_texts: label-free signal: corpus texts held out (at most a tenth of the corpus).
        neighbours: label-free signal: full-size neighbours each held-out text should keep.
        refit: refit the chosen learned map on all the data for its validated number of steps (else
            keep the map fitted on the training side of a single split; with folds a refit is needed).
    """

    folds: int | None = None
    holdout_share: float = 0.2
    holdout_min_queries: int = 250
    cv_folds: int = 5
    min_queries: int = 5
    seed: int = 0
    tolerance: float = 0.0
    full_tolerance: float = 0.0
    min_gain: float = 0.005
    heldout_texts: int = 1000
    neighbours: int = 10
    refit: bool = True

    def check(self) -> None:
        """Raise :class:`AdaptError` for settings no split can follow."""
        if self.folds is not None and self.folds < 1:
            raise AdaptError(f"folds must be at least 1, got {self.folds}")
        if not 0 < self.holdout_share < 1:
            raise AdaptError(f"holdout_share must be between 0 and 1, got {self.holdout_share}")
        if self.cv_folds < 2 or self.min_queries < 2 or self.neighbours < 1 or self.heldout_texts < 1:
            raise AdaptError("cv_folds and min_queries must be at least 2, neighbours and heldout_texts at least 1")
        if min(self.tolerance, self.full_tolerance, self.min_gain) < 0:
            raise AdaptError("tolerances and min_gain must not be negative")

    def query_folds(self, n_queries: int) -> list[np.ndarray]:
        """The held-out query indices of each fold (disjoint; together all queries for k folds)."""
        if n_queries < self.min_queries:
            raise AdaptError(f"{n_queries} labelled queries cannot validate a map; give at least {self.min_queries}")
        order = np.random.default_rng(self.seed).permutation(n_queries)
        folds = self.folds or (1 if n_queries >= self.holdout_min_queries else self.cv_folds)
        if folds == 1:
            held = max(1, round(self.holdout_share * n_queries))
            return [np.sort(order[:held])]
        folds = min(folds, n_queries)
        return [np.sort(part) for part in np.array_split(order, folds)]


@dataclass
class Judgements:
    """Labelled queries: distinct query vectors and, for each, the corpus rows judged relevant.

    Attributes:
        queries: ``(q, dim)`` vectors, one per distinct query.
        relevant: per query, the corpus rows of its relevant documents (at least one each).
        names: a label per query (its id or text), for the report.
    """

    queries: np.ndarray
    relevant: list[list[int]]
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.relevant):
            raise AdaptError(f"{len(self.queries)} query vectors for {len(self.relevant)} judgement lists")
        if any(not rows for rows in self.relevant):
            raise AdaptError("every labelled query needs at least one relevant corpus document")
        if not self.names:
            self.names = [str(i) for i in range(len(self.relevant))]
        if len(set(self.names)) != len(self.names) or len(self.names) != len(self.relevant):
            raise AdaptError("every labelled query needs its own name (names are the keys its scores are paired by)")

    def subset(self, rows: Sequence[int] | np.ndarray) -> Judgements:
        """The judgements of queries ``rows`` (indices into this set)."""
        chosen = [int(r) for r in rows]
        return Judgements(self.queries[chosen], [self.relevant[r] for r in chosen], [self.names[r] for r in chosen])

    def qrels(self) -> dict[str, dict[str, int]]:
        """``{query name: {corpus row as text: 1}}``, the shape the retrieval scorer reads."""
        return {name: {str(r): 1 for r in rows} for name, rows in zip(self.names, self.relevant)}


def retrieval_scores(
    weight: np.ndarray | None, corpus: np.ndarray, judged: Judgements, dims: Sequence[int],
    k_values: Sequence[int] = (10, 100),
) -> dict[str, dict[int, np.ndarray]]:
    """Per-query retrieval metrics of ``judged`` against the whole corpus, through the map ``weight``
    (``None``: the untouched vectors), in ``sorted(names)`` order."""
    from matryoshka.evaluation.retrieval import score_vectors_per_query

    docs, queries = (corpus, judged.queries) if weight is None else (_mapped(corpus, weight), _mapped(judged.queries, weight))
    doc_ids = [str(i) for i in range(len(corpus))]
    return score_vectors_per_query(judged.qrels(), doc_ids, docs, judged.names, queries, dims, k_values)


@dataclass
class NeighbourTask:
    """The label-free signal: held-out texts, the texts they search, and their full-size neighbours."""

    held: np.ndarray
    searched: np.ndarray
    truth: np.ndarray
    k: int

    @classmethod
    def carve(cls, corpus: np.ndarray, config: ValidationConfig) -> tuple[NeighbourTask, np.ndarray]:
        """Hold out texts of ``corpus`` (seeded); returns the task and the rows left to fit on."""
        n = len(corpus)
        held_count = min(config.heldout_texts, n // 10)
        if held_count < 5 or n - held_count <= config.neighbours:
            raise AdaptError(f"a corpus of {n} texts is too small to check a learned map without labels "
                             f"(it needs {max(50, 10 * (config.neighbours + 1))}+)")
        order = np.random.default_rng(config.seed).permutation(n)
        held_rows, fit_rows = np.sort(order[:held_count]), np.sort(order[held_count:])
        held, searched = corpus[held_rows], corpus[fit_rows]
        truth = _top_rows(held, searched, config.neighbours)
        return cls(held=held, searched=searched, truth=truth, k=config.neighbours), fit_rows

    def scores(self, weight: np.ndarray | None, dims: Sequence[int]) -> dict[str, dict[int, np.ndarray]]:
        """``{"neighbours@k": {dim: per held-out text share of its full-size top k found}}``."""
        held, searched = (self.held, self.searched) if weight is None else (
            _mapped(self.held, weight), _mapped(self.searched, weight))
        out: dict[int, np.ndarray] = {}
        for dim in dims:
            found = _top_rows(truncate(held, dim), truncate(searched, dim), self.k)
            out[int(dim)] = np.array([len(np.intersect1d(a, b)) / self.k for a, b in zip(found, self.truth)])
        return {f"neighbours@{self.k}": out}


def _mapped(vectors: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return truncate(vectors @ weight.T)


def _top_rows(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """The rows of ``docs`` with the ``k`` largest inner products per query (FAISS exact search)."""
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
