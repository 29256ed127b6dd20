"""The retrieval contract every index engine follows: the interface, funnel stages, filters, result types.

A funnel scans a cheap view of every vector (a short prefix, its sign bits or int8 codes), keeps a
shortlist, and re-ranks it with the full vector. Exact full-dimension search is the one-stage
funnel ``PRESETS["exact"]``.

Modules: ``protocol`` (:class:`VectorIndex`, the one index interface), ``stages`` (:class:`Stage`,
parsing and presets), ``filters`` (metadata filters), ``types`` (:class:`Hit`, timings,
:class:`IndexInfo`). The engines live in :mod:`matryoshka.indexes`, the advisor in
:mod:`matryoshka.experiments.advise`. This package imports neither: ``FunnelIndex``,
``read_manifest``, ``advise`` and their kin are still importable from here (the package's public
face before the engines moved) and are looked up in their homes on first use.

Example:
    >>> from matryoshka.retrieval import parse_stages
    >>> from matryoshka.indexes import open_index
    >>> index = open_index("faiss:///tmp/docs", dim=384, model_name="all-MiniLM-L6-v2")
    >>> index.search(query_vectors, k=10, stages=parse_stages("64:binary:400,full:float32:10"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matryoshka._lazy import lazy_getattr

if TYPE_CHECKING:
    from matryoshka.errors import IndexCorruptError
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
    **dict.fromkeys(
        ["CODECS", "FULL", "PRESETS", "Codec", "Stage", "bytes_per_vector", "format_stages", "parse_stages",
         "resolve_stages", "validate_stages"],
        "matryoshka.retrieval.stages",
    ),
    "IndexCorruptError": "matryoshka.errors",
    "VectorIndex": "matryoshka.retrieval.protocol",
    **dict.fromkeys(["Hit", "IndexInfo", "StageTiming"], "matryoshka.retrieval.types"),
    # Names that moved up a layer: resolved by name on first use, so this package imports nothing above it.
    **dict.fromkeys(["AdviceReport", "AdviceRow", "advise"], "matryoshka.experiments.advise"),
    **dict.fromkeys(["STORAGES", "FunnelIndex", "Storage"], "matryoshka.indexes.faiss.index"),
    "read_manifest": "matryoshka.indexes.faiss.store",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CODECS", "FULL", "PRESETS", "STORAGES", "AdviceReport", "AdviceRow", "Codec", "FunnelIndex", "Hit",
    "IndexCorruptError", "IndexInfo", "Stage", "StageTiming", "Storage", "VectorIndex", "advise", "bytes_per_vector",
    "format_stages", "parse_stages", "read_manifest", "resolve_stages", "validate_stages",
]
