"""``python -m matryoshka.cli``: the same app as the ``matryoshka`` command."""

from matryoshka.cli.app import app

app()
