"""What a server serves: models loaded from its config (local ones, or an upstream API), an adaptor
applied to them, their identities, and the dimensions each may safely be cut to.

A served model's ``matryoshka_dimensions`` (what ``/v1/models`` lists and ``--strict-dimensions``
enforces) come from, in order: the adapt report of the adaptor it serves, the ``config.json`` of an
adapted model directory (``adapt`` writes it there), or an ``evaluate`` results file naming the model
(the dims keeping ``safe_share`` of full-size quality on every task it holds). Otherwise they are unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np

from matryoshka.adapt.applied import AdaptedModel, adaptor_fingerprint, load_adapted
from matryoshka.adapt.model import model_dimensions
from matryoshka.errors import StartupError
from matryoshka.evaluation.results import SAFE_SHARE, safe_dimensions
from matryoshka.models.identity import model_label
from matryoshka.models.upstream.model import UpstreamModel
from matryoshka.serving.config import ServeConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka.models.loading import AnyModel

    #: A served model: a local one, an upstream API, or either followed by an adaptor.
    Served: TypeAlias = SentenceTransformer | UpstreamModel | AdaptedModel

__all__ = [  # and, for type checkers only, ``Served``
    "as_model",
    "base_model",
    "cache_reader",
    "config_labels",
    "load_config_models",
    "quality_dimensions",
    "served_dimensions",
    "served_label",
    "upstream_of_label",
    "with_adaptor",
]


def as_model(model: Served) -> AnyModel:
    """``model`` typed for :func:`matryoshka.embeddings.encode` and ``model_dimension``: they take any object
    with the ``encode`` surface, but are typed for the models layer's own kinds, which cannot name
    :class:`AdaptedModel` (a layer above)."""
    return cast("AnyModel", model)


def served_label(model: Served, source: str) -> str:
    """The identity of a served model (what an index of its vectors records): an adapted or upstream
    model's own label, else :func:`~matryoshka.models.identity.model_label` of its source."""
    if isinstance(model, (AdaptedModel, UpstreamModel)):
        return model.label
    return model_label(source)


def base_model(model: Served) -> object:
    """The model under an adaptor (or ``model`` itself): what holds the tokenizer, or calls an API."""
    return model.model if isinstance(model, AdaptedModel) else model


def cache_reader(model: Served) -> Callable[[list[str]], np.ndarray | None] | None:
    """For a model over an upstream API with a vector cache: a function giving the served full-size rows
    (the adaptor applied, if any) of texts the cache holds in memory, else ``None``; ``None`` for other models."""
    base = base_model(model)
    if not isinstance(base, UpstreamModel) or base.cache is None:
        return None
    if not isinstance(model, AdaptedModel):
        return base.remembered
    adaptor = model.adaptor

    def adapted(texts: list[str]) -> np.ndarray | None:
        full = base.remembered(texts)
        return None if full is None else adaptor.apply(full)

    return adapted


def upstream_of_label(label: str) -> tuple[str, str] | None:
    """``(url, model)`` of an upstream label ``<url>#<model>``; ``None`` for any other label."""
    url, sep, name = label.rpartition("#")
    return (url, name) if sep and "://" in url and name else None


def load_config_models(
    config: ServeConfig, load_local: Callable[[str], Any] | None = None
) -> dict[str, Served]:
    """Load what ``config`` serves: its upstream (one model) or each of its ``models`` with ``load_local``
    (default :func:`~matryoshka.models.loading.load_model`), then its adaptor on the one model."""
    from matryoshka.models.loading import load_model

    specs = config.model_specs()
    models: dict[str, Served]
    if config.upstream is not None:
        models = {specs[0][0]: load_model(upstream=config.upstream)}
    else:
        models = {name: (load_local or load_model)(source) for name, source in specs}
    if config.adaptor is not None:
        name, source = specs[0]
        models[name] = with_adaptor(models[name], config.adaptor, model_label(source), config.safe_share)
    return models


def with_adaptor(model: Served, path: str, base_label: str, share: float = SAFE_SHARE) -> AdaptedModel:
    """``model`` followed by the adaptor file at ``path`` (a :class:`StartupError` when it does not fit)."""
    from matryoshka.errors import AdaptError

    try:
        return load_adapted(model, path, base_label, share)
    except AdaptError as exc:
        raise StartupError(f"--adaptor {path}: {exc}") from None


def config_labels(config: ServeConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Before any model loads: ``(served name -> label, served name -> base label)``, the second only for
    the adapted model (its index may hold the unmapped vectors, which the server maps on start)."""
    from matryoshka.adapt.adaptor import Adaptor
    from matryoshka.errors import AdaptError

    labels = {alias: model_label(source) for alias, source in config.model_specs()}
    bases: dict[str, str] = {}
    if config.adaptor is not None:
        name = next(iter(labels))
        try:
            digest = adaptor_fingerprint(Adaptor.load(config.adaptor))
        except AdaptError as exc:
            raise StartupError(f"--adaptor {config.adaptor}: {exc}") from None
        bases[name] = labels[name]
        labels[name] = f"{labels[name]}+adaptor@{digest}"
    return labels, bases


def quality_dimensions(
    quality: Mapping[str, Mapping[str, Mapping[str, float]]] | None, names: list[str], full_dim: int,
    share: float = SAFE_SHARE,
) -> list[int] | None:
    """The safe dims of the first of ``names`` that ``quality`` (``{model: {task: {dim: value}}}``) holds:
    those that keep ``share`` of full-size quality on every task; ``None`` when it holds none of them.

    A task whose scores do not reach the model's full size, or whose full-size score is not positive,
    says nothing about a share of it and is left out (it may still draw the demo's chart).
    """
    for name in names:
        kept: set[int] | None = None
        for by_dim in ((quality or {}).get(name) or {}).values():
            scores = {int(d): float(v) for d, v in by_dim.items()}
            if max(scores, default=0) != full_dim or not scores[full_dim] > 0:
                continue
            dims = set(safe_dimensions(scores, share))
            kept = dims if kept is None else kept & dims
        if kept is not None:
            return sorted(kept)
    return None


def served_dimensions(
    model: Served, name: str, label: str, full_dim: int,
    quality: Mapping[str, Mapping[str, Mapping[str, float]]] | None, share: float = SAFE_SHARE,
) -> list[int] | None:
    """A served model's ``matryoshka_dimensions`` (see the module docstring), at most ``full_dim``."""
    dims: list[int] | None = None
    if isinstance(model, AdaptedModel):
        dims = model.matryoshka_dimensions
    if dims is None and Path(label).is_absolute() and Path(label).is_dir():
        dims = model_dimensions(label)
    if dims is None:
        from matryoshka.models.identity import short_name

        dims = quality_dimensions(quality, [name, label, short_name(label)], full_dim, share)
    return None if dims is None else [d for d in dims if d <= full_dim]
