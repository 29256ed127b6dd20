"""The one command-line error handler: every expected failure becomes ``error: <one line>`` and exit status 1.

Every Typer app of the toolkit is created with ``cls=HandledGroup``, so a
:class:`~matryoshka.errors.MatryoshkaError` (or an ``OSError``: a file that cannot be read or written)
from any command is reported without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from matryoshka.errors import MatryoshkaError

__all__ = ["EXPECTED", "HandledGroup", "fail", "one_line_error"]

#: What a command may fail with on bad input or an unreachable engine (the tree, and files).
EXPECTED: tuple[type[BaseException], ...] = (MatryoshkaError, OSError)


def one_line_error(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return text.splitlines()[0] if text else type(exc).__name__


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 1."""
    typer.echo(f"error: {message.splitlines()[0] if message else 'unknown error'}", err=True)
    raise typer.Exit(1)


class HandledGroup(TyperGroup):
    """A Typer command group whose commands' expected errors print one line and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except EXPECTED as exc:
            fail(one_line_error(exc))
