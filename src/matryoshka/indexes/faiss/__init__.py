"""The embedded index: :class:`FunnelIndex`, an index directory that FAISS scans in this process.

Modules: ``index`` (the facade), ``records`` (ids, texts, metadata beside the vectors), ``buffer``
(the growable vector buffer), ``views`` (which derived views a search reads, built and evicted),
``scoring`` (the funnel's scan, re-ranks and top-k), ``checkpoints`` (when a directory is saved, and
the vector log meanwhile), ``store/`` (the directory format), ``exact`` and ``approximate`` (scan
kernels), ``neighbours`` (the neighbour graph), ``prefixes`` (unit prefixes of stored rows).
"""

from matryoshka.indexes.faiss.index import STORAGES, FunnelIndex, Storage

__all__ = ["STORAGES", "FunnelIndex", "Storage"]
