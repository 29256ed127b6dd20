"""Every engine raises the toolkit's error tree for bad input, and a missing client library names its extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from matryoshka.errors import DimensionError, IndexCorruptError, InputError, MissingDependencyError
from matryoshka.indexes import backend_kind, open_index
from matryoshka.indexes.base import check_batch, funnel_shape
from matryoshka.indexes.faiss.index import FunnelIndex
from matryoshka.retrieval.stages import parse_stages


def test_open_index_refuses_an_unknown_scheme_and_float16_outside_faiss() -> None:
    with pytest.raises(InputError, match="unknown index scheme 'ftp'"):
        backend_kind("ftp://host/x")
    with pytest.raises(InputError, match="non-empty string"):
        open_index("  ")
    with pytest.raises(InputError, match="qdrant stores float32 vectors"):
        open_index("qdrant://localhost/docs", dim=8, storage="float16")


@pytest.mark.parametrize(("module", "url", "extra"), [
    ("matryoshka.indexes.pgvector", "postgresql://localhost/db", "postgres"),
    ("matryoshka.indexes.qdrant", "qdrant://localhost/docs", "qdrant"),
])
def test_a_missing_client_library_is_a_missing_dependency(monkeypatch, module: str, url: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails as if its client were not installed
    with pytest.raises(MissingDependencyError, match=rf"pip install 'matryoshka\[{extra}\]'"):
        open_index(url, dim=8)


def test_faiss_index_bad_input_is_an_input_error(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    index = FunnelIndex.from_vectors(vectors, ["a", "b", "c", "d"])
    with pytest.raises(InputError, match="NaN or infinity"):
        FunnelIndex.from_vectors(np.full((1, 8), np.nan, np.float32), ["x"])
    with pytest.raises(InputError, match="appears more than once"):
        FunnelIndex.from_vectors(vectors[:2], ["x", "x"])
    with pytest.raises(InputError, match="already in the index"):
        index.add(vectors[:1], ["a"])
    with pytest.raises(InputError, match="k must be a positive integer"):
        index.search(vectors[:1], k=0)
    with pytest.raises(DimensionError, match="queries have 4 dims"):
        index.search(vectors[:1, :4])
    index.save(tmp_path / "ix")
    with pytest.raises(DimensionError, match="holds 8-dim vectors, not 16"):
        FunnelIndex.open(tmp_path / "ix", dim=16)
    with pytest.raises(DimensionError, match="needs its vector dimension"):
        FunnelIndex.open(tmp_path / "new")
    (tmp_path / "ix" / "manifest.json").write_text("{}")
    with pytest.raises(IndexCorruptError):
        FunnelIndex.open(tmp_path / "ix")


def test_shared_write_checks_are_input_errors() -> None:
    with pytest.raises(InputError, match="zero vector"):
        check_batch(["a"], np.zeros((1, 4), np.float32), 4)
    with pytest.raises(InputError, match="shape"):
        check_batch(["a"], np.ones((1, 3), np.float32), 4)
    with pytest.raises(InputError, match="one shortlist stage"):
        funnel_shape(parse_stages("8:float32:40,16:float32:20,full:float32:10"), 32)


def test_check_batch_returns_unit_float32_rows() -> None:
    _, rows, _, _ = check_batch(["a", "b"], np.array([[3.0, 4.0], [0.0, 2.0]]), 2)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


def test_engine_url_and_query_checks_are_input_errors() -> None:
    from matryoshka.indexes.pgvector.connection import parse_url as pg_url
    from matryoshka.indexes.pgvector.queries import query_rows
    from matryoshka.indexes.qdrant import parse_url as qdrant_url

    with pytest.raises(InputError, match="postgresql:// URL string"):
        pg_url(123)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="names table= more than once"):
        pg_url("postgresql://h/db?table=a&table=b")
    with pytest.raises(DimensionError, match="queries must have 4 dims"):
        query_rows(np.ones((1, 3), np.float32), 4)
    with pytest.raises(InputError, match="zero query"):
        query_rows(np.zeros((1, 4), np.float32), 4)
    with pytest.raises(InputError, match="no host given"):
        qdrant_url("qdrant:///docs")
