"""Embeddings at any dimension: encode, truncate (re-normalized prefixes), quantize; the vector cache.

- ``vectors``: :func:`encode`, :func:`truncate`, :func:`quantize`, the dimension ladder and checks.
- ``cache``: full-size vectors of a corpus cached on disk by model fingerprint and text hash.

Example:
    >>> from matryoshka.embeddings import encode, truncate
    >>> vectors = encode(model, ["a cat on a mat"])          # full size, unit rows
    >>> truncate(vectors, 64).shape
    (1, 64)
"""

from matryoshka.embeddings.vectors import (
    BINARY_PRECISIONS,
    Precision,
    check_binary_dim,
    check_dim,
    dimension_ladder,
    encode,
    quantize,
    truncate,
    unit_rows,
)

__all__ = [
    "BINARY_PRECISIONS", "Precision", "check_binary_dim", "check_dim", "dimension_ladder", "encode",
    "quantize", "truncate", "unit_rows",
]
