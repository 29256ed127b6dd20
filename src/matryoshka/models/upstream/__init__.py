"""Any OpenAI-compatible embeddings API as a model: the same ``encode`` surface as sentence-transformers.

- ``config``: :class:`UpstreamConfig`, where the API is and how to call it (the key is read from an
  environment variable the user names, and never stored, logged or echoed).
- ``client``: batching to the API's limits, bounded concurrency, timeouts, retries that honour
  ``Retry-After``.
- ``cache``: a content-addressed on-disk cache of full-size vectors (model + text hash -> vector).
- ``model``: :class:`UpstreamModel`, what :func:`matryoshka.models.loading.load_model` returns for an
  upstream, so encoding, adapting, indexing and serving do not know the difference.

Example:
    >>> from matryoshka.models.upstream import UpstreamConfig
    >>> from matryoshka import load_model, encode
    >>> model = load_model(upstream=UpstreamConfig("http://localhost:8080/v1", "bge-small", key_env="API_KEY"))
    >>> encode(model, ["a cat on a mat"], dim=64).shape    # doctest: +SKIP
    (1, 64)
"""

from typing import TYPE_CHECKING, Any

from matryoshka.models.upstream.config import UpstreamConfig, default_cache_dir

if TYPE_CHECKING:
    from matryoshka.models.upstream.cache import VectorCache
    from matryoshka.models.upstream.model import UpstreamModel, UpstreamStats, split_label

__all__ = ["UpstreamConfig", "UpstreamModel", "UpstreamStats", "VectorCache", "default_cache_dir", "split_label"]

#: Names imported on first use, so that reading an ``UpstreamConfig`` (the CLI's options, the server's
#: settings) does not import httpx.
_LAZY = {"UpstreamModel": "model", "UpstreamStats": "model", "split_label": "model", "VectorCache": "cache"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
