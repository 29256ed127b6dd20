"""Any model followed by an adaptor, with sentence-transformers' ``encode`` surface.

An upstream API cannot be saved as a sentence-transformers directory with the adaptor inside, so
:class:`AdaptedModel` applies it at encode time instead: the model's full-size vectors, then
:meth:`Adaptor.apply <matryoshka.adapt.adaptor.Adaptor.apply>` (unit rows). Truncation, re-normalization
and quantization then happen downstream as for any model. It wraps a local ``SentenceTransformer`` the
same way (``serve --model M --adaptor PATH``).

The adaptor's safe dimensions (``matryoshka_dimensions``) follow from the held-out scores ``adapt``
stored in the adaptor file, or else from the ``adapt-report.json`` saved beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from matryoshka.adapt.adaptor import AdaptError, Adaptor
from matryoshka.adapt.report import REPORT_STEM
from matryoshka.evaluation.results import SAFE_SHARE, safe_dimensions

__all__ = ["AdaptedModel", "Encoder", "adaptor_dimensions", "adaptor_fingerprint", "dimension_list", "load_adapted"]


class Encoder(Protocol):
    """What :class:`AdaptedModel` needs of the model it wraps (a SentenceTransformer, an UpstreamModel)."""

    def encode(
        self, sentences: list[str], /, *, batch_size: int, convert_to_numpy: bool, show_progress_bar: bool | None,
        prompt_name: str | None,
    ) -> Any: ...

    def get_embedding_dimension(self) -> int | None: ...


def adaptor_fingerprint(adaptor: Adaptor) -> str:
    """A short digest of the adaptor's weights: part of an adapted model's label."""
    return hashlib.sha256(np.ascontiguousarray(adaptor.weight).tobytes()).hexdigest()[:12]


class AdaptedModel:
    """``model``'s full-size vectors mapped by ``adaptor`` (unit rows of the same width).

    Attributes:
        model: the wrapped model.
        adaptor: the map applied to its vectors.
        base_label: the wrapped model's identity (what an index of its unmapped vectors records).
        matryoshka_dimensions: the adaptor's safe dimensions, ``None`` when unknown.
    """

    def __init__(
        self, model: Encoder, adaptor: Adaptor, base_label: str, matryoshka_dimensions: list[int] | None = None
    ) -> None:
        width = model.get_embedding_dimension()
        if width is not None and int(width) != adaptor.dim:
            raise AdaptError(f"the adaptor maps {adaptor.dim}-d vectors, the model {base_label!r} gives {width}-d")
        self.model, self.adaptor, self.base_label = model, adaptor, base_label
        self.matryoshka_dimensions = matryoshka_dimensions

    @property
    def label(self) -> str:
        """``<base label>+adaptor@<digest of the weights>``: another adaptor is another model."""
        return f"{self.base_label}+adaptor@{adaptor_fingerprint(self.adaptor)}"

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        prompt_name: str | None = None,
        normalize_embeddings: bool = False,
        **ignored: Any,
    ) -> np.ndarray:
        """Adapted unit vectors, one row per text (a single row for one string); always numpy float32.

        The adaptor's output is unit length already, so ``normalize_embeddings`` changes nothing.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        if not texts:
            return np.zeros((0, self.adaptor.dim), dtype=np.float32)
        full = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                 show_progress_bar=show_progress_bar, prompt_name=prompt_name)
        mapped = self.adaptor.apply(np.asarray(full, dtype=np.float32))
        return mapped[0] if single else mapped

    def get_embedding_dimension(self) -> int:
        return self.adaptor.dim

    def __repr__(self) -> str:
        return f"AdaptedModel({self.label!r}, method={self.adaptor.method!r})"


def _report_paths(path: Path) -> list[Path]:
    """Where ``adapt`` saves the report of the adaptor at ``path``: ``adapt-report.json`` beside it (a
    directory's, or ``--out DIR``'s), or ``<stem>.adapt-report.json`` (``--out FILE.safetensors``)."""
    if path.is_dir():
        return [path / f"{REPORT_STEM}.json"]
    return [path.with_name(f"{path.stem}.{REPORT_STEM}.json"), path.with_name(f"{REPORT_STEM}.json")]


def adaptor_dimensions(
    adaptor: Adaptor, path: str | os.PathLike[str] | None = None, share: float = SAFE_SHARE
) -> list[int] | None:
    """The adaptor's safe dimensions at ``share``: from the held-out scores ``adapt`` stores in the
    adaptor's metadata, else from the report saved beside the file at ``path``; ``None`` when neither
    has them (or the full-size score is not positive)."""
    stored = adaptor.info.get("validated")
    if isinstance(stored, dict) and stored.get("held_out_scores") is not None:
        return _safe(stored["held_out_scores"], share, "the adaptor's metadata")
    for report in _report_paths(Path(path)) if path is not None else []:
        if report.is_file():
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
                scores = data["validation"][data["chosen"]][data["metric"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise AdaptError(f"{report} is not a readable adapt report: {exc}") from None
            return _safe(scores, share, str(report))
    return None


def _safe(scores: Any, share: float, where: str) -> list[int] | None:
    try:
        by_dim = {int(d): float(v) for d, v in scores.items()}
    except (AttributeError, TypeError, ValueError):
        raise AdaptError(f"the held-out scores in {where} are not a {{dim: score}} mapping") from None
    return safe_dimensions(by_dim, share) if by_dim and by_dim[max(by_dim)] > 0 else None


def dimension_list(value: Any, where: str) -> list[int]:
    """A stated ``matryoshka_dimensions`` value, sorted, or an :class:`AdaptError` naming ``where`` it was read."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise AdaptError(f"matryoshka_dimensions in {where} must be a list of positive integers, got {value!r}")
    return sorted(value)


def load_adapted(
    model: Encoder, path: str | os.PathLike[str], base_label: str, share: float = SAFE_SHARE
) -> AdaptedModel:
    """``model`` followed by the adaptor at ``path`` (an adaptor file, or a directory holding
    ``adaptor.safetensors``), with the adaptor's safe dimensions at ``share``."""
    adaptor = Adaptor.load(path)
    return AdaptedModel(model, adaptor, base_label, adaptor_dimensions(adaptor, path, share))
