"""A document as a Qdrant point: its UUID, its payload (id, text, metadata) and metadata filters as conditions."""

from __future__ import annotations

import re
import uuid
from typing import Any

from qdrant_client import models

from matryoshka.errors import InputError
from matryoshka.retrieval.types import Hit

#: Namespace of the point UUIDs; changing it orphans every stored point.
ID_NAMESPACE = uuid.UUID("9200355a-b317-5779-80f9-cc8a3b49d619")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID string) of a document id: ``uuid5`` in a fixed namespace."""
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


def point_payload(doc_id: str, text: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A point's payload: the original id, the text and the metadata object (absent when None)."""
    payload: dict[str, Any] = {"id": doc_id}
    if text is not None:
        payload["text"] = text
    if metadata is not None:
        payload["metadata"] = metadata
    return payload


def point_hit(point: Any) -> Hit:
    """A :class:`Hit` from a scored point (payload ``id`` and ``text``)."""
    payload = point.payload or {}
    return Hit(str(payload["id"]), float(point.score), payload.get("text"))


def filter_conditions(wanted: dict[str, list[Any]] | None) -> models.Filter | None:
    """A normalized filter as Qdrant conditions on ``metadata.<key>`` (all keys must match)."""
    if wanted is None:
        return None
    return models.Filter(must=[_key_condition(_field_path(key), values) for key, values in wanted.items()])


def _field_path(key: str) -> str:
    """The payload path of a metadata key; keys with dots or other signs are quoted."""
    if _PLAIN_KEY.fullmatch(key):
        return f"metadata.{key}"
    if '"' in key:
        raise InputError(f"this backend cannot filter on a metadata key holding a double quote: {key!r}")
    return f'metadata."{key}"'


def _key_condition(field: str, values: list[Any]) -> models.FieldCondition | models.Filter:
    """One key's condition: equal to the value, or to any of several values."""
    if len(values) == 1:
        return _equals(field, values[0])
    if all(isinstance(v, str) for v in values):
        return models.FieldCondition(key=field, match=models.MatchAny(any=values))
    return models.Filter(should=[_equals(field, v) for v in values])


def _equals(field: str, value: Any) -> models.FieldCondition:
    """Equality on one value: ``MatchValue`` for strings and booleans (a boolean never matches a number);
    a closed range for numbers, so ``1`` matches a stored ``1.0`` as it does on the other engines."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))
