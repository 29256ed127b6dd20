"""Request and response bodies: OpenAI's embeddings and models shapes, plus search and demo.

Request fields use strict types: OpenAI rejects ``"dimensions": "64"`` and so do we, instead of
quietly coercing it. Unknown fields are ignored, as OpenAI does, so newer clients keep working.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from matryoshka.errors import InputError

Codec = Literal["float32", "float16", "int8", "binary"]
#: The codecs the HTTP API takes (the library's ``hnsw``/``ivf``/``ivfpq`` prefix indexes are not served).
API_CODECS: tuple[str, ...] = get_args(Codec)


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {...}}``."""

    error: ErrorDetail


#: The error statuses every route documents (``responses=`` of each route), all in :class:`ErrorResponse`'s shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 502, 503, 504)
}


# -- embeddings ------------------------------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``. ``input`` is kept loose here and checked by the handler, which gives
    token-id arrays their own message (they are valid for OpenAI but meaningless for another tokenizer)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[Any]
    model: StrictStr | None = None
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    #: Beyond OpenAI: ``float16``, or ``binary``/``ubinary`` (one sign bit per dimension, 8 to a byte, as
    #: int8/uint8 numbers, or their bytes in base64). ``int8``/``uint8`` are not served: their scale comes
    #: from a calibration set, so one request's answer would not match another's.
    precision: Literal["float32", "float16", "binary", "ubinary"] = "float32"
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        if not isinstance(value, (str, list)):
            raise InputError("input must be a string or an array of strings")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """OpenAI's model object, plus what a Matryoshka client wants to know."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "matryoshka"
    dimensions: int
    max_input_tokens: int | None = None
    matryoshka_dimensions: list[int] | None = Field(
        None,
        description="The dimensions this model can be cut to safely (they keep the stated share of full-size "
        "quality, 95% by default), from its adapt report or evaluation results; null when unknown."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- search ----------------------------------------------------------------------------------------


class StageSpec(BaseModel):
    """One funnel stage: score candidates at ``dim`` dimensions in ``codec`` and keep the best ``keep``."""

    model_config = ConfigDict(extra="forbid")

    dim: StrictInt | Literal["full"] = Field(description='prefix length; 0 or "full" for the index\'s full size')
    codec: Codec
    keep: StrictInt = Field(ge=1)

    @field_validator("dim", mode="before")
    @classmethod
    def _dim_type(cls, value: Any) -> Any:
        # checked here so the error says what is allowed, not which branch of the union failed
        if value != "full" and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f'dim must be an integer or "full", got {_shown(value)}')
        return value

    @field_validator("dim")
    @classmethod
    def _dim_not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise InputError('dim must be positive, or 0 / "full" for the full size')
        return value


FilterValue = StrictStr | StrictInt | StrictFloat | StrictBool


def _shown(value: Any) -> str:
    """A request value as JSON, cut short, for an error message."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class SearchRequest(BaseModel):
    """``POST /v1/search``: one query through the funnel; ``stages`` or ``preset`` or the index's own stages.

    ``dimensions`` overrides the first (cheapest) stage's dimension, the Matryoshka knob.
    """

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    k: StrictInt = Field(10, ge=1)
    stages: list[StageSpec] | None = Field(None, min_length=1)
    preset: StrictStr | None = None
    dimensions: StrictInt | None = None
    model: StrictStr | None = None
    filter: dict[str, FilterValue | list[FilterValue]] | None = Field(
        None, description='Metadata filter: every key must match, a list matches any of its values, e.g. {"source": "npl"}.'
    )

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_types(cls, value: Any) -> Any:
        # checked here so the error says what is allowed, not which branch of the union failed
        if value is None:
            return value
        if not isinstance(value, dict):
            raise InputError(f"filter must be an object of metadata keys and values, got {_shown(value)}")
        for key, wanted in value.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            if not all(isinstance(v, (str, int, float)) for v in values):  # bool is an int
                raise InputError(
                    f"filter[{_shown(key)}] must be a string, a number, a boolean or a list of them, got {_shown(wanted)}"
                )
        return value


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    text: str | None = None


class StageTiming(BaseModel):
    """The wire form of :class:`matryoshka.retrieval.types.StageTiming`: milliseconds, and the bytes a
    vector of the stage scans."""

    dim: int
    codec: str
    keep: int
    candidates: int
    ms: float
    bytes_per_vector: int


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    model: str
    query: str
    k: int
    hits: list[SearchHit]
    stages: list[StageTiming]
    bytes_per_vector: int = Field(description="bytes one corpus vector takes in the first stage")
    encode_ms: float
    search_ms: float
    usage: Usage


# -- demo ------------------------------------------------------------------------------------------


class CompareRequest(BaseModel):
    """The demo's question: the top ``k`` at ``dim`` dimensions (in ``codec``) next to the top ``k`` at full size."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr = Field(min_length=1, max_length=2000)
    dim: StrictInt = Field(ge=1)
    k: StrictInt = Field(10, ge=1, le=50)
    codec: Codec = "float32"
    model: StrictStr | None = Field(None, max_length=500, description="One of the demo's models (default: the first).")


class CompareSide(BaseModel):
    dim: int
    codec: str
    hits: list[SearchHit]
    ms: float
    bytes_per_vector: int
    index_bytes: int


class CompareResponse(BaseModel):
    model: str
    query: str
    k: int
    chosen: CompareSide
    full: CompareSide
    overlap: int
    encode_ms: float


class DemoInfo(BaseModel):
    model: str
    models: list[str]
    full_dim: int
    dims: list[int]
    codecs: list[str]
    index_size: int
    index_dim: int
    quality: dict[str, Any] | None
    quality_model: str | None
    examples: list[str]
    title: str = Field(description="The search box's title: what the corpus is.")
    placeholder: str
    quality_models: dict[str, str | None] = Field(
        description="Each of `models` -> the model in `quality` whose curves are its own (null: it has none)."
    )
    dim_codecs: dict[str, list[str]] = Field(
        description="Each of `dims` -> the codecs the index can rank by at that prefix (`codecs` is their union)."
    )
