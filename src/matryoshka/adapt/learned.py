"""The learned adaptor: a linear map started at the rotation and trained at every prefix.

The losses are Matryoshka-Adaptor's (Yoon et al., 2024): pairwise cosines within a batch and each
text's top-k neighbours across the corpus are pulled toward the full-size cosines, and a term keeps the
full-size vector where the rotation put it. Given (query, relevant document) pairs it adds a ranking
loss with in-batch negatives at every prefix. It is written here because no library fits such a map to
a frozen model's prefixes; the optimizer is torch's.

What made fits fragile, examined on dev splits of train queries (benchmarks/adapt_validated.py):

- The step count. A fixed 1,000 steps over 46 NPL queries' pairs fell below the rotation; the best
  held-out score came after 50-150 steps. So ``monitor`` scores the map on held-out data every
  ``eval_every`` steps, the fit stops after ``patience`` checks without a better score, and the best
  map is kept (:mod:`matryoshka.adapt.choice` does this for ``matryoshka adapt``).
- A query's other judged documents as in-batch negatives (NPL judges 22 a query): masking them
  (``mask_judged``, pairs carry their query's group and their document's corpus row) made no
  measurable difference on dev, so it is off by default.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.adapt.adaptor import AdaptError, Adaptor, checked_unit_rows
from matryoshka.adapt.rotation import fit_rotation
from matryoshka.embeddings.vectors import dimension_ladder

if TYPE_CHECKING:
    import torch


@dataclass
class LearnedConfig:
    """Settings of the learned adaptor; defaults were chosen on dev splits of SciFact and NPL train queries.

    Attributes:
        dims: prefixes scored by every loss (``None``: the model's ladder, :func:`dimension_ladder`);
            the full size is added when missing.
        weights: one weight per prefix (``None``: equal).
        steps: optimizer steps (the most, when a monitor stops early: on SciFact's dev split the best
            step came at 1,250, on NPL's at 150).
        batch_size: corpus vectors per step (pairwise and top-k terms).
        pair_batch_size: (query, document) pairs per step for the ranking term.
        learning_rate: Adam learning rate.
        top_k: neighbours per text kept close (from full-size cosines over the whole corpus).
        pair_weight, topk_weight, keep_weight, rank_weight: weights of the four terms.
        scale: inverse temperature of the ranking loss (MNRL's default is 20).
        seed: seeds batch sampling.
        threads: torch threads while fitting (``None``: leave torch's setting).
        orthogonal: keep the map a rotation (``W = expm(A - A^T) @ R``), so full-size cosines stay
            exactly the base's and only the order of information across dimensions is learned.
        eval_every: steps between two calls of a fit's ``monitor`` (early stopping).
        patience: stop after this many monitor calls in a row without a better score (``None``: run
            every step).
        mask_judged: never use a query's other judged documents as its in-batch negatives. Off by
            default: on the dev splits it did not help (NPL, 22 judged documents a query: -0.4 points
            on average over the dims; SciFact: -0.2), see benchmarks/results/retrieval/adapt-dev.md.
    """

    dims: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    steps: int = 2000
    batch_size: int = 256
    pair_batch_size: int = 64
    learning_rate: float = 1e-3
    top_k: int = 10
    pair_weight: float = 1.0
    topk_weight: float = 1.0
    keep_weight: float = 1.0
    rank_weight: float = 1.0
    scale: float = 20.0
    seed: int = 0
    threads: int | None = None
    orthogonal: bool = False
    eval_every: int = 50
    patience: int | None = 4
    mask_judged: bool = False

    def dims_for(self, dim: int) -> list[int]:
        """The prefixes fitted for a ``dim``-d model, largest first, full size included."""
        chosen = dimension_ladder(dim) if self.dims is None else [int(d) for d in self.dims]
        return sorted({*chosen, dim}, reverse=True)

    def validate(self, dim: int) -> None:
        """Raise :class:`AdaptError` for settings that cannot fit a ``dim``-d adaptor."""
        if self.dims is not None and (not self.dims or any(int(d) <= 0 or int(d) > dim for d in self.dims)):
            raise AdaptError(f"dims must be in 1..{dim}, got {list(self.dims)}")
        if self.weights is not None and (self.dims is None or len(self.weights) != len(self.dims)):
            raise AdaptError(f"{len(self.weights)} weights for dims {self.dims}: give one weight per dim")
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise AdaptError("weights must not be negative")
        if self.patience is not None and self.patience < 1:
            raise AdaptError("patience must be at least 1 (or None)")
        for name in ("steps", "batch_size", "pair_batch_size", "top_k", "eval_every"):
            if getattr(self, name) < 1:
                raise AdaptError(f"{name} must be at least 1")
        if self.learning_rate <= 0 or self.scale <= 0:
            raise AdaptError("learning_rate and scale must be positive")
        if min(self.pair_weight, self.topk_weight, self.keep_weight, self.rank_weight) < 0:
            raise AdaptError("loss weights must not be negative")


@dataclass
class PairSet:
    """(query, relevant document) pairs for the ranking term, with what makes a negative false.

    Attributes:
        queries, documents: ``(n, dim)`` vectors; row ``i`` of each is a relevant pair.
        groups: ``(n,)`` one id per distinct query; pairs of one query never serve as each other's
            negatives (``None``: every pair is its own query).
        doc_rows: ``(n,)`` the corpus row of each pair's document, ``-1`` where it is not in the corpus;
            a corpus document judged relevant for a query is never that query's negative.
    """

    queries: np.ndarray
    documents: np.ndarray
    groups: np.ndarray | None = None
    doc_rows: np.ndarray | None = None

    def checked(self, dim: int) -> PairSet:
        """Unit rows and consistent shapes, or an :class:`AdaptError`."""
        queries, documents = checked_unit_rows(self.queries, "query vectors"), checked_unit_rows(self.documents, "document vectors")
        if queries.shape != documents.shape or queries.shape[1] != dim:
            raise AdaptError(f"pairs must be two ({dim}-d) arrays of equal shape, got {queries.shape} and {documents.shape}")
        n = len(queries)
        groups = np.arange(n) if self.groups is None else np.asarray(self.groups, dtype=np.int64)
        rows = np.full(n, -1) if self.doc_rows is None else np.asarray(self.doc_rows, dtype=np.int64)
        if groups.shape != (n,) or rows.shape != (n,):
            raise AdaptError(f"groups and doc_rows must hold one entry per pair ({n})")
        return PairSet(queries, documents, groups, rows)


def nearest_neighbours(unit: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indices of each row's ``k`` most similar other rows by cosine, shape ``(rows, k)``."""
    k = min(k, unit.shape[0] - 1)
    out = np.empty((unit.shape[0], k), dtype=np.int64)
    for start in range(0, unit.shape[0], block):
        sims = unit[start : start + block] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.argsort(-sims, axis=1)[:, :k]
        out[start : start + block] = top
    return out


#: ``monitor(weight) -> score``: higher is better; scores the map on held-out data for early stopping.
Monitor = Callable[[np.ndarray], float]


def fit_learned(
    corpus_vectors: np.ndarray,
    config: LearnedConfig | None = None,
    pairs: PairSet | tuple[np.ndarray, np.ndarray] | None = None,
    init: Adaptor | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    scored_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    monitor: Monitor | None = None,
) -> Adaptor:
    """Train a linear adaptor at every prefix; unsupervised from corpus vectors, plus pairs if given.

    Args:
        corpus_vectors: the frozen model's vectors of the corpus texts.
        config: the run's settings.
        pairs: a :class:`PairSet` (or ``(query_vectors, document_vectors)``); adds the ranking term.
            The corpus batch of each step joins the in-batch negatives, less the query's judged documents.
        init: the starting map; default the rotation of ``corpus_vectors``.
        progress: called as ``progress(step, steps, loss)`` after every step.
        scored_pairs: ``(vectors_a, vectors_b, scores)`` of pairs with a graded similarity (e.g. STS
            train); adds ``CoSENT``'s ranking of the pairs' cosines by their scores at every prefix.
        monitor: scores the current map every ``config.eval_every`` steps (and at the start); the best
            map is returned, with the curve and its step in ``info``.
    """
    import torch
    import torch.nn.functional as F

    config = config or LearnedConfig()
    started = time.perf_counter()
    unit = checked_unit_rows(corpus_vectors, "corpus vectors")
    dim = unit.shape[1]
    config.validate(dim)
    if unit.shape[0] < 2:
        raise AdaptError("a learned adaptor needs at least 2 corpus vectors")
    dims = config.dims_for(dim)
    weights = dict(zip((int(d) for d in config.dims or ()), config.weights or ()))
    dim_weights = [float(weights.get(d, 1.0)) for d in dims]
    rotation = init or fit_rotation(unit)
    if rotation.dim != dim:
        raise AdaptError(f"the starting adaptor maps {rotation.dim}-d vectors, the corpus is {dim}-d")
    pair_set = None
    if pairs is not None:
        pair_set = (pairs if isinstance(pairs, PairSet) else PairSet(*pairs)).checked(dim)
    if scored_pairs is not None:
        left, right = checked_unit_rows(scored_pairs[0], "pair vectors"), checked_unit_rows(scored_pairs[1], "pair vectors")
        gold = np.asarray(scored_pairs[2], dtype=np.float32)
        if left.shape != right.shape or left.shape[1] != dim or gold.shape != (len(left),):
            raise AdaptError("scored_pairs must be two equal (n, dim) arrays and n scores")
    neighbours = nearest_neighbours(unit, config.top_k)

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    curve: list[tuple[int, float]] = []
    try:
        generator = torch.Generator().manual_seed(config.seed)
        corpus = torch.from_numpy(unit)
        nbrs = torch.from_numpy(neighbours)
        start_weight = torch.from_numpy(rotation.weight.copy())
        orthogonal = config.orthogonal
        free = torch.nn.Parameter(torch.zeros_like(start_weight) if orthogonal else start_weight.clone())

        def current() -> torch.Tensor:
            # A skew-symmetric generator keeps expm(.) a rotation; at zero it is the identity.
            return torch.linalg.matrix_exp(free - free.T) @ start_weight if orthogonal else free

        optimizer = torch.optim.Adam([free], lr=config.learning_rate)
        ranking = _RankingTerm(pair_set, len(unit), config.mask_judged) if pair_set is not None else None
        scored = (torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(gold)) if scored_pairs is not None else None

        def prefixes(x: torch.Tensor) -> list[torch.Tensor]:
            return [F.normalize(x[:, :d], dim=-1) for d in dims]

        best: tuple[float, int, np.ndarray] | None = None
        stale = 0

        def check(step: int) -> bool:
            """Score the map now; ``True`` when patience has run out."""
            nonlocal best, stale
            assert monitor is not None
            with torch.no_grad():
                snapshot = current().numpy().copy()
            score = float(monitor(snapshot))
            curve.append((step, round(score, 6)))
            if best is None or score > best[0]:
                best, stale = (score, step, snapshot), 0
            else:
                stale += 1
            return config.patience is not None and stale >= config.patience

        if monitor is not None:
            check(0)
        losses: list[float] = []
        for step in range(config.steps):
            batch = torch.randint(0, len(corpus), (min(config.batch_size, len(corpus)),), generator=generator)
            x = corpus[batch]
            x_nbr = corpus[nbrs[batch]]  # (batch, k, dim)
            weight = current()
            mapped = x @ weight.T
            mapped_nbr = x_nbr @ weight.T
            target_pair = x @ x.T
            target_nbr = (x.unsqueeze(1) * x_nbr).sum(-1)
            # An orthogonal map keeps every full-size vector by construction, so it has no keep term.
            loss = torch.zeros(()) if orthogonal else (
                config.keep_weight * F.mse_loss(F.normalize(mapped, dim=-1), x @ start_weight.T) * dim)
            for w, d in zip(dim_weights, dims):
                y = F.normalize(mapped[:, :d], dim=-1)
                y_nbr = F.normalize(mapped_nbr[..., :d], dim=-1)
                loss = loss + w * config.pair_weight * (y @ y.T - target_pair).abs().mean()
                loss = loss + w * config.topk_weight * ((y.unsqueeze(1) * y_nbr).sum(-1) - target_nbr).abs().mean()
            if ranking is not None and config.rank_weight > 0:
                q, docs, negatives_mask = ranking.batch(config.pair_batch_size, x, batch, generator)
                q, docs = q @ weight.T, docs @ weight.T
                labels = torch.arange(len(q))
                for w, qd, dd in zip(dim_weights, prefixes(q), prefixes(docs)):
                    logits = (config.scale * qd @ dd.T).masked_fill(negatives_mask, float("-inf"))
                    loss = loss + w * config.rank_weight * F.cross_entropy(logits, labels)
            if scored is not None and config.rank_weight > 0:
                chosen = torch.randint(0, len(scored[0]), (min(config.pair_batch_size, len(scored[0])),), generator=generator)
                a_vec, b_vec, scores = scored[0][chosen] @ weight.T, scored[1][chosen] @ weight.T, scored[2][chosen]
                # CoSENT: every pair scored higher than another should have the higher cosine.
                worse = (scores[:, None] < scores[None, :]).float()
                for w, ad, bd in zip(dim_weights, prefixes(a_vec), prefixes(b_vec)):
                    cos = (ad * bd).sum(-1) * config.scale
                    diff = (cos[:, None] - cos[None, :]) - (1.0 - worse) * 1e12
                    loss = loss + w * config.rank_weight * torch.logsumexp(
                        torch.cat([torch.zeros(1), diff.flatten()]), dim=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, config.steps, losses[-1])
            due = (step + 1) % config.eval_every == 0 or step + 1 == config.steps
            if monitor is not None and due and check(step + 1):
                break
    finally:
        torch.set_num_threads(previous_threads)
    if best is not None:
        best_score, best_step, final = best
    else:
        with torch.no_grad():
            final = current().numpy().copy()
        best_step, best_score = config.steps, None
    info = {
        "corpus_vectors": int(unit.shape[0]),
        "pairs": int(len(pair_set.queries)) if pair_set is not None else 0,
        "config": json.loads(json.dumps(asdict(config))),
        # means over the first and last tenth of the steps: single batches are noisy
        "initial_loss": round(float(np.mean(losses[: max(1, len(losses) // 10)])), 6) if losses else None,
        "final_loss": round(float(np.mean(losses[-max(1, len(losses) // 10):])), 6) if losses else None,
        "steps": best_step,
        "steps_run": len(losses),
        "seconds": round(time.perf_counter() - started, 3),
        "orthogonal": orthogonal,
    }
    if monitor is not None:
        info.update({"monitor_curve": curve, "monitor_best": best_score})
    return Adaptor(weight=final, method="learned", info=info)


class _RankingTerm:
    """Samples a step's pairs and says which in-batch documents are false negatives for each query."""

    def __init__(self, pairs: PairSet, corpus_size: int, mask: bool = True) -> None:
        import torch

        assert pairs.groups is not None and pairs.doc_rows is not None
        self.queries = torch.from_numpy(pairs.queries)
        self.documents = torch.from_numpy(pairs.documents)
        self.groups = torch.from_numpy(pairs.groups)
        self.doc_rows = torch.from_numpy(pairs.doc_rows)
        self.corpus_size = corpus_size
        self.mask = mask
        # (group, corpus row) of every judged pair, as one sorted key each: isin() finds judged docs.
        judged = pairs.doc_rows >= 0
        self.judged_keys = torch.from_numpy(np.unique(pairs.groups[judged] * corpus_size + pairs.doc_rows[judged]))

    def batch(self, size: int, corpus_batch: torch.Tensor, corpus_rows: torch.Tensor, generator: torch.Generator,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(queries, documents, mask)``: the pairs' documents then the corpus batch; ``mask[i, j]`` is
        true where document ``j`` is judged relevant for query ``i`` but is not its own pair's document."""
        import torch

        chosen = torch.randint(0, len(self.queries), (min(size, len(self.queries)),), generator=generator)
        docs = torch.cat([self.documents[chosen], corpus_batch])
        if not self.mask:
            return self.queries[chosen], docs, torch.zeros((len(chosen), len(docs)), dtype=torch.bool)
        groups, rows = self.groups[chosen], self.doc_rows[chosen]
        # another pair's document is a false negative when it belongs to the same query or is judged for it
        in_pairs = (groups[:, None] == groups[None, :]) | (
            torch.isin(groups[:, None] * self.corpus_size + rows[None, :], self.judged_keys) & (rows[None, :] >= 0))
        in_pairs.fill_diagonal_(False)
        in_corpus = torch.isin(groups[:, None] * self.corpus_size + corpus_rows[None, :], self.judged_keys)
        return self.queries[chosen], docs, torch.cat([in_pairs, in_corpus], dim=1)


def pair_set_from_judgements(
    queries: np.ndarray, relevant: Sequence[Sequence[int]], corpus_vectors: np.ndarray,
) -> PairSet:
    """A :class:`PairSet` from distinct query vectors and, per query, the corpus rows judged relevant."""
    rows = [(q, r) for q, judged in enumerate(relevant) for r in judged]
    if not rows:
        raise AdaptError("no (query, document) pairs to fit on")
    groups = np.array([q for q, _ in rows], dtype=np.int64)
    doc_rows = np.array([r for _, r in rows], dtype=np.int64)
    return PairSet(queries=np.asarray(queries)[groups], documents=np.asarray(corpus_vectors)[doc_rows],
                   groups=groups, doc_rows=doc_rows)
