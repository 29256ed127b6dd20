"""The exact stage: blocked products with threshold-pruned top-k give exactly a full sort's answer."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka.indexes.faiss.exact import BLOCK_ROWS_BATCH, ColumnBlocks, top_k_inner_product


def full_sort(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ base.astype(np.float64).T
    rows = np.stack([np.lexsort((np.arange(len(base)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.mark.parametrize(
    ("count", "batch", "k", "block"),
    [(1, 1, 10, None), (5, 2, 10, None), (3000, 1, 10, 256), (3000, 1, 10, None), (3000, 4, 50, None), (3000, 4, 50, 256), (3000, 3, 3000, 700),
     (20_000, 32, 100, None), (20_000, 1, 1, 1000), (20_000, 4, 700, None)],
)
@pytest.mark.parametrize("layout", ["rows", "columns", "columns appended"])
def test_matches_a_full_sort_including_ties(count: int, batch: int, k: int, block: int | None, layout: str) -> None:
    rng = np.random.default_rng(count + batch + k)
    # quarter-integer values: every product is exact in float32, so ties are real ties
    base = (np.round(rng.standard_normal((count, 8)) * 4) / 4).astype(np.float32)
    base[min(7, count - 1)] = base[min(3, count - 1)]
    queries = (np.round(rng.standard_normal((batch, 8)) * 4) / 4).astype(np.float32)
    searched: np.ndarray | ColumnBlocks = base
    if layout == "columns":
        searched = ColumnBlocks.from_rows(base)
    elif layout == "columns appended":  # uneven appends: partly filled blocks are refilled
        searched = ColumnBlocks([], 8)
        for start, stop in zip([0, 1, 1000, 3100], [1, 1000, 3100, count]):
            searched = searched.extended(base[start:stop])
        assert len(searched) == count
        assert all(b.shape[1] == BLOCK_ROWS_BATCH for b in searched.blocks[:-1])
    scores, rows = top_k_inner_product(queries, searched, k, block_rows=block)
    want_scores, want_rows = full_sort(queries, base, min(k, count))
    assert rows.shape == (batch, min(k, count))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


def test_float16_and_memory_mapped_bases(tmp_path) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5000, 16)).astype(np.float32)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    half = base.astype(np.float16)
    _, rows = top_k_inner_product(queries, half, 20, block_rows=999)
    _, want = full_sort(queries, half.astype(np.float32), 20)
    np.testing.assert_array_equal(rows, want)
    np.save(tmp_path / "v.npy", base)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    np.testing.assert_array_equal(top_k_inner_product(queries, mapped, 20)[1], top_k_inner_product(queries, base, 20)[1])


def test_column_blocks_hold_the_same_vectors_and_share_full_blocks() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((5000, 16)).astype(np.float32)
    columns = ColumnBlocks.from_rows(base[:4500])
    longer = columns.extended(base[4500:])
    np.testing.assert_array_equal(np.concatenate([b.T for b in longer.blocks]), base)
    assert longer.blocks[0] is columns.blocks[0]  # full blocks are shared, not copied
    assert len(columns) == 4500 and columns.nbytes == 4500 * 16 * 4
    assert columns.extended(base[:0]) is columns


def test_bad_arguments() -> None:
    base = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="k must be a positive"):
        top_k_inner_product(base[:1], base, 0)
    with pytest.raises(ValueError, match="same dim"):
        top_k_inner_product(np.ones((1, 2), np.float32), base, 1)
    with pytest.raises(ValueError, match="same dim"):
        top_k_inner_product(np.ones((1, 2), np.float32), ColumnBlocks.from_rows(base), 1)
    scores, rows = top_k_inner_product(np.zeros((0, 3), np.float32), base, 2)
    assert scores.shape == rows.shape == (0, 2)
