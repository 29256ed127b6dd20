"""The cache of first-stage views is bounded: searching at every dimension and codec does not grow memory
without end (the cause of the server's RSS creep under mixed ``dimensions``), and eviction changes no result."""

from __future__ import annotations

import numpy as np

from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.retrieval import Stage


def test_view_cache_stays_within_its_budget():
    rng = np.random.default_rng(0)
    count, dim = 500, 128
    index = FunnelIndex.from_vectors(rng.standard_normal((count, dim)).astype(np.float32), [str(i) for i in range(count)])
    fresh = FunnelIndex.from_vectors(index._vectors, index.ids)
    index.view_cache_bytes = count * 32 * 4  # room for one 32-dim float32 prefix
    stored = index.memory_bytes()
    largest_view = count * dim * 4
    query = rng.standard_normal((2, dim)).astype(np.float32)
    peak = 0
    for d in range(1, dim + 1):
        for codec in ("float32", "float16", "int8", "binary"):
            if codec == "binary" and d % 8:
                continue
            stages = [Stage(d, codec, 50), Stage(0, "float32", 5)]
            got = index.search(query, k=5, stages=stages)
            peak = max(peak, index.memory_bytes() - stored)
            if d % 16 == 0:  # eviction never changes an answer
                fresh.view_cache_bytes = 1 << 40
                want = fresh.search(query, k=5, stages=stages)
                assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want]
                np.testing.assert_allclose([h.score for h in got[0]], [h.score for h in want[0]], atol=1e-6)
                fresh._cache.views.clear()
    assert peak <= index.view_cache_bytes + largest_view  # the budget, plus the view the current search needs
    unbounded = sum(count * d * 4 for d in range(1, dim + 1))
    assert peak < unbounded / 20


def test_hot_views_stay_cached():
    rng = np.random.default_rng(1)
    index = FunnelIndex.from_vectors(rng.standard_normal((200, 64)).astype(np.float32), [str(i) for i in range(200)])
    index.view_cache_bytes = 200 * 64 * 4
    query = rng.standard_normal((1, 64)).astype(np.float32)
    funnel = [Stage(32, "float32", 20), Stage(0, "float32", 5)]
    index.search(query, k=5, stages=funnel)
    hot = index._cache.views[("float32", 32)]
    index.search(query, k=5, stages=[Stage(16, "float32", 20), Stage(0, "float32", 5)])
    index.search(query, k=5, stages=funnel)
    assert index._cache.views[("float32", 32)] is hot  # recently used, so kept, not rebuilt


def test_a_smaller_budget_or_more_rows_evict_at_the_next_search():
    # searches skip the budget check while nothing changed, so a change must bring it back
    rng = np.random.default_rng(2)
    count, dim = 300, 64
    index = FunnelIndex.from_vectors(rng.standard_normal((count, dim)).astype(np.float32), [str(i) for i in range(count)])
    query = rng.standard_normal((1, dim)).astype(np.float32)
    wide, narrow = [Stage(32, "float32", 20), Stage(0, "float32", 5)], [Stage(16, "float32", 20), Stage(0, "float32", 5)]
    index.view_cache_bytes = count * (32 + 16) * 4  # both prefixes fit
    index.search(query, k=5, stages=narrow)
    index.search(query, k=5, stages=wide)
    assert set(index._cache.views) == {("float32", 16), ("float32", 32)}
    index.view_cache_bytes = count * 32 * 4  # now only one fits: the least recently used goes
    index.search(query, k=5, stages=wide)
    assert set(index._cache.views) == {("float32", 32)}
    index.view_cache_bytes = count * (32 + 16) * 4
    index.search(query, k=5, stages=narrow)
    assert set(index._cache.views) == {("float32", 16), ("float32", 32)}
    index.add(rng.standard_normal((count, dim)).astype(np.float32), [f"new{i}" for i in range(count)])
    index.search(query, k=5, stages=narrow)  # twice the rows: both views no longer fit
    assert set(index._cache.views) == {("float32", 16)}
