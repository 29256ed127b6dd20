"""Small FAISS scans run on one OpenMP thread: on a small index, FAISS's thread hand-off cost ~24 ms per
binary or int8 search on a busy 2-core machine against ~0.05 ms for the scan itself (the demo's "binary
16-dim: 28 ms, full size: 0.13 ms" on 500 glosses). Checked by the thread setting FAISS sees, not by time."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import matryoshka.retrieval.exact as exact_module
from matryoshka.retrieval import FunnelIndex, Stage


@pytest.fixture
def calls(monkeypatch):
    seen: list[int] = []
    real = faiss.omp_set_num_threads

    def record(n: int) -> None:
        seen.append(n)
        real(n)

    monkeypatch.setattr(faiss, "omp_set_num_threads", record)
    return seen


@pytest.mark.parametrize("stage", [Stage(16, "binary", 10), Stage(64, "int8", 10), Stage(0, "float32", 10)])
def test_small_scans_run_on_one_thread_and_restore_the_setting(calls, stage):
    rng = np.random.default_rng(0)
    index = FunnelIndex.from_vectors(rng.standard_normal((500, 64)).astype(np.float32), [str(i) for i in range(500)])
    if stage.codec == "float32":
        index.view_cache_bytes = 0  # no column copy: the stored rows go through FAISS's scan
    before = faiss.omp_get_max_threads()
    hits = index.search(rng.standard_normal((1, 64)).astype(np.float32), k=10, stages=[stage])
    assert len(hits[0]) == 10
    assert calls[:1] == [1] and calls[-1] == before  # one thread for the scan, then back
    assert faiss.omp_get_max_threads() == before


def test_large_scans_keep_faiss_threads(calls, monkeypatch):
    monkeypatch.setattr(exact_module, "SERIAL_SEARCH_PAIRS", 100)
    rng = np.random.default_rng(1)
    index = FunnelIndex.from_vectors(rng.standard_normal((500, 64)).astype(np.float32), [str(i) for i in range(500)])
    index.search(rng.standard_normal((1, 64)).astype(np.float32), k=10, stages=[Stage(16, "binary", 10)])
    assert calls == []
