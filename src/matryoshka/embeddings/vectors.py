"""Encode texts at any Matryoshka dimension: truncate, re-normalize, optionally quantize.

A dimension is a view of the full vector: the first ``dim`` values, scaled back to unit length so
that dot product equals cosine again (truncated vectors that silently lose unit norm are a common
pitfall). Quantization to int8 or binary follows sentence-transformers' ``quantize_embeddings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from matryoshka.errors import DimensionError, InputError

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

#: The smallest prefix a default ladder goes down to.
SMALLEST_PREFIX = 16


def dimension_ladder(full_dim: int) -> list[int]:
    """The dimensions to score a ``full_dim`` model at by default, taken from its size: the full size, then
    every power of two below it down to :data:`SMALLEST_PREFIX`, largest first.

    Example:
        >>> dimension_ladder(768)
        [768, 512, 256, 128, 64, 32, 16]
        >>> dimension_ladder(384)
        [384, 256, 128, 64, 32, 16]
    """
    full_dim = check_dim(full_dim, full_dim)
    powers = [2**k for k in range(full_dim.bit_length(), -1, -1) if SMALLEST_PREFIX <= 2**k < full_dim]
    return [full_dim, *powers]


def check_dim(dim: int | None, full_dim: int) -> int:
    """Validate ``dim`` against ``full_dim`` and return it (``None`` means the full size)."""
    if dim is None:
        return full_dim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise DimensionError(f"dim must be an integer, got {dim!r}")
    if dim <= 0:
        raise DimensionError(f"dim must be positive, got {dim}")
    if dim > full_dim:
        raise DimensionError(f"dim={dim} is larger than the model's {full_dim} dimensions")
    return int(dim)


BINARY_PRECISIONS = ("binary", "ubinary")


def check_binary_dim(dim: int, precision: str) -> None:
    """Binary precisions pack 8 dimensions per byte; refuse a ``dim`` that would need padding bits.

    The same rule as a binary funnel stage (:class:`matryoshka.retrieval.Stage`), so a code's width is
    always exactly ``dim / 8`` bytes and a padded last byte never takes part in a Hamming distance.
    """
    if precision in BINARY_PRECISIONS and dim % 8:
        raise DimensionError(f"{precision} precision needs a dim that is a multiple of 8, got {dim}")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (a 2-d array) as float32 rows scaled to unit length; rows of all zeros stay zero.

    The one row normalization of the package: truncation, adaptors, and every index engine use it.
    """
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def truncate(vectors: np.ndarray, dim: int | None = None, normalize: bool = True) -> np.ndarray:
    """Keep the first ``dim`` values of each row and, by default, scale each row to unit length.

    Rows of all zeros stay zero instead of becoming NaN.

    Example:
        >>> truncate(np.array([[3.0, 4.0, 12.0]]), dim=2)
        array([[0.6, 0.8]], dtype=float32)
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"expected a 2-d array of vectors, got shape {array.shape}")
    dim = check_dim(dim, array.shape[1])
    prefix: np.ndarray = np.ascontiguousarray(array[:, :dim])
    if normalize:
        prefix = unit_rows(prefix)
    return prefix.astype(np.float32, copy=False)


def quantize(
    vectors: np.ndarray,
    precision: Precision = "float32",
    calibration: np.ndarray | None = None,
) -> np.ndarray:
    """Convert unit vectors to ``precision``.

    ``int8``/``uint8`` scale each dimension by its range in ``calibration`` (default: ``vectors``
    itself); ``binary``/``ubinary`` keep one sign bit per dimension, packed 8 per byte.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return vectors.astype(np.float32, copy=False)
    if precision == "float16":
        return vectors.astype(np.float16)
    check_binary_dim(int(np.shape(vectors)[-1]), precision)
    if precision in BINARY_PRECISIONS:
        # sentence-transformers' packing (sign bits, 8 per byte; binary shifted by -128 into int8), done
        # here with numpy so that a server without a local model need not import torch for it.
        packed = np.packbits(np.asarray(vectors) > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    from sentence_transformers.util.quantization import quantize_embeddings

    return np.asarray(quantize_embeddings(vectors, precision=precision, calibration_embeddings=calibration))


def encode(
    model: AnyModel,
    texts: str | Sequence[str],
    dim: int | None = None,
    precision: Precision = "float32",
    normalize: bool = True,
    batch_size: int = 64,
    show_progress_bar: bool | None = None,
    prompt_name: str | None = None,
) -> np.ndarray:
    """Encode ``texts`` with ``model`` and return vectors of ``dim`` dimensions.

    Args:
        model: a loaded sentence-transformers model, or an upstream API's
            (:class:`~matryoshka.models.upstream.UpstreamModel`).
        texts: one text or a sequence of texts.
        dim: leading dimensions to keep; ``None`` keeps all. Must be in ``1..model dimension``.
        precision: ``float32`` (default), ``float16``, ``int8``, ``uint8``, ``binary`` or ``ubinary``.
        normalize: scale each truncated vector to unit length (default), so dot product is cosine.
        batch_size: texts per forward pass.
        show_progress_bar: ``None`` shows one for more than 1,000 texts.
        prompt_name: a prompt the model defines, e.g. ``"query"``.

    Returns:
        An array of shape ``(len(texts), dim)``, or ``(dim,)`` for a single string. Binary precisions
        pack 8 dimensions per byte, so their width is ``dim / 8``.

    Raises:
        DimensionError: ``dim`` is not in ``1..model dimension``, or a binary precision gets a
            ``dim`` that is not a multiple of 8.

    Example:
        >>> vectors = encode(model, ["first text", "second text"], dim=64)
        >>> float(np.linalg.norm(vectors[0]))  # unit length after truncation
        1.0
    """
    from matryoshka.models.loading import model_dimension

    single = isinstance(texts, str)
    batch: list[str] = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, str) for t in batch):
        raise InputError("texts must be strings")
    dim = check_dim(dim, model_dimension(model))
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_binary_dim(dim, precision)
    if not batch:
        width = dim // 8 if precision in BINARY_PRECISIONS else dim
        return np.zeros((0, width), dtype=np.float32)
    full = model.encode(
        batch,
        batch_size=batch_size,
        convert_to_numpy=True,
        show_progress_bar=len(batch) > 1000 if show_progress_bar is None else show_progress_bar,
        prompt_name=prompt_name,
    )
    vectors = truncate(full, dim, normalize=normalize)
    out = quantize(vectors, precision)
    return out[0] if single else out
