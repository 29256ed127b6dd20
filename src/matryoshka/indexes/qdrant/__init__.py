"""Qdrant backend: the funnel as one Query API request, on a Qdrant server or in qdrant-client's local mode.

Each document is one point with named vectors:

* ``full``: the full unit vector (cosine). It re-ranks every funnel and answers exact searches, so
  it gets no HNSW graph (``m=0``): those searches scan it, which is what they ask for.
* ``prefix_{d}``: the first ``d`` values re-normalized, one per configured prefix dim (cosine, with
  the server's default HNSW index, which the shortlist uses).

With ``binary=True`` (the default) every named vector also carries binary quantization kept in RAM,
so a ``binary`` shortlist stage reads sign bits (1 bit per dim) instead of floats; a binary stage
on the full dim reads the quantized ``full`` vector, so the ``binary`` preset works too.

A funnel ``[Stage(d, codec, keep), Stage(FULL, "float32", k)]`` becomes one request: a ``prefetch``
on ``prefix_{d}`` keeps ``keep`` candidates, and the main query re-scores them with ``full``.
``stages=None`` is an exact scan of ``full``. Point ids are ``uuid5`` of the document id (Qdrant
only accepts integers and UUIDs); the payload holds ``id``, ``text`` and the flat ``metadata``
object, so a filter ``{"lang": "en"}`` becomes the condition ``metadata.lang == "en"``.

URLs (no secrets: the API key comes from the ``QDRANT_API_KEY`` environment variable only)::

    qdrant://HOST[:PORT]/COLLECTION      server over HTTP (port 6333 unless given; ?timeout=SECONDS)
    qdrants://HOST[:PORT]/COLLECTION     server over HTTPS
    qdrant+local:///abs/dir?collection=NAME     qdrant-client local mode, stored in a directory
    qdrant+local:relative/dir?collection=NAME   (collection defaults to ``matryoshka``)

Local mode runs in this process (no server needed; the tests use it). It always scans with exact
float arithmetic: it ignores quantization, HNSW settings and search params, so a ``binary`` stage
behaves like a float one there; ties in score come back in no guaranteed order (on a server too),
and it suits up to some ten thousand points. One process at a time may open a local directory
(backends of that process on it share one client).

Replacing every document (:meth:`QdrantIndex.replace_all`, what ``matryoshka index build`` runs):
Qdrant has no transactions, so the documents are loaded into a new collection and the name is then
moved to it, as an alias, in one request that Qdrant applies atomically: searches see the old
documents or all of the new ones, and a failed load leaves the old collection. The one exception is
the first replacement of a plain collection (one that no replacement made), which no alias request
can replace: it is deleted and the alias created right after, and searches in between fail with an
error (they never answer with nothing found).
"""

from matryoshka.indexes.qdrant.connection import API_KEY_ENV, DEFAULT_COLLECTION, QdrantTarget, parse_url
from matryoshka.indexes.qdrant.index import DEFAULT_PREFIX_DIMS, QdrantIndex
from matryoshka.indexes.qdrant.points import point_id

__all__ = ["API_KEY_ENV", "DEFAULT_COLLECTION", "DEFAULT_PREFIX_DIMS", "QdrantIndex", "QdrantTarget", "parse_url", "point_id"]
