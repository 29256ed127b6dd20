"""Teacher tables: the full-size teacher embeddings of every text of every training row.

A distillation loss compares the student's prefixes with the untouched model's full-size vectors of
the same texts; those vectors are encoded once, before training, into a ``(rows, columns, dim)``
table. Two encodings are kept, because models already trained learned from each and their numbers
must not move:

- no ``cache``: every text as given, through ``teacher.encode`` (the model's own output, normalized
  or not), which the ``train`` recipes use;
- a :class:`TeacherCache`: each distinct text once, through
  :func:`~matryoshka.embeddings.cache.cached_encode` (float32 unit vectors, kept on disk by model and
  texts), which the static recipe uses on its large pair sets.

Example:
    >>> table = teacher_table([("a cat", "a dog")], model)  # doctest: +SKIP
    >>> table.shape  # doctest: +SKIP
    torch.Size([1, 2, 384])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from matryoshka.errors import InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class TeacherCache:
    """Where :func:`teacher_table` keeps the teacher's vectors between runs.

    Attributes:
        directory: the cache directory (``None``: encode the distinct texts without keeping them).
        teacher_name: what the teacher was loaded from; it keys the cache entries.
    """

    directory: str | os.PathLike[str] | None
    teacher_name: str | os.PathLike[str] | None


def row_columns(rows: Sequence[Sequence[str]]) -> int:
    """The number of texts in every row; :class:`InputError` when the rows differ."""
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise InputError(f"training rows must all have the same number of texts, found {sorted(widths)}")
    return widths.pop()


def teacher_table(
    rows: Sequence[Sequence[str]],
    teacher: SentenceTransformer,
    columns: int | None = None,
    show_progress_bar: bool = True,
    cache: TeacherCache | None = None,
) -> torch.Tensor:
    """The teacher's full-size embeddings of the first ``columns`` texts of every row, ``(rows, columns, dim)``.

    ``columns=None`` takes every text and requires rows of one width. Without ``cache`` the texts
    are encoded column by column, as given; with it each distinct text is encoded once, in the order
    of first appearance row by row (which keys the cache), and the table gathers its unit vectors.
    """
    columns = row_columns(rows) if columns is None else columns
    if cache is None:
        texts = [row[c] for c in range(columns) for row in rows]
        encoded = teacher.encode(
            texts, batch_size=64, convert_to_tensor=True, show_progress_bar=show_progress_bar, device="cpu"
        ).cpu()
        return torch.stack([encoded[c * len(rows) : (c + 1) * len(rows)] for c in range(columns)], dim=1)
    from matryoshka.embeddings.cache import cached_encode

    distinct = list(dict.fromkeys(t for row in rows for t in row[:columns]))
    position = {t: i for i, t in enumerate(distinct)}
    vectors = torch.from_numpy(np.ascontiguousarray(cached_encode(teacher, distinct, cache.directory, cache.teacher_name)))
    index = torch.tensor([[position[row[c]] for c in range(columns)] for row in rows], dtype=torch.long)
    return vectors[index]
