"""The one exception tree: every failure the toolkit raises on purpose is a :class:`MatryoshkaError`.

The command line turns any of them into a one-line ``error: ...`` and exit status 1
(:mod:`matryoshka.cli.errors`); the server answers them in OpenAI's error shape. Handlers catch this
tree (and ``OSError``) only, so anything else is a bug and keeps its traceback. Classes also subclass
the builtin older callers caught (``ValueError`` for bad input, ``RuntimeError`` for engines and
models, ``ImportError`` for a missing extra), so ``except ValueError`` keeps working::

    MatryoshkaError
    ├── InputError (ValueError)             an argument, option or request is invalid
    │   ├── DataError                       a data file is missing or malformed (file, line)
    │   │   └── WordNetNotFound             no WordNet files for the demo corpus
    │   ├── DimensionError                  not a valid prefix length of the vectors
    │   ├── AdaptError                      an adaptor cannot be fitted, loaded or applied
    │   └── StaticBuildError                a static model cannot be built with these settings
    ├── ModelError (RuntimeError)           a model cannot be found, loaded, or does not match
    │   ├── ModelLoadError
    │   │   └── RuntimeBackendError         ONNX/OpenVINO missing or cannot export this model
    │   └── UpstreamError                   an upstream embeddings API failed (HTTP ``status`` 502/503/504)
    ├── IndexStoreError (RuntimeError)      an index cannot be opened, read or written
    │   ├── IndexCorruptError               an index directory fails its checks
    │   ├── StaleLogError                   a vector log's index was replaced by another writer
    │   └── EngineError                     PostgreSQL or Qdrant refused or failed (EngineError: old name)
    ├── MissingDependencyError (ImportError) an optional extra is not installed (names the pip extra)
    └── ServingError (RuntimeError)         the server cannot do what was asked now
        ├── StartupError                    the server cannot start
        ├── BatcherClosed                   the batcher closed before the request ran
        ├── QueueFull                       the queue is full; retry after ``retry_after`` seconds
        ├── ClientGone                      the client hung up while its request waited
        └── APIError                        an answer in OpenAI's error shape (serving.http.errors)
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AdaptError", "BackendError", "BatcherClosed", "ClientGone", "DataError", "DimensionError", "EngineError",
    "IndexCorruptError", "IndexStoreError", "InputError", "MatryoshkaError", "MissingDependencyError",
    "ModelError", "ModelLoadError", "QueueFull", "RuntimeBackendError", "ServingError", "StaleLogError",
    "StartupError", "StaticBuildError", "UpstreamError", "WordNetNotFound",
]


class MatryoshkaError(Exception):
    """Base of every error the toolkit raises on purpose; its message is one line for the user."""


class InputError(MatryoshkaError, ValueError):
    """An argument or request is invalid (bad ids, shapes, filters, stages...)."""


class DataError(InputError):
    """A data file is missing or malformed; the message names the file and, where known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.path = Path(path) if path is not None else None
        self.line = line


class DimensionError(InputError):
    """A requested dimension is not a valid prefix length of the model's vectors."""


class IndexStoreError(MatryoshkaError, RuntimeError):
    """An index (a directory or a database table/collection) cannot be opened, read or written."""


class IndexCorruptError(IndexStoreError):
    """An index directory is incomplete, truncated, edited or inconsistent with its manifest."""


class EngineError(IndexStoreError):
    """The engine behind an index refused or failed an operation (with the engine's own message)."""


#: The name :class:`EngineError` had while "backend" also meant the index engines.
BackendError = EngineError


class StaleLogError(IndexStoreError):
    """The index a vector log streams into was replaced by another writer (or cannot be checked)."""


class ModelError(MatryoshkaError, RuntimeError):
    """A model cannot be found or loaded, or it is not the model an index was built with."""


class ModelLoadError(ModelError):
    """A model name or path cannot be loaded."""


class RuntimeBackendError(ModelLoadError):
    """An inference backend is missing or cannot export this model."""


class UpstreamError(ModelError):
    """An upstream embeddings API failed after its retries; ``status`` is the HTTP answer it maps to.

    502: the upstream answered badly (a 5xx, malformed JSON, wrong vector sizes or counts); 503: it kept
    answering 429, or cannot be reached; 504: it timed out. The message names the upstream's URL and
    what went wrong, never its key.
    """

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class WordNetNotFound(DataError):
    """Neither the Debian WordNet files nor a staged JSON-lines copy could be found."""


class AdaptError(InputError):
    """An adaptor cannot be fitted, loaded or applied to these vectors."""


class StaticBuildError(InputError):
    """The static model cannot be built with these settings (bad pca_dims, no transformer module...)."""


class MissingDependencyError(MatryoshkaError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""


class ServingError(MatryoshkaError, RuntimeError):
    """The server cannot do what was asked at this moment."""


class StartupError(ServingError):
    """The server cannot start; the message is one line that names the cause."""


class BatcherClosed(ServingError):
    """The batcher was closed (server shutting down) before the request ran."""


class QueueFull(ServingError):
    """The queue already holds ``max_queued_texts`` texts; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(ServingError):
    """The client hung up while its request waited for the model; its texts were taken off the queue."""
