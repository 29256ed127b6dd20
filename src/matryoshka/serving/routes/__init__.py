"""The HTTP routes, one router per group; :func:`~matryoshka.serving.app.create_app` includes them in this order.

Routes get the server's :class:`~matryoshka.serving.state.ServerState` through the
:data:`~matryoshka.serving.state.State` dependency.
"""

from fastapi import APIRouter

from matryoshka.serving.routes import demo, embeddings, health, models, search

__all__ = ["ROUTERS"]

#: The order is the OpenAPI schema's order of paths.
ROUTERS: tuple[APIRouter, ...] = (embeddings.router, models.router, search.router, health.router, demo.router)
