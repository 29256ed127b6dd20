"""The one function that names a model: :func:`model_label`.

An index records the label of the model that made its vectors; the server matches served models to
an index by label, ``evaluate`` and the server show :func:`short_name` of it, and the demo's cache key
is :func:`model_fingerprint`. So a model has the same identity everywhere:

- the packaged default (``None``, ``"default"``, ``"all-MiniLM-L6-v2"`` or its directory): ``"all-MiniLM-L6-v2"``;
- a local directory: its absolute, resolved path;
- anything else (a hub name): the name as given.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["model_fingerprint", "model_label", "same_model", "short_name"]


def model_label(source: str | os.PathLike[str] | None) -> str:
    """The identity of the model ``source`` names (see the module docstring)."""
    from matryoshka.models.loading import DEFAULT_MODEL, packaged_model_path, resolve_model_name

    packaged = str(packaged_model_path())
    if resolve_model_name(source) == packaged:
        return DEFAULT_MODEL
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        return DEFAULT_MODEL if str(resolved) == str(Path(packaged).resolve()) else str(resolved)
    return text


def short_name(label: str) -> str:
    """What tables and the server show for a label: a directory's own name, else the label itself."""
    path = Path(label)
    return path.name if path.is_absolute() and path.name else label


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two recorded names or sources are the same model (by label)."""
    return bool(a) and bool(b) and model_label(a) == model_label(b)


def model_fingerprint(label: str) -> str:
    """The label, plus for a local directory a digest of its files' names, sizes and change times, so a
    model retrained in the same directory gets a new fingerprint (the demo's cache key)."""
    path = Path(label)
    if not path.is_dir():
        return label
    digest = hashlib.sha1()
    # exports/ holds ONNX/OpenVINO copies made from the weights (runtime.export_dir), not a change of model
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).parts[0] != "exports"):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{label}@{digest.hexdigest()[:16]}"
