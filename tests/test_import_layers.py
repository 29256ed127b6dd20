"""The layers run one way: what importing a module pulls in, checked in a fresh interpreter each."""

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
    from matryoshka.data.errors import DataError
    from matryoshka.data.wordnet import WordNetNotFound
    from matryoshka.embeddings.vectors import DimensionError
    from matryoshka.errors import EngineError, IndexCorruptError, IndexStoreError, MatryoshkaError, ModelError
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
