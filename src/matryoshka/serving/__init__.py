"""Serve Matryoshka embeddings: an OpenAI-compatible embeddings API, funnel search and a demo page.

Example:
    >>> from matryoshka.serving import ServeConfig, create_app
    >>> app = create_app(ServeConfig())          # loads the packaged all-MiniLM-L6-v2
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)   or: matryoshka serve
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matryoshka._lazy import lazy_getattr

if TYPE_CHECKING:
    from matryoshka.serving.app import APIError, create_app
    from matryoshka.serving.batching import MicroBatcher
    from matryoshka.serving.config import ServeConfig
    from matryoshka.serving.runner import ServerThread

# Imported on first use: the CLI reads the demo's defaults from this package without loading the app.
__getattr__ = lazy_getattr(__name__, {
    "APIError": "matryoshka.serving.app", "create_app": "matryoshka.serving.app",
    "MicroBatcher": "matryoshka.serving.batching", "ServeConfig": "matryoshka.serving.config",
    "ServerThread": "matryoshka.serving.runner",
})

__all__ = ["APIError", "MicroBatcher", "ServeConfig", "ServerThread", "create_app"]
