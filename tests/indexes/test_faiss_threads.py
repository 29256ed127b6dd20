"""Small scans run on one thread. FAISS: on a small index its OpenMP hand-off cost ~24 ms per binary or
int8 search on a busy 2-core machine against ~0.05 ms for the scan itself (the demo's "binary 16-dim:
28 ms, full size: 0.13 ms" on 500 glosses). numpy's BLAS: one query over 20,000 x 384 took 13-160 ms on
2 BLAS threads on a busy host against 1.7 ms on one (issue 32: the server's exact stage). Checked by the
thread setting each library has during the scan, not by time."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import matryoshka.indexes.faiss.exact as exact_module
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.retrieval import Stage
from support import numpy_blas_at, watch_column_scans


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


# -- numpy's BLAS: small exact scans on one thread, big batches on all (OpenBLAS's setting is process-wide) --


@pytest.fixture
def two_blas_threads():
    with numpy_blas_at(2) as n:
        yield n


@pytest.fixture
def blas_during_scans(monkeypatch):
    return watch_column_scans(monkeypatch)


def column_index(rows: int = 3000, dim: int = 384) -> FunnelIndex:
    rng = np.random.default_rng(2)
    return FunnelIndex.from_vectors(rng.standard_normal((rows, dim)).astype(np.float32), [str(i) for i in range(rows)])


def test_a_one_query_exact_scan_runs_numpy_blas_on_one_thread(two_blas_threads, blas_during_scans):
    from support import numpy_blas_threads

    index = column_index()
    query = np.random.default_rng(3).standard_normal((1, 384)).astype(np.float32)
    assert len(index.search(query, k=10, stages=[Stage(0, "float32", 10)])[0]) == 10  # full size, column view
    index.search(query, k=10, stages=[Stage(64, "float32", 10)])  # a prefix view
    assert blas_during_scans == [[1], [1]]
    assert numpy_blas_threads() == [two_blas_threads]  # restored


def test_a_big_batch_keeps_every_blas_thread(two_blas_threads, blas_during_scans, monkeypatch):
    monkeypatch.setattr(exact_module, "SERIAL_BLAS_MACS", 2048 * 384 * 4)  # batches of 4 and more count as big
    index = column_index()
    queries = np.random.default_rng(4).standard_normal((4, 384)).astype(np.float32)
    index.search(queries, k=10, stages=[Stage(0, "float32", 10)])
    index.search(queries[:1], k=10, stages=[Stage(0, "float32", 10)])
    assert blas_during_scans == [[two_blas_threads], [1]]


def test_the_stored_rows_path_is_limited_too(two_blas_threads, monkeypatch):
    """float16 rows (no FAISS scan): the blocked products run on one thread for a few queries."""
    from support import numpy_blas_threads

    seen: list[list[int]] = []
    real = exact_module._blocked

    def blocked(*args):
        seen.append(numpy_blas_threads())
        return real(*args)

    monkeypatch.setattr(exact_module, "_blocked", blocked)
    rows = np.random.default_rng(5).standard_normal((3000, 64)).astype(np.float16)
    scores, found = exact_module.top_k_inner_product(rows[:2].astype(np.float32), rows, k=5)
    assert found[:, 0].tolist() == np.argmax(rows[:2].astype(np.float32) @ rows.astype(np.float32).T, axis=1).tolist()
    assert seen == [[1]] and numpy_blas_threads() == [two_blas_threads]


def test_concurrent_small_scans_take_turns_and_restore_the_setting(two_blas_threads, blas_during_scans):
    """OpenBLAS has one thread count for the process: scans in many threads must never leave it at 1."""
    from concurrent.futures import ThreadPoolExecutor

    from support import numpy_blas_threads

    index = column_index(2500, 64)
    queries = np.random.default_rng(6).standard_normal((48, 64)).astype(np.float32)
    expected = [index.search(q[None], k=5)[0] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda q: index.search(q[None], k=5)[0], queries))
    assert found == expected
    assert len(blas_during_scans) == 2 * len(queries) and all(seen == [1] for seen in blas_during_scans)
    assert numpy_blas_threads() == [two_blas_threads]
