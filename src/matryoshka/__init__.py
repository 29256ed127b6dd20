"""matryoshka: train, encode, evaluate and search with Matryoshka embedding models.

A Matryoshka model front-loads information into the first dimensions of each embedding, so a
384-d vector can be cut to 64 or 32 dimensions with little loss. This package trains such models
with sentence-transformers, encodes at any dimension, and measures what each dimension keeps.

Example:
    >>> from matryoshka import load_model, encode
    >>> model = load_model()                      # the packaged all-MiniLM-L6-v2, no download
    >>> vectors = encode(model, ["a cat on a mat"], dim=64)
    >>> vectors.shape
    (1, 64)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matryoshka import _moved
from matryoshka._lazy import lazy_getattr

if TYPE_CHECKING:
    from matryoshka.embeddings.vectors import Precision, encode, truncate
    from matryoshka.models.loading import DEFAULT_MODEL, build_static_model, load_model
    from matryoshka.models.upstream.config import UpstreamConfig

__version__ = "0.1.0"

_moved.install()

# Imported on first use, so that `matryoshka --help` does not wait for torch.
_LAZY = {
    "Precision": "matryoshka.embeddings.vectors",
    "encode": "matryoshka.embeddings.vectors",
    "truncate": "matryoshka.embeddings.vectors",
    "DEFAULT_MODEL": "matryoshka.models.loading",
    "build_static_model": "matryoshka.models.loading",
    "load_model": "matryoshka.models.loading",
    "UpstreamConfig": "matryoshka.models.upstream.config",
}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "DEFAULT_MODEL", "Precision", "UpstreamConfig", "build_static_model", "encode", "load_model", "truncate", "__version__",
]
