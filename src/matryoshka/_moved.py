"""Old module paths, kept importable after the package was laid out by concept (see docs/architecture.md).

``import matryoshka.backends`` (now ``matryoshka.indexes``) and the other paths below still work: a
finder on ``sys.meta_path`` answers each old name with the module at its new home, once, with a
``DeprecationWarning`` that names the new path. Nothing inside the package uses the old names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old dotted path -> new dotted path
MOVED: dict[str, str] = {
    "matryoshka.adapt_cli": "matryoshka.cli.adapt",
    "matryoshka.backends": "matryoshka.indexes",
    "matryoshka.backends.base": "matryoshka.indexes.base",
    "matryoshka.backends.pgvector": "matryoshka.indexes.pgvector",
    "matryoshka.backends.qdrant": "matryoshka.indexes.qdrant",
    "matryoshka.cli_errors": "matryoshka.cli.errors",
    "matryoshka.cli_options": "matryoshka.cli.options",
    "matryoshka.compare": "matryoshka.experiments.compare",
    "matryoshka.data.errors": "matryoshka.errors",
    "matryoshka.losses": "matryoshka.training.losses",
    "matryoshka.model_identity": "matryoshka.models.identity",
    "matryoshka.retrieval.advisor": "matryoshka.experiments.advise",
    "matryoshka.retrieval.approximate": "matryoshka.indexes.faiss.approximate",
    "matryoshka.retrieval.cli": "matryoshka.cli.index",
    "matryoshka.retrieval.exact": "matryoshka.indexes.faiss.exact",
    "matryoshka.retrieval.index": "matryoshka.indexes.faiss.index",
    "matryoshka.retrieval.neighbours": "matryoshka.indexes.faiss.neighbours",
    "matryoshka.retrieval.prefixes": "matryoshka.indexes.faiss.prefixes",
    "matryoshka.retrieval.store": "matryoshka.indexes.faiss.store",
    "matryoshka.runtime": "matryoshka.models.runtime",
    "matryoshka.serving.api_errors": "matryoshka.serving.http.errors",
    "matryoshka.serving.cli": "matryoshka.cli.serve",
    "matryoshka.serving.demo_index": "matryoshka.serving.demo.index",
    "matryoshka.serving.demo_models": "matryoshka.serving.demo.models",
    "matryoshka.serving.middleware": "matryoshka.serving.http.middleware",
    "matryoshka.serving.protocol": "matryoshka.serving.http.header_deadline",
    "matryoshka.serving.render": "matryoshka.serving.demo.render",
    "matryoshka.static": "matryoshka.training.static",
    "matryoshka.static_cli": "matryoshka.cli.static",
    "matryoshka.top_layer": "matryoshka.training.top_layer",
    "matryoshka.vector_cache": "matryoshka.embeddings.cache",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new home is already executed."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
