"""The rules every stored document follows: its metadata is a flat JSON object of scalars.

Strings, numbers and booleans (or null); NaN and infinities are refused and integers must be exact
in a double (at most 2**53 in size), so that every engine stores and compares them alike.
:mod:`matryoshka.retrieval.filters` matches filters against the same values.

Example:
    >>> check_metadata({"source": "scifact", "year": 2020})
    {'source': 'scifact', 'year': 2020}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from matryoshka.errors import InputError

__all__ = ["MAX_SAFE_INT", "Metadata", "check_metadata", "scalar_problem"]

Metadata = Mapping[str, Any]

MAX_SAFE_INT = 2**53


def scalar_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a metadata or filter value (``None`` when it can)."""
    if isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_SAFE_INT else f"integer {value} is larger than 2**53"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    return f"{value!r} is not a string, number or boolean"


def check_metadata(metadata: Metadata | None) -> dict[str, Any] | None:
    """Validate one document's metadata; returns a plain dict (or ``None``).

    Raises:
        InputError: not a mapping, or not a flat object of strings, numbers, booleans or nulls.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    out = dict(metadata)
    for key, value in out.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
            raise InputError(f"metadata must map strings to strings, numbers or booleans, got {key!r}: {value!r}")
        problem = None if value is None else scalar_problem(value)
        if problem:
            raise InputError(f"metadata value {key!r}: {problem}")
    json.dumps(out)
    return out
