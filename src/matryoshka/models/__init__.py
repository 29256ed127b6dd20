"""Models: loading (hub names, the packaged model, static models), identity, and the runtime.

- ``loading``: :func:`load_model` and friends; a model is a sentence-transformers ``SentenceTransformer`` (or an
  ``UpstreamModel``, with the same ``encode``).
- ``identity``: the one name and fingerprint of a model, used by caches and indexes.
- ``runtime``: ONNX/OpenVINO exports, cutting and keeping transformer layers, the fastest backend.
- ``upstream``: an OpenAI-compatible embeddings API as a model (``load_model(upstream=UpstreamConfig(...))``):
  batched, retried, its vectors cached on disk; imported on use (it pulls in httpx).

Example:
    >>> from matryoshka.models import load_model, model_dimension
    >>> model_dimension(load_model())
    384
"""

from matryoshka.models.loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    build_static_model,
    load_model,
    model_dimension,
    packaged_model_path,
    quiet_loading,
    resolve_model_name,
)

__all__ = [
    "DEFAULT_MODEL", "ModelLoadError", "build_static_model", "load_model", "model_dimension",
    "packaged_model_path", "quiet_loading", "resolve_model_name",
]
