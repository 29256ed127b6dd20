"""Teacher tables: one helper for the train recipes (every text as given) and the static recipe (cached)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matryoshka.errors import InputError
from matryoshka.training.teachers import TeacherCache, row_columns, teacher_table

ROWS = [
    ("A man is playing a guitar.", "A person plays an instrument.", "The soup is too salty."),
    ("A woman is slicing onions.", "Someone is cutting vegetables.", "A plane is taking off."),
    ("A man is playing a guitar.", "A kitten naps on a couch.", "He is reading a newspaper."),
]


def test_every_text_is_encoded_as_given_column_by_column(model) -> None:
    table = teacher_table(ROWS, model, show_progress_bar=False)
    assert table.shape == (3, 3, 384)
    expected = model.encode([row[1] for row in ROWS], convert_to_tensor=True, device="cpu").cpu()
    assert torch.allclose(table[:, 1], expected, atol=1e-5)
    pairs = teacher_table(ROWS, model, columns=2, show_progress_bar=False)
    assert pairs.shape == (3, 2, 384) and torch.allclose(pairs, table[:, :2], atol=1e-5)


def test_the_cached_table_holds_unit_vectors_of_each_distinct_text_once(model, tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, None)
    table = teacher_table(ROWS, model, columns=2, cache=cache)
    assert table.shape == (3, 2, 384) and table.dtype == torch.float32
    assert torch.allclose(table.norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    assert torch.equal(table[0, 0], table[2, 0])  # the repeated text is one encoding
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert torch.equal(teacher_table(ROWS, model, columns=2, cache=cache), table)
    assert torch.equal(teacher_table(ROWS, model, columns=2, cache=TeacherCache(None, None)), table)


def test_rows_of_different_widths_are_refused() -> None:
    assert row_columns(ROWS) == 3
    with pytest.raises(InputError, match=r"same number of texts, found \[1, 2\]"):
        row_columns([("a",), ("b", "c")])
