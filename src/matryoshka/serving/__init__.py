"""Serve Matryoshka embeddings: an OpenAI-compatible embeddings API, funnel search and a demo page.

Example:
    >>> from matryoshka.serving import ServeConfig, create_app
    >>> app = create_app(ServeConfig())          # loads the packaged all-MiniLM-L6-v2
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)   or: matryoshka serve
"""

from matryoshka.serving.app import APIError, create_app
from matryoshka.serving.batching import MicroBatcher
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.runner import ServerThread

__all__ = ["APIError", "MicroBatcher", "ServeConfig", "ServerThread", "create_app"]
