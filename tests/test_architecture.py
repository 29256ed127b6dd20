"""The architecture holds: layers run one way (what importing a module pulls in, checked in a fresh
interpreter each; import-linter checks the rest in `make lint`), every exception the package defines is
in the one tree, and handlers catch only that tree, so a bug keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    """Module names in ``sys.modules`` after running ``statement`` in a new Python process."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("module", ["matryoshka.indexes.pgvector", "matryoshka.indexes.qdrant",
                                    "matryoshka.retrieval.protocol", "matryoshka.retrieval.types"])
def test_database_engines_do_not_load_faiss(module):
    modules = loaded_after(f"import {module}")
    assert "faiss" not in modules and "matryoshka.indexes.faiss.index" not in modules


def test_ingestion_and_serving_import_no_cli_module():
    for module in ("matryoshka.ingest", "matryoshka.serving.app", "matryoshka.serving.demo.index",
                   "matryoshka.indexes"):
        modules = loaded_after(f"import {module}")
        cli = {m for m in modules if m.endswith(".cli") or m == "typer"}
        assert not cli, (module, cli)


def test_one_exception_hierarchy():
    from matryoshka.adapt import AdaptError
    from matryoshka.data.wordnet import WordNetNotFound
    from matryoshka.embeddings.vectors import DimensionError
    from matryoshka.errors import (
        DataError,
        EngineError,
        IndexCorruptError,
        IndexStoreError,
        MatryoshkaError,
        ModelError,
    )
    from matryoshka.models.loading import ModelLoadError
    from matryoshka.serving.startup import StartupError

    for kind in (DataError, WordNetNotFound, DimensionError, IndexStoreError, IndexCorruptError, EngineError,
                 ModelError, ModelLoadError, AdaptError, StartupError):
        assert issubclass(kind, MatryoshkaError), kind
    assert issubclass(DataError, ValueError) and issubclass(EngineError, RuntimeError)  # old callers' excepts


def test_every_engine_implements_the_protocol():
    from matryoshka.indexes.faiss.index import FunnelIndex
    from matryoshka.indexes.pgvector import PgVectorIndex
    from matryoshka.indexes.qdrant import QdrantIndex
    from matryoshka.retrieval.protocol import VectorIndex

    for engine in (FunnelIndex, PgVectorIndex, QdrantIndex):
        assert issubclass(engine, VectorIndex) and not engine.__abstractmethods__, engine


def test_the_cli_prints_one_line_for_an_expected_error(tmp_path):
    from typer.testing import CliRunner

    from matryoshka.cli.app import app

    result = CliRunner().invoke(app, ["index", "info", "postgresql://nobody@127.0.0.1:1/db?connect_timeout=2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1"), lines
    corrupt = tmp_path / "index"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{")
    result = CliRunner().invoke(app, ["index", "search", str(corrupt), "x"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "Traceback" not in result.output


def _package_modules() -> list[str]:
    import pkgutil

    import matryoshka

    return [m.name for m in pkgutil.walk_packages(matryoshka.__path__, "matryoshka.") if m.name != "matryoshka.cli.__main__"]


def test_every_exception_the_package_defines_is_in_the_tree():
    import importlib
    import inspect

    from matryoshka.errors import MatryoshkaError

    outside = []
    for name in _package_modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed here
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and not issubclass(cls, MatryoshkaError):
                outside.append(f"{name}.{cls.__name__}")
    assert not outside, outside


def test_builtin_raises_say_why():
    """A ``raise ValueError/TypeError`` left in src/ carries a comment (on its line or the one above) that
    says why it is not a tree error; everything raised for bad input is a MatryoshkaError."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "matryoshka"
    unexplained = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if re.search(r"raise (ValueError|TypeError)\b", line):
                above = lines[number - 1].strip() if number else ""
                if "#" not in line and not above.startswith("#"):
                    unexplained.append(f"{path.relative_to(root)}:{number + 1}: {line.strip()}")
    assert not unexplained, unexplained


def test_a_bug_in_a_command_keeps_its_traceback():
    import typer
    from typer.testing import CliRunner

    from matryoshka.cli.errors import HandledGroup
    from matryoshka.errors import InputError

    app = typer.Typer(cls=HandledGroup)

    @app.command()
    def broken(kind: str) -> None:
        raise (InputError if kind == "input" else ValueError)(f"{kind} went wrong")

    @app.command()
    def other() -> None: ...

    expected = CliRunner().invoke(app, ["broken", "input"])
    assert expected.exit_code == 1 and expected.output.strip() == "error: input went wrong"
    bug = CliRunner().invoke(app, ["broken", "bug"])
    assert isinstance(bug.exception, ValueError) and "error:" not in bug.output  # not reported as the user's fault
