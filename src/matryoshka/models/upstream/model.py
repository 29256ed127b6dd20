"""The upstream API as a model with sentence-transformers' ``encode`` surface.

:class:`UpstreamModel` answers from the vector cache first and sends only the texts it lacks, each
distinct text once, so encoding, adapting, indexing and serving code does not know it talks to an API.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from matryoshka.errors import InputError, UpstreamError
from matryoshka.models.upstream.cache import VectorCache, text_key
from matryoshka.models.upstream.client import UpstreamClient, UpstreamStats
from matryoshka.models.upstream.config import UpstreamConfig

__all__ = ["PROBE_TEXT", "UpstreamModel", "UpstreamStats", "split_label"]

#: What :meth:`UpstreamModel.get_embedding_dimension` sends when nothing has told it the width yet.
PROBE_TEXT = "dimension probe"


def split_label(label: str) -> tuple[str, str] | None:
    """``(url, model)`` of an upstream's label ``<http(s) url>#<model>``; ``None`` for any other model name."""
    url, mark, model = label.rpartition("#")
    return (url, model) if mark and model and url.startswith(("http://", "https://")) else None


class UpstreamModel:
    """Full-size vectors from an OpenAI-compatible API, cached on disk, in input order.

    Example:
        >>> model = UpstreamModel(UpstreamConfig("http://localhost:8080/v1", "bge-small"))   # doctest: +SKIP
        >>> model.encode(["a cat", "a dog"]).shape                                           # doctest: +SKIP
        (2, 384)
    """

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.stats = UpstreamStats()
        self._stats_lock = threading.Lock()
        self._client = UpstreamClient(config, self.stats)  # reads the key: a missing variable fails here
        self._cache: VectorCache | None = None
        try:
            if config.cache_dir is not None:
                self._cache = VectorCache(config.cache_dir, config.label)
                self._client.dim = self._cache.dim()
                self._client.dim_source = (f"the size cached in {self._cache.path}; if the model changed, delete "
                                           "that file or use --no-cache")
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        cache = f", cache={str(self._cache.path)!r}" if self._cache is not None else ", cache=None"
        return f"UpstreamModel({self._client.where!r}, model={self.config.model!r}{cache})"

    def __enter__(self) -> UpstreamModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        """The model's identity, as indexes record it: ``<url>#<model>``."""
        return self.config.label

    @property
    def cache(self) -> VectorCache | None:
        """The vector cache (``None`` when turned off)."""
        return self._cache

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        prompt_name: str | None = None,
        normalize_embeddings: bool = False,
        **ignored: Any,
    ) -> np.ndarray:
        """Full-size float32 rows of ``sentences`` in input order (one row for a single string).

        ``batch_size`` and ``show_progress_bar`` are accepted for sentence-transformers' sake: calls are
        sized by the config's ``batch_size`` and ``max_chars`` (the upstream's limits), not the caller's.
        ``normalize_embeddings`` scales rows to unit length.

        Raises:
            InputError: a text is not a string, or a ``prompt_name`` is given (an API has no prompts:
                put the prefix in the texts).
            UpstreamError: the upstream failed after its retries (``status`` 502, 503 or 504).
        """
        if prompt_name is not None:
            raise InputError(f"an upstream model has no prompts (got prompt_name={prompt_name!r}); "
                             "put the prefix in the texts")
        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if isinstance(sentences, str) else list(sentences)
        if not all(isinstance(text, str) for text in texts):
            raise InputError("texts must be strings")
        if not texts:
            return np.zeros((0, self.get_embedding_dimension()), dtype=np.float32)
        distinct = list(dict.fromkeys(texts))
        vectors = self._vectors(distinct)
        row_of = {text: row for row, text in enumerate(distinct)}
        out = vectors[[row_of[text] for text in texts]]
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms == 0, 1.0, norms)
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out[0] if single else out

    def remembered(self, texts: Sequence[str]) -> np.ndarray | None:
        """Full-size rows of ``texts`` if the cache holds every one in memory, else ``None``: no call, no
        file read, so a server can answer a repeated text on its event loop."""
        if self._cache is None or not texts:
            return None
        rows = self._cache.remembered([text_key(text) for text in texts])
        if rows is None or (self._client.dim is not None and any(len(row) != self._client.dim for row in rows)):
            return None
        with self._stats_lock:
            self.stats.cache_hits += len(set(texts))
        return np.stack(rows)

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """Rows of distinct ``texts``: cache hits, then the misses from the upstream (cached as they come)."""
        cache = self._cache
        keys = [text_key(text) for text in texts] if cache is not None else []
        found = cache.get(keys) if cache is not None else {}
        if cache is not None:
            with self._stats_lock:  # a server encodes from several threads
                self.stats.cache_hits += len(found)
                self.stats.cache_misses += len(texts) - len(found)
        rows: list[np.ndarray | None] = [found.get(key) for key in keys] if keys else [None] * len(texts)
        missing = [row for row, vector in enumerate(rows) if vector is None]
        widths = {len(vector) for vector in found.values()}
        expected = self._client.dim
        if cache is not None and widths and (len(widths) > 1 or (expected is not None and widths != {expected})):
            raise UpstreamError(f"the vector cache {cache.path} holds vectors of another size than the upstream's; "
                                "delete it or use --no-cache", 502)
        for positions, answered in self._client.embed([texts[row] for row in missing]):
            if cache is not None:
                cache.put(((keys[missing[p]], v) for p, v in zip(positions, answered)), answered.shape[1])
            for p, vector in zip(positions, answered):
                rows[missing[p]] = vector
        if self._client.dim is None and widths:
            self._client.dim = widths.pop()
        return np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def get_embedding_dimension(self) -> int:
        """The width of the upstream's vectors: known from an answer or the cache, else asked once
        (one short text, cached like any other)."""
        if self._client.dim is None:
            self.encode([PROBE_TEXT])
        assert self._client.dim is not None
        return self._client.dim

    def close(self) -> None:
        """Close the HTTP connections, the call threads and the cache."""
        self._client.close()
        if self._cache is not None:
            self._cache.close()
