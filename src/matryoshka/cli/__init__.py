"""The ``matryoshka`` command line: one Typer app, one module per command group.

``app`` (train, encode, evaluate, compare, advise, ...), ``adapt``, ``static``, ``index``, ``serve``;
``errors`` is the one error handler and ``options`` the options commands share.
"""

from matryoshka.cli.app import app

__all__ = ["app"]
