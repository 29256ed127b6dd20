"""What the handlers share: the served models (each with its batcher and safe dimensions), the index,
the demo's choices.

Routes get it through the :data:`State` dependency (``request.app.state.serving``), not through closures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, Request

from matryoshka.adapt.applied import AdaptedModel
from matryoshka.embeddings.vectors import encode, truncate
from matryoshka.errors import DimensionError, InputError, ModelError, StartupError
from matryoshka.models.identity import same_model
from matryoshka.models.loading import model_dimension
from matryoshka.models.upstream.model import UpstreamModel
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.serving.batching import MicroBatcher
from matryoshka.serving.config import ServeConfig
from matryoshka.serving.demo.index import NEUTRAL_CORPUS, DemoCorpus
from matryoshka.serving.http.errors import APIError, ClientGone
from matryoshka.serving.quality import clean_quality
from matryoshka.serving.schemas import ModelCard
from matryoshka.serving.served import (
    as_model,
    base_model,
    cache_reader,
    served_dimensions,
    served_label,
    upstream_of_label,
)

if TYPE_CHECKING:
    from matryoshka.serving.served import Served

__all__ = ["ServedModel", "ServerState", "State", "count_tokens", "index_model", "make_batch_function", "server_state",
           "submit_while_connected"]

logger = logging.getLogger("matryoshka.serving")


async def submit_while_connected(request: Request, batcher: MicroBatcher, texts: list[str]) -> tuple[np.ndarray, ...]:
    """``batcher.submit(texts)``, cancelled (so its texts leave the queue) if the client disconnects meanwhile.

    The body has been read by then, so the next ``receive()`` only returns when the client goes away.
    """
    work = asyncio.ensure_future(batcher.submit(texts))

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ClientGone()
    return work.result()


def count_tokens(model: Served, texts: Sequence[str]) -> np.ndarray:
    """Tokens the model reads per text: its own tokenizer, special tokens included, cut at ``max_seq_length``
    (an adapted model's: its base's); words for a model without a local tokenizer (an upstream API)."""
    from tokenizers import Tokenizer

    base = base_model(model)
    tokenizer: Any = getattr(base, "tokenizer", None)
    limit = getattr(base, "max_seq_length", None)
    if tokenizer is None:
        return np.asarray([len(t.split()) for t in texts], dtype=np.int64)
    try:
        if isinstance(tokenizer, Tokenizer):  # a bare `tokenizers.Tokenizer`, as static models have
            lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
        else:
            kwargs = {"truncation": True, "max_length": limit} if limit else {}
            lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, **kwargs)["input_ids"]]
    except Exception:  # pragma: no cover - a model without a usable tokenizer: count words
        lengths = [len(t.split()) for t in texts]
    counts = np.asarray(lengths, dtype=np.int64)
    return np.minimum(counts, limit) if limit else counts


@dataclass
class ServedModel:
    """One model behind ``/v1/embeddings``, with its own batcher (and worker thread); ``label`` is its
    identity (:func:`matryoshka.models.identity.model_label`), what an index records."""

    name: str
    label: str
    model: Served
    dim: int
    batcher: MicroBatcher
    created: int
    matryoshka_dimensions: list[int] | None = None
    #: Served rows of texts an upstream's cache holds in memory, else ``None`` (:func:`cache_reader`).
    cached: Callable[[list[str]], np.ndarray | None] | None = None

    async def vectors(self, texts: list[str], request: Request | None = None) -> tuple[np.ndarray, ...]:
        """Full-size rows of ``texts`` and their token counts. Texts an upstream's cache holds in memory
        are answered here on the event loop (a lookup: no thread hop, no queue); others go through the
        batcher, cancelled if ``request``'s client goes away meanwhile."""
        rows = self.cached(texts) if self.cached is not None else None
        if rows is not None:
            return rows, count_tokens(self.model, texts)
        if request is None:
            return await self.batcher.submit(texts)
        return await submit_while_connected(request, self.batcher, texts)

    def card(self) -> ModelCard:
        limit = getattr(base_model(self.model), "max_seq_length", None)  # a static model reads any length: inf; an API: unknown
        return ModelCard(
            id=self.name,
            created=self.created,
            dimensions=self.dim,
            max_input_tokens=int(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None,
            matryoshka_dimensions=self.matryoshka_dimensions,
        )

    def is_safe(self, dim: int | None) -> bool:
        """Whether ``dim`` is one of the model's safe dimensions (``None``, the full size, always is)."""
        return dim is None or dim == self.dim or dim in (self.matryoshka_dimensions or [])

    def check_safe(self, dim: int | None) -> None:
        """A 400 naming the safe dimensions when ``dim`` is not one of them (``None``, full size, always is)."""
        safe = self.matryoshka_dimensions or [self.dim]
        if not self.is_safe(dim):
            raise APIError(
                400,
                f"Invalid value for 'dimensions': {dim}; model `{self.name}` serves only its safe dimensions "
                f"{', '.join(map(str, safe))} (this server runs with --strict-dimensions).",
                "dimensions",
                "unsafe_dimensions",
            )


def make_batch_function(model: Served, batch_size: int) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """Full-size float32 vectors (not re-normalized: each request truncates and normalizes its own) and token counts."""

    def run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = encode(as_model(model), texts, dim=None, normalize=False, batch_size=batch_size,
                         show_progress_bar=False)
        return vectors, count_tokens(model, texts)

    return run


def index_model(
    recorded: str, labels: Mapping[str, str], allow_unnamed: bool = True, bases: Mapping[str, str] | None = None
) -> str | None:
    """The served name whose model made an index that records ``recorded``: a served name equal to it, or
    the one model with the same :func:`~matryoshka.models.identity.model_label`, or an adapted model whose
    base (in ``bases``, name -> base label) made it; ``None`` when the index records no model (allowed only
    with ``allow_unnamed``: one model served).

    Raises:
        ModelError: no served model is the index's model, or the index names none and several are served.
    """
    served = ", ".join(labels) or "none"
    if not recorded:
        if allow_unnamed:
            return None
        raise ModelError(
            f"the index records no model and several are served ({served}); rebuild it with --model so "
            "queries are encoded with the model that made its vectors"
        )
    if recorded in labels:
        return recorded
    matches = [name for name, label in labels.items() if same_model(label, recorded)]
    matches += [name for name, base in (bases or {}).items() if same_model(base, recorded)]
    if not matches:
        upstream = upstream_of_label(recorded)
        hint = f"--upstream {upstream[0]} --upstream-model {upstream[1]}" if upstream else f"--model {recorded}"
        raise ModelError(
            f"the index was built with model {recorded!r}, which is not served (served: {served}); serve it with {hint}"
        )
    return matches[0]


class ServerState:
    """What the handlers share: config, served models, the index and the demo's quality data.

    The index is searched with the served model it records (never silently with another one).
    """

    def __init__(
        self,
        config: ServeConfig,
        models: Mapping[str, Served],
        index: VectorIndex | None,
        quality: dict[str, Any] | None,
        demo_indexes: Mapping[str, VectorIndex] | None = None,
        demo_corpus: DemoCorpus = NEUTRAL_CORPUS,
    ) -> None:
        self.config = config
        self.demo_corpus = demo_corpus
        created = int(time.time())
        sources = dict(config.model_specs())
        self.quality = clean_quality(quality)
        self.models: dict[str, ServedModel] = {}
        for name, model in models.items():
            label = served_label(model, sources.get(name, name))
            dim = model_dimension(as_model(model))
            safe = served_dimensions(model, name, label, dim, self.quality, config.safe_share)
            if config.strict_dimensions and safe is None:
                raise StartupError(
                    f"--strict-dimensions: model {name!r} has no known safe dimensions; serve it with an adaptor "
                    "from `adapt` (--adaptor), or give --results from `matryoshka evaluate` of it"
                )
            upstream = base_model(model)
            batcher = MicroBatcher(
                make_batch_function(model, config.encode_batch_size),
                max_texts=config.batch_max_texts,
                max_wait_ms=config.batch_wait_ms(upstream=isinstance(upstream, UpstreamModel)),
                max_queued_texts=config.max_queued_texts,
                name=f"encode-{name}"[:15],
                # an API's calls wait on the network: as many in flight as the upstream allows (--upstream-concurrency)
                max_in_flight=upstream.config.concurrency if isinstance(upstream, UpstreamModel) else 1,
            )
            self.models[name] = ServedModel(name, label, model, dim, batcher, created, safe, cache_reader(model))
        self.default = next(iter(self.models.values()))
        self.index = index
        self.search_model = self.default
        if index is not None:
            self.search_model, self.index = self._search_pair(index)
        self.quality_model = self._quality_model()
        self.started = time.time()
        # The demo's model selector: each choice is a served model and the index of its own vectors.
        self.demo_choices: dict[str, tuple[ServedModel, VectorIndex]] = {}
        if self.index is not None:
            self.demo_choices[self.search_model.name] = (self.search_model, self.index)
        for name, extra in (demo_indexes or {}).items():
            if name not in self.models:
                raise InputError(f"a demo index is given for {name!r}, which is not a served model")
            self.demo_choices[name] = (self.models[name], extra)
        # The demo chart's data per choice: the model in `quality` whose curves it draws (None: it has none).
        self.quality_keys: dict[str, str | None] = {
            name: self._quality_key(name, choice_index) for name, (_, choice_index) in self.demo_choices.items()
        }

    def upstreams(self) -> dict[str, UpstreamModel]:
        """Served name -> the upstream API model behind it (adapted or not)."""
        out = {}
        for name, served in self.models.items():
            base = base_model(served.model)
            if isinstance(base, UpstreamModel):
                out[name] = base
        return out

    def redact(self, text: str) -> str:
        """``text`` with the key of every served upstream (its ``key_env`` variable's value) masked."""
        for upstream in self.upstreams().values():
            key = os.environ.get(upstream.config.key_env) if upstream.config.key_env else None
            text = text.replace(key, "***") if key else text
        return text

    def _search_pair(self, index: VectorIndex) -> tuple[ServedModel, VectorIndex]:
        """The served model that searches ``index``, and the index it searches: ``index`` itself, or, when
        it holds the unmapped vectors of an adapted model's base (an index built from the same upstream),
        those vectors mapped by the adaptor (embedded indexes only: the others cannot be mapped in memory)."""
        from matryoshka.indexes.faiss import FunnelIndex

        labels = {name: m.label for name, m in self.models.items()}
        bases = {name: m.model.base_label for name, m in self.models.items() if isinstance(m.model, AdaptedModel)}
        chosen = index_model(index.model_name, labels, allow_unnamed=len(self.models) == 1, bases=bases)
        served = self.models[chosen] if chosen else self.default
        if index.dim > served.dim:
            raise DimensionError(f"index vectors have {index.dim} dims but model {served.name!r} gives {served.dim}")
        if not isinstance(served.model, AdaptedModel) or not index.model_name or same_model(served.label, index.model_name):
            return served, index
        if not isinstance(index, FunnelIndex):
            raise StartupError(
                f"the index holds vectors of {index.model_name!r} without the adaptor, and only an embedded index "
                "(a directory) can be mapped on start; build the index with the adapted model instead"
            )
        adaptor = served.model.adaptor
        logger.info("mapping the index", extra={"event": "map_index", "model": served.name, "vectors": len(index)})
        return served, index.mapped(adaptor.apply, served.label)

    def demo_choice(self, name: str | None) -> tuple[ServedModel, VectorIndex]:
        """The demo's model ``name`` (default: the first) with its index, or a 404 naming the choices."""
        self.require_index()
        if name is None:
            return next(iter(self.demo_choices.values()))
        if name not in self.demo_choices:
            raise APIError(404, f"The demo has no model {name!r}; it has {', '.join(self.demo_choices)}.", "model",
                           "model_not_found")
        return self.demo_choices[name]

    def _quality_model(self) -> str | None:
        return self._quality_key(self.search_model.name, self.index)

    def _quality_key(self, name: str, index: VectorIndex | None) -> str | None:
        """The model in ``quality`` whose curves belong to the served model ``name`` searching ``index``:
        the served name, else the model the index records; ``None`` when neither has curves."""
        if not self.quality:
            return None
        for key in (name, index.model_name if index is not None else None):
            if key in self.quality:
                return key
        return None

    def get_model(self, name: str | None) -> ServedModel:
        if name is None:
            return self.default
        try:
            return self.models[name]
        except KeyError:
            raise APIError(
                404,
                f"The model `{name}` does not exist. Served models: {', '.join(self.models)}.",
                "model",
                "model_not_found",
            ) from None

    def require_index(self) -> VectorIndex:
        if self.index is None:
            raise APIError(
                404, "No search index is loaded; start the server with --index PATH.", None, "index_not_loaded"
            )
        return self.index

    async def encode_query(
        self, query: str, served: ServedModel | None = None, dim: int | None = None
    ) -> tuple[np.ndarray, int, float]:
        """One query as a ``dim``-wide unit row (default: the search model and the index's width), its
        token count and the milliseconds it took."""
        if not query.strip():
            raise APIError(400, "query must not be empty.", "query", "empty_input")
        if len(query) > self.config.max_input_chars:
            raise APIError(
                400, f"query is longer than {self.config.max_input_chars} characters.", "query", "input_too_long"
            )
        started = time.perf_counter()
        vectors, tokens = await (served or self.search_model).vectors([query])
        row = truncate(vectors, dim or self.require_index().dim)
        return row, int(tokens.sum()), (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        for served in self.models.values():
            await served.batcher.close()
        for upstream in self.upstreams().values():
            upstream.close()


async def server_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request`` (set by :func:`~matryoshka.serving.app.create_app`).

    ``async`` so that FastAPI calls it on the event loop: a plain function would cost every request a
    hop to its thread pool and back."""
    state: ServerState = request.app.state.serving
    return state


#: A route parameter annotated ``State`` receives the server's :class:`ServerState`.
State = Annotated[ServerState, Depends(server_state)]
