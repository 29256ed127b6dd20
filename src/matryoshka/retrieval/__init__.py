"""Adaptive retrieval over Matryoshka embeddings: funnel search, persistent indexes, a config advisor.

A funnel scans a cheap view of every vector (a short prefix, its sign bits or int8 codes), keeps a
shortlist, and re-ranks it with the full vector. Exact full-dimension search is the one-stage
funnel ``PRESETS["exact"]`` of the same index.

Example:
    >>> from matryoshka.retrieval import FunnelIndex, parse_stages
    >>> index = FunnelIndex.build(model, texts, model_name="all-MiniLM-L6-v2")
    >>> index.search(query_vectors, k=10, stages=parse_stages("64:binary:400,full:float32:10"))
"""

from matryoshka.retrieval.advisor import AdviceReport, AdviceRow, advise
from matryoshka.retrieval.index import STORAGES, FunnelIndex, Hit, Storage
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
from matryoshka.retrieval.store import IndexCorruptError, read_manifest

__all__ = [
    "CODECS",
    "FULL",
    "PRESETS",
    "STORAGES",
    "AdviceReport",
    "AdviceRow",
    "Codec",
    "FunnelIndex",
    "Hit",
    "IndexCorruptError",
    "Stage",
    "Storage",
    "advise",
    "bytes_per_vector",
    "format_stages",
    "parse_stages",
    "read_manifest",
    "resolve_stages",
    "validate_stages",
]
