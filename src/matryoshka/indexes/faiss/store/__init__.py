"""Index directories on disk: plain files, checksummed, replaced atomically, never pickled.

An index directory (format version 2) holds::

    manifest.json   format, version, model name, dim, count, storage dtype, stages, checksums per file
    vectors.bin     (count, dim) unit vectors, raw little-endian float32 or float16, row after row
    ids.json        JSON list of ``count`` document ids
    texts.json      JSON list of ``count`` texts or nulls (only when texts were given)
    metadata.json   JSON list of ``count`` flat objects or nulls (only when metadata was given)

The manifest records ``sha256`` and ``bytes`` of every JSON file, and for ``vectors.bin`` its
``bytes`` and the sha256 of each ``chunk_bytes`` (64 MiB) piece in ``sha256_chunks``, so a save
that only appends rows hashes only the new bytes (and the last, partial chunk).

A save writes a complete new directory next to the target and swaps it into place, so a crash at
any moment leaves either the old index or the new one, never half of one. ``vectors.bin`` is the
exception that makes appends cheap: it is append-only, and a save that only adds rows hard-links
the current file into the new directory and appends to it (:class:`VectorLog`, which an index
saved to a directory uses to stream appended rows to disk while they are ingested). Bytes past
the manifest's ``bytes`` are an append no save has committed yet; a load reads only the committed
prefix, which nothing ever rewrites, so the old index stays intact however a save ends. Any other
change (a delete, a save to another place) writes a new ``vectors.bin``. Only the holder of an
exclusive ``flock`` on the file appends to it, and the next one cuts an uncommitted tail first.

A load checks every file against the manifest and raises :class:`IndexCorruptError` on any
difference. Format version 1 (``vectors.npy``, a ``.npy`` array with one sha256) still loads; the
next save writes version 2.

Modules: ``layout`` (file names, the manifest and its checks), ``files`` (checksummed files, the raw
vectors file), ``directory`` (writing and reading a whole directory atomically), ``log``
(:class:`VectorLog`) and ``tails`` (its ``O_DIRECT`` and page-cache writers).
"""

from matryoshka.errors import IndexCorruptError, StaleLogError
from matryoshka.indexes.faiss.store.directory import (
    STALE_UNNAMED_S,
    StoredIndex,
    read_index,
    remove_stale_staging,
    write_index,
)
from matryoshka.indexes.faiss.store.layout import (
    CHUNK_BYTES,
    FORMAT,
    FORMAT_VERSION,
    IDS,
    MANIFEST,
    METADATA,
    TEXTS,
    VECTORS,
    VECTORS_V1,
    existing_manifest,
    read_manifest,
    vectors_file,
)
from matryoshka.indexes.faiss.store.log import VectorLog
from matryoshka.indexes.faiss.store.tails import DIRECT_IO

__all__ = [
    "CHUNK_BYTES", "DIRECT_IO", "FORMAT", "FORMAT_VERSION", "IDS", "MANIFEST", "METADATA", "STALE_UNNAMED_S", "TEXTS",
    "VECTORS", "VECTORS_V1", "IndexCorruptError", "StaleLogError", "StoredIndex", "VectorLog", "existing_manifest",
    "read_index", "read_manifest", "remove_stale_staging", "vectors_file", "write_index",
]
