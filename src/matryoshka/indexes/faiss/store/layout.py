"""The index directory's layout: its file names, the manifest that lists them, and the checks a
manifest must pass before any data file is opened (see :mod:`matryoshka.indexes.faiss.store`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from matryoshka.errors import DimensionError, IndexCorruptError, InputError

FORMAT = "matryoshka-funnel-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
VECTORS = "vectors.bin"
VECTORS_V1 = "vectors.npy"  # format version 1: a .npy array
IDS = "ids.json"
TEXTS = "texts.json"
METADATA = "metadata.json"
_STORAGES = ("float32", "float16")
#: ``vectors.bin`` is checksummed in pieces of this many bytes (the manifest's ``chunk_bytes``).
CHUNK_BYTES = 64 << 20


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` of the index at ``path`` (no data files are opened)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no index at {root}")
    if not root.is_dir():
        raise IndexCorruptError(f"{root} is not an index directory")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        found = [name for name in (VECTORS, VECTORS_V1, IDS, TEXTS, METADATA) if (root / name).exists()]
        if found:  # the data is there, but it cannot be checked or read without the manifest
            raise IndexCorruptError(
                f"{manifest_path} is missing, though {root} holds {', '.join(found)}: the index cannot be "
                "read without it; restore it from a copy or rebuild the index (matryoshka index build)"
            )
        raise IndexCorruptError(f"{manifest_path} is missing: {root} is not an index, or its save never finished")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{manifest_path} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise IndexCorruptError(f"{manifest_path}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise IndexCorruptError(
            f"{manifest_path}: format version {version} is newer than this matryoshka reads ({FORMAT_VERSION})"
        )
    expected = {"model_name": str, "dim": int, "count": int, "storage": str, "stages": str, "files": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IndexCorruptError(f"{manifest_path}: field {key!r} is missing or not a {kind.__name__}")
    if manifest["dim"] < 1 or manifest["count"] < 0:
        raise IndexCorruptError(f"{manifest_path}: dim {manifest['dim']} / count {manifest['count']} out of range")
    if manifest["storage"] not in _STORAGES:
        raise IndexCorruptError(f"{manifest_path}: unknown storage {manifest['storage']!r}")
    vectors = vectors_file(manifest)
    unknown = set(manifest["files"]) - {vectors, IDS, TEXTS, METADATA}
    if unknown or not {vectors, IDS} <= set(manifest["files"]):
        raise IndexCorruptError(
            f"{manifest_path}: files must list {vectors}, {IDS} and optionally {TEXTS}, {METADATA}"
        )
    if vectors == VECTORS:
        _check_vectors_entry(manifest_path, manifest["files"][VECTORS], manifest)
    return manifest


def vectors_file(manifest: dict[str, Any]) -> str:
    """The name of the vectors file in an index of this manifest's format version."""
    return VECTORS_V1 if manifest.get("format_version") == 1 else VECTORS


def _check_vectors_entry(manifest_path: Path, meta: Any, manifest: dict[str, Any]) -> None:
    ok = (
        isinstance(meta, dict)
        and isinstance(meta.get("bytes"), int)
        and isinstance(meta.get("chunk_bytes"), int)
        and not isinstance(meta["chunk_bytes"], bool)
        and meta["chunk_bytes"] > 0
        and isinstance(meta.get("sha256_chunks"), list)
        and all(isinstance(h, str) for h in meta["sha256_chunks"])
    )
    if not ok:
        raise IndexCorruptError(
            f"{manifest_path}: the entry for {VECTORS} must hold 'bytes', 'chunk_bytes' (> 0) and 'sha256_chunks'"
        )
    row = manifest["dim"] * np.dtype(manifest["storage"]).itemsize
    if meta["bytes"] != manifest["count"] * row:
        raise IndexCorruptError(
            f"{manifest_path}: {VECTORS} is listed with {meta['bytes']} bytes, but count {manifest['count']} x dim "
            f"{manifest['dim']} {manifest['storage']} takes {manifest['count'] * row}"
        )
    if len(meta["sha256_chunks"]) != -(-meta["bytes"] // meta["chunk_bytes"]):
        raise IndexCorruptError(f"{manifest_path}: {VECTORS} lists the wrong number of chunk checksums")


def existing_manifest(path: Path, dim: int | None, model_name: str, create: bool) -> dict[str, Any] | None:
    """The manifest of the index at ``path``, checked against the ``dim`` and ``model_name`` an opener
    expects (either unchecked when not given); ``None`` when there is no index and ``create`` allows one.

    Raises:
        FileNotFoundError: nothing at ``path`` and ``create`` is false.
        DimensionError: ``dim`` differs from the stored one, or is not a positive integer for a new index.
        InputError: ``model_name`` differs from the stored one.
        IndexCorruptError: the manifest fails its checks, or (``create`` false) ``path`` holds files but no manifest.
    """
    if (path / MANIFEST).exists():
        manifest = read_manifest(path)
        if dim is not None and dim != manifest["dim"]:
            raise DimensionError(f"{path} holds {manifest['dim']}-dim vectors, not {dim}")
        if model_name and manifest["model_name"] and model_name != manifest["model_name"]:
            raise InputError(f"{path} was built with model {manifest['model_name']!r}, not {model_name!r}")
        return manifest
    if not create:
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            read_manifest(path)  # raises IndexCorruptError saying what is there instead (files, no manifest)
        raise FileNotFoundError(f"no index at {path}")
    if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DimensionError(f"creating an index at {path} needs its vector dimension (dim), got {dim!r}")
    return None
