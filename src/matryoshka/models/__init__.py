"""Models: loading (hub names, the packaged model, static models), identity, and the runtime.

- ``loading``: :func:`load_model` and friends; a model is a sentence-transformers ``SentenceTransformer``.
- ``identity``: the one name and fingerprint of a model, used by caches and indexes.
- ``runtime``: ONNX/OpenVINO exports, cutting and keeping transformer layers, the fastest backend.

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
