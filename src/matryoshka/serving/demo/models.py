"""The demo's model selector: the base, the base rotated onto the corpus's principal axes, and more models.

The seed article's own demonstration is the same query at the same small dimension under a plain
model and a Matryoshka one. The rotation choice costs nothing: it is fitted on the base index's
vectors (one SVD) and applied to them, and its queries go through the base model followed by the
rotation (:class:`~matryoshka.adapt.applied.AdaptedModel`, so an upstream API's model gets one too), so
it is served like any model. Every other choice encodes the glosses itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matryoshka.errors import InputError

if TYPE_CHECKING:
    from matryoshka.indexes.faiss import FunnelIndex
    from matryoshka.serving.served import Served

#: Suffix of the served name of the rotated base model.
ROTATION_SUFFIX = "+rotation"


def rotation_choice(model: Served, name: str, index: FunnelIndex) -> tuple[str, Served, FunnelIndex]:
    """``(served name, model, index)`` of ``model`` rotated onto the principal axes of ``index``'s vectors."""
    from matryoshka.adapt import AdaptedModel, Adaptor, fit_rotation

    fitted: list[Adaptor] = []

    def fit_and_rotate(vectors: np.ndarray) -> np.ndarray:
        fitted.append(fit_rotation(vectors))
        return fitted[0].apply(vectors)

    rotated_name = f"{name}{ROTATION_SUFFIX}"
    rotated_index = index.mapped(fit_and_rotate, rotated_name)
    return rotated_name, AdaptedModel(model, fitted[0], index.model_name or name), rotated_index


def demo_choices(
    model: Served,
    name: str,
    index: FunnelIndex,
    others: Sequence[tuple[str, Served]] = (),
    build: Callable[[Served, str], FunnelIndex] | None = None,
    rotation: bool = True,
) -> tuple[dict[str, Served], dict[str, FunnelIndex]]:
    """Served models and their demo indexes beyond the first: the rotation, then each of ``others``
    (``(name, model)``, indexed with ``build(model, name)``)."""
    models: dict[str, Served] = {}
    indexes: dict[str, FunnelIndex] = {}
    if rotation:
        rotated_name, rotated, rotated_index = rotation_choice(model, name, index)
        models[rotated_name], indexes[rotated_name] = rotated, rotated_index
    for other_name, other in others:
        if build is None:
            raise InputError("more demo models need a function that builds their index")
        models[other_name], indexes[other_name] = other, build(other, other_name)
    return models, indexes


def choices_quality(
    choices: Mapping[str, tuple[Served, FunnelIndex]],
    base_path: Path,
    own_paths: Mapping[str, Path] | None = None,
) -> dict[str, Any] | None:
    """The chart's curve for every demo choice (served name -> (model, its index)), measured at start-up
    with :func:`~matryoshka.serving.quality.lemma_recall` on the choice's own vectors and cached: the first
    choice beside its index at ``base_path``; a choice in ``own_paths`` (an ``--also`` model, which
    indexed the glosses itself) beside that index; any other (the rotation, whose vectors are derived
    from the first index's) beside ``base_path`` under its own name. ``None`` when no curve could be measured."""
    from matryoshka.serving.quality import cached_lemma_recall, merge_quality

    own = own_paths or {}
    parts = []
    for position, (name, (model, index)) in enumerate(choices.items()):
        if name in own:
            parts.append(cached_lemma_recall(model, index, name, own[name]))
        else:
            variant = "" if position == 0 else re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
            parts.append(cached_lemma_recall(model, index, name, base_path, variant=variant))
    return merge_quality(parts)
