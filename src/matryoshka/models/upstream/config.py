"""Where an upstream embeddings API is and how to call it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from matryoshka.errors import InputError

__all__ = ["UpstreamConfig", "default_cache_dir", "public_url"]


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment: what messages may show of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def default_cache_dir() -> Path:
    """``$MATRYOSHKA_CACHE/upstream``, else ``~/.cache/matryoshka/upstream``."""
    root = os.environ.get("MATRYOSHKA_CACHE")
    return Path(root) / "upstream" if root else Path.home() / ".cache" / "matryoshka" / "upstream"


@dataclass(frozen=True)
class UpstreamConfig:
    """An OpenAI-compatible ``/embeddings`` endpoint, and the limits to call it within.

    Attributes:
        url: the API's base URL, e.g. ``http://host:8080/v1`` (``/embeddings`` is appended).
        model: the model name sent with every call.
        key_env: the name of the environment variable holding the API key (``None``: no key). The key
            itself is read when the client opens and is never part of this object.
        batch_size: inputs per call (text-embeddings-inference accepts 32 by default).
        max_chars: characters per call, summed over its inputs.
        concurrency: calls in flight at once.
        timeout: seconds one call may take before it is retried.
        retries: further tries after a 429, a 5xx, a timeout or a dropped connection.
        cache_dir: the vector cache's directory; ``None`` turns the cache off.
    """

    url: str
    model: str
    key_env: str | None = None
    batch_size: int = 32
    max_chars: int = 100_000
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    cache_dir: Path | None = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            # The URL becomes the model's label (index metadata, /v1/models, logs): a secret in it would spread.
            raise InputError(f"--upstream must be a plain base URL, without user info, query or fragment "
                             f"(got {public_url(self.url)!r} with them); pass a key with --upstream-key-env")

    @property
    def label(self) -> str:
        """The model's identity, recorded by indexes and matched by the server: ``<url>#<model>``."""
        return f"{self.url.rstrip('/')}#{self.model}"
