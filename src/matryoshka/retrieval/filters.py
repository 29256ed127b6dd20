"""Metadata filters: ``{key: value}`` or ``{key: [values]}``, every key must match.

A document's metadata is a flat JSON object of strings, numbers and booleans. A filter restricts a
search to the documents whose metadata has every key of the filter with one of its values.

Example:
    >>> matches({"source": "scifact", "year": 2020}, check_filter({"source": ["scifact", "npl"]}))
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

Metadata = Mapping[str, Any]
Filter = Mapping[str, Any]


def check_metadata(metadata: Metadata | None) -> dict[str, Any] | None:
    """Validate one document's metadata; returns a plain dict (or ``None``).

    Raises:
        TypeError: not a mapping.
        ValueError: not a flat object of strings, numbers, booleans or nulls.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    out = dict(metadata)
    for key, value in out.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
            raise ValueError(f"metadata must map strings to strings, numbers or booleans, got {key!r}: {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metadata value {key!r} is not finite")
    json.dumps(out)
    return out


def check_filter(filter: Filter | None) -> dict[str, list[Any]] | None:
    """Normalize a filter to ``{key: [allowed values]}``; ``None`` or ``{}`` means no filter.

    Raises:
        ValueError: a key is not a string or a value is not a scalar (or a non-empty list of scalars).
    """
    if not filter:
        return None
    out: dict[str, list[Any]] = {}
    for key, value in filter.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not isinstance(key, str) or not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"a filter maps a metadata key to a value or a non-empty list of values, got {key!r}: {value!r}")
        out[key] = values
    return out


def matches(metadata: Metadata | None, filter: dict[str, list[Any]] | None) -> bool:
    """Whether one document's metadata passes a normalized filter."""
    if filter is None:
        return True
    if metadata is None:
        return False
    return all(key in metadata and metadata[key] in values for key, values in filter.items())




def check_filter_keys(filter: Filter | None, known: set[str]) -> None:
    """Refuse a filter on a metadata key that no document in the index has.

    Such a filter can only match nothing, which looks exactly like "no relevant document"; an
    error that names the keys the index does have is more useful.

    Raises:
        ValueError: a filter key is not in ``known``.
    """
    unknown = sorted(set(filter or {}) - known)
    if unknown:
        have = ", ".join(repr(key) for key in sorted(known)) if known else "none (it stores no metadata)"
        raise ValueError(f"no document has metadata key {', '.join(map(repr, unknown))}; the index's keys: {have}")
