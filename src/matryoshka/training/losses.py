"""Distillation losses: keep the full-size model's similarities in every prefix of the student.

sentence-transformers' distillation losses match per-example labels (``MSELoss`` on embeddings,
``CoSENTLoss`` on one cosine per pair). Under ``MatryoshkaLoss`` the former compares a truncated
student with a truncated teacher, which is the wrong target: a 32-d prefix should reproduce the
teacher's *full-size* geometry. This loss does that, and scores every pair of texts in the batch
(``n * (n - 1) / 2`` similarities for ``n`` texts) instead of one per row, so each step carries
far more signal at no extra encoding cost. It is written here because no library loss does both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from matryoshka.errors import InputError

#: The self-distillation recipes' prefix weights by size, chosen on STS-B dev (2 at 64, 8 at 32, 4 at 16);
#: every other size weighs 1, so a model of any size gets them on its own ladder.
RECIPE_WEIGHTS: Mapping[int, float] = MappingProxyType({64: 2.0, 32: 8.0, 16: 4.0})


def weights_by_size(dims: Sequence[int], by_size: Mapping[int, float] = RECIPE_WEIGHTS) -> tuple[float, ...]:
    """One weight per entry of ``dims``: ``by_size``'s weight for that size, or 1 where it has none.

    Example:
        >>> weights_by_size([768, 512, 256, 128, 64, 32, 16])
        (1.0, 1.0, 1.0, 1.0, 2.0, 8.0, 4.0)
    """
    return tuple(float(by_size.get(int(d), 1.0)) for d in dims)


def check_prefixes(dims: Sequence[int], weights: Sequence[float] | None, full_dim: int, need_full: bool = True) -> None:
    """Raise :class:`InputError` unless ``dims`` are prefixes of a ``full_dim``-d model, one weight each.

    ``need_full``: the full size must be among them, so that a Matryoshka loss keeps full-size quality.
    """
    if not dims or any(d <= 0 or d > full_dim for d in dims):
        raise InputError(f"dims must be in 1..{full_dim}, got {list(dims)}")
    if need_full and full_dim not in dims:
        raise InputError(f"dims must include the full size {full_dim} so full-size quality is trained")
    if weights is not None and len(weights) != len(dims):
        raise InputError(f"{len(weights)} weights for {len(dims)} dims")
    if weights is not None and any(w < 0 for w in weights):
        raise InputError("weights must not be negative")


class InBatchSimilarityDistillationLoss(nn.Module):
    """Mean squared error between the student's and the teacher's cosine matrices over a batch.

    Every text column of the batch is embedded; the student's cosine similarities between all pairs
    of texts (at whatever size ``MatryoshkaLoss`` truncates it to) are pulled toward the teacher's
    full-size cosines. The teacher's embeddings are computed once, before training, and each row's
    label is its index into that table; an integer label is never mistaken by ``MatryoshkaLoss`` for
    an embedding to truncate, and any student (a transformer, a ``StaticEmbedding``) can learn
    from any teacher.

    Args:
        model: the student being trained.
        teacher_embeddings: ``(rows, columns, dim)`` teacher vectors of the training data set, in the
            data set's row and column order.
        scale: multiplies the mean squared error, keeping the loss in a range where the optimizer's
            default settings work.
        vector_weight: weight of a per-text term that pulls each student vector (at the size being
            scored) toward the teacher's vector of the same text cut to that size, both re-normalized.
            Cosines alone leave the student free to rotate; this pins it to the teacher's own axes, the
            target when the student is the teacher cut to fewer layers. It converged faster there
            (STS-B dev, 3 of 6 layers, batch 64: 77.7 after 200 steps with it, 76.7 after 600 without).

    Example:
        >>> from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
        >>> base = InBatchSimilarityDistillationLoss(student, teacher_table)  # doctest: +SKIP
        >>> loss = MatryoshkaLoss(student, base, [384, 256, 128, 64, 32, 16])  # doctest: +SKIP
    """

    teacher_embeddings: Tensor  # a registered buffer

    def __init__(
        self, model: SentenceTransformer, teacher_embeddings: Tensor, scale: float = 100.0, vector_weight: float = 0.0
    ) -> None:
        super().__init__()
        if teacher_embeddings.ndim != 3:
            raise InputError("teacher_embeddings must have shape (rows, columns, dim)")
        if vector_weight < 0:
            raise InputError("vector_weight must not be negative")
        self.model = model
        self.register_buffer("teacher_embeddings", F.normalize(teacher_embeddings.float(), dim=-1), persistent=False)
        self.scale = scale
        self.vector_weight = vector_weight

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) != self.teacher_embeddings.shape[1]:
            raise InputError(
                f"the batch has {len(features)} text columns, the teacher table {self.teacher_embeddings.shape[1]}"
            )
        embeddings = [self.model(f)["sentence_embedding"] for f in features]
        loss = similarity_mse(embeddings, self.teacher_embeddings, labels)
        if self.vector_weight > 0:
            loss = loss + self.vector_weight * prefix_vector_mse(embeddings, self.teacher_embeddings, labels)
        return self.scale * loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "vector_weight": self.vector_weight,
                "teacher_rows": int(self.teacher_embeddings.shape[0])}


def prefix_vector_mse(embeddings: list[Tensor], teacher_table: Tensor, labels: Tensor) -> Tensor:
    """Half the mean squared distance between each student unit vector and its text's teacher prefix.

    Each ``(batch, d)`` student tensor is compared with the first ``d`` teacher dimensions of the same
    text, re-normalized; for unit vectors this is ``1 - cosine`` per text, averaged.
    """
    rows = teacher_table[labels.long().view(-1)]
    total = embeddings[0].new_zeros((), dtype=torch.float32)
    for column, student in enumerate(embeddings):
        size = student.shape[-1]
        teacher = F.normalize(rows[:, column, :size], dim=-1)
        total = total + ((F.normalize(student.float(), dim=-1) - teacher) ** 2).sum(-1).mean() / 2
    return total / len(embeddings)


def similarity_mse(embeddings: list[Tensor], teacher_table: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error between the student's cosines of all pairs of texts in a batch and the teacher's.

    ``embeddings`` holds one ``(batch, dim)`` tensor per text column; ``labels`` are the rows' indices
    into ``teacher_table`` (``(rows, columns, full dim)``, unit length).
    """
    rows = teacher_table[labels.long().view(-1)]
    teacher = torch.cat([rows[:, column] for column in range(rows.shape[1])])
    student = F.normalize(torch.cat(embeddings).float(), dim=-1)
    upper = torch.triu_indices(len(student), len(student), offset=1, device=student.device)
    student_sim = (student @ student.T)[upper[0], upper[1]]
    teacher_sim = (teacher @ teacher.T)[upper[0], upper[1]]
    return F.mse_loss(student_sim, teacher_sim)


class RankingDistillationLoss(nn.Module):
    """``MultipleNegativesRankingLoss`` over (query, document[, negatives]) rows, plus a distillation term.

    The ranking term teaches retrieval; the optional term (``distill_weight > 0``) pulls the cosines
    between all texts of the batch toward the untouched model's full-size cosines, so that full-size
    quality does not drift away from the base on what the pairs do not cover. Each text is embedded
    once for both terms, so under ``MatryoshkaLoss`` every prefix pays one truncation, not two passes.

    Args:
        model: the student being trained.
        teacher_embeddings: ``(rows, columns, dim)`` teacher vectors of the data set, or ``None`` when
            ``distill_weight`` is 0; each row's label is its index into this table.
        distill_weight: weight of the distillation term (the ranking term has weight 1).
        scale: MNRL's inverse temperature.
    """

    teacher_embeddings: Tensor  # a registered buffer

    def __init__(
        self, model: SentenceTransformer, teacher_embeddings: Tensor | None, distill_weight: float = 0.0,
        scale: float = 20.0,
    ) -> None:
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )

        super().__init__()
        if distill_weight > 0 and (teacher_embeddings is None or teacher_embeddings.ndim != 3):
            raise InputError("a distillation term needs teacher_embeddings of shape (rows, columns, dim)")
        self.model = model
        self.ranking = MultipleNegativesRankingLoss(model, scale=scale)
        self.distill_weight = distill_weight
        table = F.normalize(teacher_embeddings.float(), dim=-1) if teacher_embeddings is not None else torch.empty(0)
        self.register_buffer("teacher_embeddings", table, persistent=False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = [self.model(f)["sentence_embedding"] for f in sentence_features]
        loss = self.ranking.compute_loss_from_embeddings(embeddings, labels)
        if self.distill_weight > 0:
            loss = loss + self.distill_weight * 100.0 * similarity_mse(embeddings, self.teacher_embeddings, labels)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"distill_weight": self.distill_weight, "scale": self.ranking.scale}
