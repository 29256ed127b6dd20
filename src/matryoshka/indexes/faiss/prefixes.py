"""Unit-length prefixes of stored rows: the view every stage of a funnel scores.

A stage reads the first ``dim`` values of each stored vector re-normalized to unit length, so its
inner product is the prefix's cosine. They are derived block by block, so a view of a large index
never needs a second full-size float copy at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from matryoshka.embeddings import unit_rows
from matryoshka.errors import InputError

#: Rows per block when deriving views.
BLOCK_ROWS = 65_536


def finite_unit_rows(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero) as ``dtype``, checked finite, block by block.

    Raises:
        InputError: a value is NaN or infinite.
    """
    out = np.empty(vectors.shape, dtype=dtype)
    for start in range(0, len(vectors), BLOCK_ROWS):
        block = np.asarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
        if not np.isfinite(block).all():
            raise InputError("vectors contain NaN or infinity")
        out[start : start + len(block)] = unit_rows(block)
    return out


def prefix_blocks(vectors: np.ndarray, dim: int) -> Iterable[np.ndarray]:
    """The unit ``dim``-prefixes of ``vectors``, :data:`BLOCK_ROWS` rows at a time, as float32."""
    for start in range(0, len(vectors), BLOCK_ROWS):
        yield finite_unit_rows(vectors[start : start + BLOCK_ROWS, :dim], "float32")


def prefixes(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The unit ``dim``-prefixes of ``vectors`` as one float32 array (``(0, dim)`` for no rows)."""
    return np.concatenate(list(prefix_blocks(vectors, dim))) if len(vectors) else np.zeros((0, dim), np.float32)
