"""Helpers for the serving tests (no tests here): a small real corpus of WordNet glosses, and fixtures that
set and watch numpy's BLAS threads (the retrieval thread tests use them too)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# -- a small real corpus ---------------------------------------------------------------------------------


def wordnet_sample(n: int = 300) -> tuple[list[str], list[str]]:
    """``n`` real WordNet glosses, ids with their lemmas: from Debian's files or the staged JSON-lines copy."""
    from matryoshka.data.wordnet import JSONL_RELATIVE, find_source, load_glosses

    roots = [os.environ.get("MATRYOSHKA_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for root in roots:
        if root and (Path(root) / JSONL_RELATIVE).exists():
            return load_glosses(n, Path(root) / JSONL_RELATIVE)
    return load_glosses(n, find_source())


# -- numpy's BLAS threads --------------------------------------------------------------------------------


def numpy_blas_threads() -> list[int]:
    """Threads of the BLAS numpy's wheel ships, as threadpoolctl sees them now (empty: numpy uses another)."""
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]


def set_numpy_blas_threads(n: int) -> list[int]:
    """Set numpy's BLAS to ``n`` threads from a short-lived thread, so no thread keeps threadpoolctl's
    hold on OpenBLAS's one process-wide setting (the code under test must be free to change it)."""
    import threading

    from threadpoolctl import ThreadpoolController

    def apply() -> None:
        controller = ThreadpoolController().select(user_api="blas")
        controller.select(filepath=[c.filepath for c in controller.lib_controllers if "numpy" in c.filepath]).limit(limits=n)

    worker = threading.Thread(target=apply)
    worker.start()
    worker.join()
    return numpy_blas_threads()


@contextlib.contextmanager
def numpy_blas_at(n: int) -> Iterator[int]:
    """numpy's BLAS on ``n`` threads inside (whatever OMP_NUM_THREADS says), then as it was; skips the
    test where numpy does not use its wheel's OpenBLAS or OpenBLAS will not take ``n``."""
    before = numpy_blas_threads()
    if not before:
        pytest.skip("numpy does not use the OpenBLAS of its wheel here")
    try:
        if set_numpy_blas_threads(n) != [n]:
            pytest.skip(f"OpenBLAS would not take {n} threads here")
        yield n
    finally:
        set_numpy_blas_threads(before[0])


def watch_column_scans(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """numpy's BLAS threads seen inside every column-block scan from now on (threadpoolctl's view, in
    the call path, whichever thread scans)."""
    from matryoshka.indexes.faiss.exact import ColumnBlocks

    seen: list[list[int]] = []
    real = ColumnBlocks.top_k

    def top_k(self: ColumnBlocks, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(numpy_blas_threads())
        return real(self, queries, k)

    monkeypatch.setattr(ColumnBlocks, "top_k", top_k)
    return seen
