"""Encode a list of texts once per model and keep the full-size vectors on disk.

Benchmarks and the main job score many views of one encoding (prefixes, rotations, adaptors); on a
CPU the encoding is the expensive part (SciFact's 5,183 abstracts take minutes), so it is done once.
A cache entry is keyed by the model's fingerprint and a hash of the texts, and written atomically as
a plain ``.npy`` (never a pickle).

Example:
    >>> vectors = cached_encode(model, texts, "runs/cache", model_name="all-MiniLM-L6-v2")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.files import save_npy_atomic

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def cache_key(name: str | os.PathLike[str] | None) -> str:
    """A short hash of the model's one fingerprint (:func:`matryoshka.models.identity.model_fingerprint`):
    it changes when the model at a local ``name`` is retrained in place."""
    from matryoshka.models.identity import model_fingerprint, model_label

    return hashlib.sha256(model_fingerprint(model_label(name)).encode()).hexdigest()[:16]


def cached_encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str] | None,
    model_name: str | os.PathLike[str] | None,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Full-size unit vectors of ``texts`` by ``model``, read from ``cache_dir`` when encoded before.

    ``model_name`` is what ``model`` was loaded from (it keys the cache); ``cache_dir=None`` encodes
    without caching.
    """
    from matryoshka.embeddings.vectors import encode

    if cache_dir is None:
        return encode(model, list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar)
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    key = f"{cache_key(model_name)}-{digest.hexdigest()[:16]}-{len(texts)}"
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape[0] == len(texts):
                return vectors
        except (ValueError, OSError):
            pass  # a damaged entry is encoded again and overwritten
    vectors = encode(model, list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar)
    save_npy_atomic(path, vectors)
    return vectors
