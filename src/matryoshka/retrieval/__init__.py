"""Adaptive retrieval over Matryoshka embeddings: funnel search, persistent indexes, a config advisor.

A funnel scans a cheap view of every vector (a short prefix, its sign bits or int8 codes), keeps a
shortlist, and re-ranks it with the full vector. Exact full-dimension search is the one-stage
funnel ``PRESETS["exact"]`` of the same index.

Modules: ``protocol`` (:class:`VectorIndex`, the one index interface), ``types`` (:class:`Hit`,
timings, :class:`IndexInfo`), ``stages``, ``filters``, ``index`` (:class:`FunnelIndex`, the embedded
FAISS index), ``store`` (its directory format), ``advisor``. Names are imported on first use, so the
database backends can use ``stages``, ``filters`` and ``types`` without loading FAISS.

Example:
    >>> from matryoshka.retrieval import FunnelIndex, parse_stages
    >>> index = FunnelIndex.build(model, texts, model_name="all-MiniLM-L6-v2")
    >>> index.search(query_vectors, k=10, stages=parse_stages("64:binary:400,full:float32:10"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matryoshka.errors import IndexCorruptError
    from matryoshka.experiments.advise import AdviceReport, AdviceRow, advise
    from matryoshka.indexes.faiss.index import STORAGES, FunnelIndex, Storage
    from matryoshka.indexes.faiss.store import read_manifest
    from matryoshka.retrieval.protocol import VectorIndex
    from matryoshka.retrieval.stages import (
        CODECS,
        FULL,
        PRESETS,
        Codec,
        Stage,
        bytes_per_vector,
        format_stages,
        parse_stages,
        resolve_stages,
        validate_stages,
    )
    from matryoshka.retrieval.types import Hit, IndexInfo, StageTiming

_LAZY = {
    **dict.fromkeys(["AdviceReport", "AdviceRow", "advise"], "matryoshka.experiments.advise"),
    **dict.fromkeys(["STORAGES", "FunnelIndex", "Storage"], "matryoshka.indexes.faiss.index"),
    **dict.fromkeys(
        ["CODECS", "FULL", "PRESETS", "Codec", "Stage", "bytes_per_vector", "format_stages", "parse_stages",
         "resolve_stages", "validate_stages"],
        "matryoshka.retrieval.stages",
    ),
    "IndexCorruptError": "matryoshka.errors",
    "read_manifest": "matryoshka.indexes.faiss.store",
    "VectorIndex": "matryoshka.retrieval.protocol",
    **dict.fromkeys(["Hit", "IndexInfo", "StageTiming"], "matryoshka.retrieval.types"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'matryoshka.retrieval' has no attribute {name!r}")


__all__ = [
    "CODECS", "FULL", "PRESETS", "STORAGES", "AdviceReport", "AdviceRow", "Codec", "FunnelIndex", "Hit",
    "IndexCorruptError", "IndexInfo", "Stage", "StageTiming", "Storage", "VectorIndex", "advise", "bytes_per_vector",
    "format_stages", "parse_stages", "read_manifest", "resolve_stages", "validate_stages",
]
