"""Ingestion: encode a corpus into any index, two ways.

- :func:`encode_to_index` (``matryoshka encode --corpus --index``, :mod:`.stream`): add to an index,
  resumably, with Ray Data across a cluster or in this process; ids already stored are skipped.
- :func:`rebuild_index` (``matryoshka index build``, :mod:`.rebuild`): replace an index's documents
  with a corpus, all at once (the old ones stay until the new ones are complete).

:mod:`.progress` draws the progress of both.

Example:
    >>> from matryoshka.ingest import encode_to_index
    >>> report = encode_to_index("corpus.jsonl", "faiss:///data/index", num_workers=4)
"""

from matryoshka.data.corpus import read_documents
from matryoshka.ingest.progress import encode_chunks, piped_progress
from matryoshka.ingest.rebuild import check_build_target, rebuild_index
from matryoshka.ingest.stream import LOCAL_OBJECT_STORE_BYTES, EncodeReport, encode_to_index, free_ids

__all__ = [
    "LOCAL_OBJECT_STORE_BYTES", "EncodeReport", "check_build_target", "encode_chunks", "encode_to_index", "free_ids",
    "piped_progress", "read_documents", "rebuild_index",
]
