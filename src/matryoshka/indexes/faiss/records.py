"""What a :class:`~matryoshka.indexes.faiss.index.FunnelIndex` stores beside each vector (id, text,
metadata), checked once at the boundary, and the per-row lists grown and filtered with the rows.

Texts and metadata are optional columns: ``None`` until some document holds one, so an index that
never held texts or metadata writes no ``texts.json`` or ``metadata.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar, get_args

import numpy as np

from matryoshka.data.documents import Metadata, check_metadata
from matryoshka.errors import InputError

Storage = Literal["float32", "float16"]
STORAGES: tuple[str, ...] = get_args(Storage)

T = TypeVar("T")


def check_storage(storage: str) -> None:
    """Raise :class:`InputError` unless ``storage`` is one of :data:`STORAGES`."""
    if storage not in STORAGES:
        raise InputError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")


def check_documents(
    ids: Sequence[str], texts: Sequence[str | None] | None, metadata: Sequence[Metadata | None] | None, count: int
) -> tuple[list[str], list[str | None] | None, list[dict[str, Any] | None] | None]:
    """The ids, texts and metadata of a batch of ``count`` vectors, each checked (see below).

    Raises:
        InputError: a count differs, an id is empty or repeats, a text is not a string, or metadata is not flat.
    """
    return check_ids(ids, count), check_texts(texts, count), check_metadata_list(metadata, count)


def check_ids(ids: Sequence[str], count: int) -> list[str]:
    """``count`` distinct non-empty string ids, as a list."""
    if isinstance(ids, str):
        raise InputError("ids must be a sequence of strings, not one string")
    ids = list(ids)
    if len(ids) != count:
        raise InputError(f"got {len(ids)} ids for {count} vectors")
    bad = [doc_id for doc_id in ids if not isinstance(doc_id, str) or not doc_id]
    if bad:
        raise InputError(f"ids must be non-empty strings, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(doc_id for doc_id in ids if doc_id in seen or seen.add(doc_id))  # type: ignore[func-returns-value]
        raise InputError(f"id {duplicate!r} appears more than once")
    return ids


def check_texts(texts: Sequence[str | None] | None, count: int) -> list[str | None] | None:
    """``count`` texts (strings or ``None``) as a list, or ``None`` when none were given."""
    if texts is None:
        return None
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    if len(texts) != count:
        raise InputError(f"got {len(texts)} texts for {count} vectors")
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise InputError("texts must be strings or None")
    return texts


def check_metadata_list(metadata: Sequence[Metadata | None] | None, count: int) -> list[dict[str, Any] | None] | None:
    """``count`` flat metadata objects (or ``None`` each) as a list, or ``None`` when none were given."""
    if metadata is None:
        return None
    if isinstance(metadata, (str, bytes)) or len(metadata) != count:
        raise InputError(f"metadata needs one object (or None) per vector: {count}")
    return [check_metadata(m) for m in metadata]


def grown(column: list[T | None] | None, new: list[T | None] | None, start: int, added: int) -> list[T | None] | None:
    """An optional column of ``start`` rows with ``added`` rows' values after it, extended in place.

    All-``None`` values (what ``upsert`` passes when none were given) store nothing.
    """
    if new is not None and all(value is None for value in new):
        new = None
    if column is None and new is not None:
        column = [None] * start
    if column is not None:
        column.extend(new if new is not None else [None] * added)
    return column


def kept(column: list[T] | None, keep: np.ndarray) -> list[T] | None:
    """An optional column without the rows whose ``keep`` flag is false."""
    return None if column is None else [value for value, flag in zip(column, keep) if flag]
