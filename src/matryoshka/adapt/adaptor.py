"""The adaptor type: a square linear map whose prefixes serve as Matryoshka dimensions, and its file.

An adaptor is applied to a model's unit vectors, followed by re-normalization. It is stored as one
safetensors file (metadata: method and fit facts), so vectors of any source (a local model, a hosted
API) can be mapped with :meth:`Adaptor.apply`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from matryoshka.embeddings.vectors import truncate, unit_rows
from matryoshka.errors import AdaptError
from matryoshka.files import write_atomic

#: ``auto`` fits every candidate, validates them and keeps the best that earns its place.
Method = Literal["auto", "rotation", "learned"]
METHODS: tuple[str, ...] = get_args(Method)
#: Name of the adaptor file inside an adapted model directory, and the default standalone name.
ADAPTOR_FILE = "adaptor.safetensors"


def checked_unit_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """``vectors`` as float32 unit rows (:func:`~matryoshka.embeddings.vectors.unit_rows`), refused first
    with an :class:`AdaptError` naming ``what`` when empty, non-finite or holding a zero row (no direction)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise AdaptError(f"{what} must be a non-empty 2-d array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise AdaptError(f"{what} hold NaN or infinite values")
    if (np.linalg.norm(array, axis=1) == 0).any():
        raise AdaptError(f"{what} hold an all-zero row, which has no direction")
    return unit_rows(array)


@dataclass
class Adaptor:
    """A linear map ``x -> normalize(W @ normalize(x))`` whose prefixes serve as Matryoshka dimensions.

    Attributes:
        weight: ``(dim, dim)`` matrix; rows are the new axes, most important first.
        method: ``rotation`` or ``learned``.
        info: JSON-ready facts about the fit (source model, corpus size, seconds, losses...).
    """

    weight: np.ndarray
    method: str = "rotation"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if self.weight.ndim != 2 or self.weight.shape[0] != self.weight.shape[1]:
            raise AdaptError(f"an adaptor weight must be a square matrix, got shape {self.weight.shape}")
        if not np.isfinite(self.weight).all():
            raise AdaptError("the adaptor weight holds NaN or infinite values")

    @property
    def dim(self) -> int:
        """Input and output dimension."""
        return int(self.weight.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Map vectors of any source (normalized first) and return unit vectors of the same width."""
        unit = checked_unit_rows(vectors)
        if unit.shape[1] != self.dim:
            raise AdaptError(f"the adaptor maps {self.dim}-d vectors, these are {unit.shape[1]}-d")
        return truncate(unit @ self.weight.T)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adaptor as one safetensors file (atomically); metadata holds method and info."""
        from safetensors.numpy import save

        data = save({"weight": np.ascontiguousarray(self.weight)},
                    metadata={"format": "matryoshka-adaptor/1", "method": self.method, "info": json.dumps(self.info)})
        target = Path(path)
        write_atomic(target, data)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Adaptor:
        """Read a file written by :meth:`save` (or an adapted model directory holding one)."""
        from safetensors import SafetensorError, safe_open

        source = Path(path)
        if source.is_dir():
            source = source / ADAPTOR_FILE
        if not source.is_file():
            raise AdaptError(f"no adaptor file at {source}")
        try:
            with safe_open(str(source), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                if "weight" not in handle.keys():  # noqa: SIM118 - safetensors handles have keys(), no __contains__
                    raise AdaptError(f"{source} holds no 'weight' tensor")
                weight = handle.get_tensor("weight")
        except (SafetensorError, OSError) as exc:
            raise AdaptError(f"{source} is not a readable safetensors file: {exc}") from exc
        if metadata.get("format") != "matryoshka-adaptor/1":
            raise AdaptError(f"{source} is not a matryoshka adaptor (format {metadata.get('format')!r})")
        try:
            info = json.loads(metadata.get("info", "{}"))
        except json.JSONDecodeError as exc:
            raise AdaptError(f"{source} has unreadable metadata: {exc}") from exc
        return cls(weight=weight, method=metadata.get("method", "rotation"), info=info)


def load_vectors(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 2-d numeric ``.npy`` file (never a pickle) as float32, with errors that name the file."""
    source = Path(path)
    if not source.is_file():
        raise AdaptError(f"no such file: {source}")
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise AdaptError(f"{source} is not a readable .npy array: {exc}") from None
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise AdaptError(f"{source} must hold a 2-d numeric array, got {array.dtype} with shape {array.shape}")
    return array.astype(np.float32)


