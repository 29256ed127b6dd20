"""Server settings: which models to serve (local ones, or an upstream API, with an adaptor), limits,
micro-batching, optional index and results files, and the safe dimensions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matryoshka.errors import InputError
from matryoshka.evaluation.results import SAFE_SHARE
from matryoshka.models.loading import DEFAULT_MODEL
from matryoshka.models.upstream.config import UpstreamConfig


class ServeConfig(BaseModel):
    """Settings of one server process.

    ``models`` lists what ``/v1/embeddings`` serves; an entry is a name that :func:`matryoshka.models.loading.load_model`
    understands (``all-MiniLM-L6-v2``, a directory, a hub name) or ``alias=source`` to serve a directory under
    a short name. The first entry is the default when a request names no model, and encodes search queries.
    ``upstream`` serves an OpenAI-compatible API's model instead (under ``upstream_name``, default its own
    name); ``adaptor`` maps the served model's vectors (one model only).
    """

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL], min_length=1)
    api_key: str | None = None
    max_inputs: int = Field(2048, ge=1, description="texts per /v1/embeddings request (OpenAI's limit)")
    max_input_chars: int = Field(32_768, ge=1, description="characters per text (about 8k tokens)")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body size; larger gets 413")
    batch_max_texts: int = Field(
        64,
        ge=1,
        description="texts in one model call at most (larger requests are split); on CPU, throughput is flat "
        "past a few dozen texts while a small request's wait for the call in progress grows with it",
    )
    batch_max_wait_ms: float | None = Field(
        None,
        ge=0,
        description="how long the first request of a batch waits for company; default 2 ms for a local model, 0 for "
        "an upstream API (its texts are batched into calls already, and requests that come while a call is in "
        "flight are still gathered into the next)",
    )
    encode_batch_size: int = Field(64, ge=1, description="texts per forward pass inside one model call")
    max_queued_texts: int = Field(
        8192, ge=1, description="texts waiting for the model at most; past it requests get 429 with Retry-After"
    )
    timeout_header_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    timeout_body_s: float = Field(30.0, gt=0, description="a request's body must arrive within this after its headers")
    timeout_keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this")
    search_max_k: int = Field(1000, ge=1)
    index_path: str | None = None
    results_path: str | list[str] | None = Field(
        None, description="evaluation results JSON file(s) for the demo's chart"
    )
    demo_dims: list[int] | None = Field(
        None, description="slider stops of the demo page; default from results or powers of two"
    )
    log_requests: bool = True
    upstream: UpstreamConfig | None = Field(None, description="serve this API's model instead of `models`")
    upstream_name: str | None = Field(None, min_length=1, description="the upstream model's served name")
    adaptor: str | None = Field(None, description="an adaptor file from `adapt`, applied to the served model")
    strict_dimensions: bool = Field(False, description="refuse a `dimensions` outside the model's safe ones")
    safe_share: float = Field(
        SAFE_SHARE, gt=0, le=1, description="the share of full-size quality a safe dimension keeps"
    )

    @field_validator("models")
    @classmethod
    def _unique_aliases(cls, value: list[str]) -> list[str]:
        aliases = [alias for alias, _ in parse_model_specs(value)]
        if len(set(aliases)) != len(aliases):
            raise InputError(f"model names must be unique, got {aliases}")
        return value

    @model_validator(mode="after")
    def _queue_fits_a_request(self) -> ServeConfig:
        if self.max_queued_texts < self.max_inputs:
            raise InputError(
                f"max_queued_texts ({self.max_queued_texts}) must be at least max_inputs ({self.max_inputs}), "
                "or the largest allowed request could never be queued"
            )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> ServeConfig:
        if self.upstream is not None and "models" in self.model_fields_set:
            raise InputError("serve either an upstream API or local models (--model), not both")
        if self.upstream is None and self.upstream_name is not None:
            raise InputError("upstream_name names an upstream model; give the upstream too")
        if self.adaptor is not None and len(self.model_specs()) != 1:
            raise InputError(f"an adaptor applies to one served model; {len(self.model_specs())} are served")
        return self

    def batch_wait_ms(self, upstream: bool) -> float:
        """``batch_max_wait_ms``, or its default for a local model (2 ms) or an upstream API's (0)."""
        if self.batch_max_wait_ms is not None:
            return self.batch_max_wait_ms
        return 0.0 if upstream else 2.0

    def model_specs(self) -> list[tuple[str, str]]:
        """``(served name, source)`` pairs, default model first; an upstream's source is its label
        (``<url>#<model>``), which :func:`matryoshka.models.identity.model_label` leaves as it is."""
        if self.upstream is not None:
            return [(self.upstream_name or self.upstream.model, self.upstream.label)]
        return parse_model_specs(self.models)


def served_name(source: str) -> str:
    """The name a model is served under when no alias is given: the short form of its label
    (:func:`~matryoshka.models.identity.short_name`: a directory's own name, else the name itself)."""
    from matryoshka.models.identity import model_label, short_name

    return short_name(model_label(source))


def parse_model_specs(entries: list[str]) -> list[tuple[str, str]]:
    """Split ``alias=source`` entries; a bare entry is served under :func:`served_name`."""
    specs = []
    for entry in entries:
        alias, sep, source = entry.partition("=")
        if sep and alias.strip() and source.strip():
            specs.append((alias.strip(), source.strip()))
        else:
            specs.append((served_name(entry.strip()), entry.strip()))
    return specs
