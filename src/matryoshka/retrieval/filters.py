"""Metadata filters: ``{key: value}`` or ``{key: [values]}``, every key must match.

A document's metadata is a flat JSON object of strings, numbers and booleans. A filter restricts a
search to the documents whose metadata has every key of the filter with one of its values.

Equality is the same on every engine: strings equal strings, numbers equal numbers by value (``1``
matches ``1.0``), booleans equal only booleans (``True`` is not ``1``). NaN and infinities are refused,
integers must be exact in a double (at most 2**53 in size), and a filter holds at most
:data:`MAX_FILTER_KEYS` keys and :data:`MAX_FILTER_VALUES` values in all.

Example:
    >>> matches({"source": "scifact", "year": 2020}, check_filter({"source": ["scifact", "npl"]}))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matryoshka.data.documents import Metadata, scalar_problem
from matryoshka.errors import InputError

Filter = Mapping[str, Any]

MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 1024
MAX_FILTER_STRING = 1024


def check_filter(filter: Filter | None) -> dict[str, list[Any]] | None:
    """Normalize a filter to ``{key: [allowed values]}``; ``None`` or ``{}`` means no filter.

    Raises:
        InputError: not a mapping; a key is not a string; a value is not a string, finite number or
            boolean (or a non-empty list of them); or the filter is larger than the bounds.
    """
    if not filter:
        return None
    if not isinstance(filter, Mapping):
        raise InputError(f"a filter is a JSON object of metadata keys, got {type(filter).__name__}")
    if len(filter) > MAX_FILTER_KEYS:
        raise InputError(f"a filter may name at most {MAX_FILTER_KEYS} keys, got {len(filter)}")
    out: dict[str, list[Any]] = {}
    total = 0
    for key, value in filter.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not isinstance(key, str) or not values:
            raise InputError(f"a filter maps a metadata key to a value or a non-empty list of values, got {key!r}: {value!r}")
        for v in values:
            problem = scalar_problem(v)
            if problem:
                raise InputError(f"filter value for {key!r}: {problem}")
            if isinstance(v, str) and len(v) > MAX_FILTER_STRING:
                raise InputError(f"filter value for {key!r} is longer than {MAX_FILTER_STRING} characters")
        total += len(values)
        if total > MAX_FILTER_VALUES:
            raise InputError(f"a filter may hold at most {MAX_FILTER_VALUES} values in all")
        out[key] = values
    return out


def same_value(a: Any, b: Any) -> bool:
    """Metadata equality: booleans only equal booleans, numbers compare by value, strings exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def matches(metadata: Metadata | None, filter: dict[str, list[Any]] | None) -> bool:
    """Whether one document's metadata passes a normalized filter."""
    if filter is None:
        return True
    if metadata is None:
        return False
    return all(key in metadata and any(same_value(metadata[key], v) for v in values) for key, values in filter.items())


def check_filter_keys(filter: Filter | None, known: set[str]) -> None:
    """Refuse a filter on a metadata key that no document in the index has.

    Such a filter can only match nothing, which looks exactly like "no relevant document"; an
    error that names the keys the index does have is more useful.

    Raises:
        InputError: a filter key is not in ``known``.
    """
    unknown = sorted(set(filter or {}) - known)
    if unknown:
        have = ", ".join(repr(key) for key in sorted(known)) if known else "none (it stores no metadata)"
        raise InputError(f"no document has metadata key {', '.join(map(repr, unknown))}; the index's keys: {have}")
