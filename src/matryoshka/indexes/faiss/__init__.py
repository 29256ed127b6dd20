"""The embedded index: :class:`FunnelIndex`, an index directory that FAISS scans in this process.

Modules: ``index`` (the facade), ``store`` (the directory format and vector log), ``exact`` and
``approximate`` (scoring kernels), ``neighbours`` (the neighbour graph), ``prefixes`` (prefix views).
"""

from matryoshka.indexes.faiss.index import STORAGES, FunnelIndex, Storage

__all__ = ["STORAGES", "FunnelIndex", "Storage"]
