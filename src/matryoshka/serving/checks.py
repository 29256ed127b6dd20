"""Request checks: each turns a bad request into an :class:`~matryoshka.serving.http.errors.APIError` (400)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi.exceptions import RequestValidationError

from matryoshka.embeddings.vectors import check_binary_dim, check_dim
from matryoshka.errors import DimensionError, InputError
from matryoshka.retrieval.filters import check_filter
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import Stage
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.http.errors import APIError
from matryoshka.serving.schemas import SearchRequest

__all__ = ["check_dimensions", "check_inputs", "check_search_filter", "request_stages", "validation_message"]


def check_inputs(raw: str | list[Any], config: ServeConfig) -> list[str]:
    """The texts of an embeddings request, or an :class:`APIError` saying what is wrong with them."""
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise APIError(400, "input must not be empty.", "input", "empty_input")

    def is_ids(item: Any) -> bool:
        return (
            isinstance(item, list) and bool(item) and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )

    if is_ids(texts) or all(is_ids(t) for t in texts):
        raise APIError(
            400,
            "Token-id arrays are not supported: this server tokenizes with its own model; send strings.",
            "input",
            "unsupported_input",
        )
    if len(texts) > config.max_inputs:
        raise APIError(
            400, f"input has {len(texts)} items; at most {config.max_inputs} are allowed.", "input", "too_many_inputs"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise APIError(400, f"input[{i}] must be a string, got {type(text).__name__}.", "input", "invalid_type")
        if not text:
            raise APIError(400, f"input[{i}] is an empty string.", "input", "empty_input")
        if len(text) > config.max_input_chars:
            raise APIError(
                400,
                f"input[{i}] has {len(text)} characters; at most {config.max_input_chars} are allowed.",
                "input",
                "input_too_long",
            )
    return texts


def check_dimensions(value: int | None, full_dim: int, param: str = "dimensions") -> int:
    """``value`` if it is a valid Matryoshka prefix length (``None``: full size), else a 400."""
    try:
        return check_dim(value, full_dim)
    except DimensionError:
        message = (
            f"Invalid value for '{param}': {value}; it must be an integer from 1 to {full_dim} (the model's size)."
        )
        raise APIError(400, message, param, "invalid_dimensions") from None


def check_precision(precision: str, dim: int) -> None:
    """A 400 when a binary ``precision`` gets a ``dim`` that does not fill whole bytes."""
    try:
        check_binary_dim(dim, precision)
    except DimensionError:
        message = f"precision '{precision}' packs 8 dimensions per byte; 'dimensions' must be a multiple of 8, got {dim}."
        raise APIError(400, message, "dimensions", "invalid_dimensions") from None


def request_stages(body: SearchRequest, index: VectorIndex) -> list[Stage] | None:
    """The funnel for one search: explicit stages, a preset, or the index's own (``None``); ``dimensions`` sets stage 1.

    A funnel that cannot give ``k`` hits as written (a shortlist keeping fewer than ``k``, keeps that
    grow) is refused with a 400 rather than having its keeps raised behind the caller's back.
    """
    from matryoshka.retrieval.stages import FULL, PRESETS, check_keeps

    if body.stages is not None and body.preset is not None:
        raise APIError(400, "Give either stages or preset, not both.", "stages", "invalid_request")
    stages: list[Stage] | None
    try:
        if body.stages is not None:
            stages = [Stage(dim=FULL if s.dim == "full" else s.dim, codec=s.codec, keep=s.keep) for s in body.stages]
        elif body.preset is not None:
            if body.preset not in PRESETS:
                message = f"Unknown preset {body.preset!r}; choose one of {', '.join(PRESETS)}."
                raise APIError(400, message, "preset", "invalid_preset")
            stages = list(PRESETS[body.preset])
        else:  # the index's own funnel; with dimensions it is the base the first stage is cut from
            stages = index.stages if body.dimensions is not None else None
        if body.dimensions is not None:
            check_dimensions(body.dimensions, index.dim)
            base = stages if stages is not None else index.stages
            stages = [dataclasses.replace(base[0], dim=body.dimensions), *base[1:]]
    except InputError as exc:  # Stage() refuses e.g. a binary stage whose dim is not a multiple of 8
        raise APIError(400, f"Invalid stages: {exc}", "stages", "invalid_stages") from None
    for i, stage in enumerate(stages or []):
        if stage.dim > index.dim:
            message = f"stages[{i}].dim={stage.dim} exceeds the index's {index.dim} dimensions."
            raise APIError(400, message, "stages", "invalid_dimensions")
    effective = stages if stages is not None else index.stages
    try:
        check_keeps(effective, body.k)
    except InputError as exc:
        raise APIError(400, f"Invalid stages: {exc}.", "stages", "invalid_stages") from None
    return stages


def check_search_filter(filter: dict[str, Any] | None, index: VectorIndex) -> None:
    """A 400 for a malformed filter, or one on a metadata key the index never stored (where it can tell)."""
    from matryoshka.retrieval.filters import check_filter_keys

    try:
        check_filter(filter)
        keys = index.metadata_keys() if filter else None
        if keys is not None:
            check_filter_keys(filter, keys)
    except InputError as exc:
        raise APIError(400, f"Invalid filter: {exc}", "filter", "invalid_filter") from None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """Turn FastAPI's validation errors into one OpenAI-style message and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request. Send valid JSON with Content-Type: application/json.",
            None,
        )
    if first.get("type") == "model_attributes_type" or not loc:
        return "The request body must be a JSON object.", None
    param = loc[0]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{where}'.", param
    return f"Invalid value for '{where}': {message}.", param
