"""Add a corpus to any index, resumably: Ray Data across a cluster, or this process.

The driver reads the corpus, asks the backend which ids it already holds and drops them (so a re-run
after a crash resumes instead of starting over), then streams the remaining ``(id, text)`` rows
through a pool of Ray actors that each load the model once and return full-size unit vectors. Results
come back to the driver as they are ready and each batch of ``write_batch`` rows is one backend upsert:
a crash loses at most the batches in flight, and since writes are upserts by id a re-run never
duplicates a document. Backends derive the Matryoshka prefixes from the stored full vectors.

Example:
    >>> from matryoshka.ingest import encode_to_index
    >>> report = encode_to_index("corpus.jsonl", "faiss:///data/index", num_workers=4)
    >>> report.written, report.skipped_existing
    (5183, 0)

Cluster notes: with ``ray_address`` (or ``RAY_ADDRESS``) set the job joins that cluster, otherwise a
local Ray instance with a capped object store is started and shut down afterwards. The model is
loaded by name on every worker: a hub name needs hub access (or a warm cache) on every node, and a
local model directory works on a cluster only if every node sees the same path (a shared
filesystem). The driver also loads the model once, to check its dimension against the backend before
any encoding starts. A local cluster's workers inherit the driver's environment (``HF_HUB_OFFLINE``
and so on); a remote cluster's workers use the cluster's own.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from matryoshka.data.corpus import read_documents
from matryoshka.errors import InputError, MissingDependencyError
from matryoshka.ingest.progress import progress

if TYPE_CHECKING:
    from matryoshka.models.upstream import UpstreamModel
    from matryoshka.retrieval.protocol import VectorIndex

__all__ = ["LOCAL_OBJECT_STORE_BYTES", "EncodeReport", "encode_to_index", "free_ids"]

#: Object store size of a local Ray instance started by :func:`encode_to_index` (Ray's default is
#: 30% of RAM, too much next to other jobs).
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
#: Ids per ``backend.existing`` call when looking for what a previous run already wrote.
EXISTING_CHUNK = 10_000

#: One input document: ``(id, text)`` or ``(id, text, metadata)``.
Document = tuple[str, str] | tuple[str, str, Mapping[str, Any] | None]


@dataclass(frozen=True)
class EncodeReport:
    """What one :func:`encode_to_index` call did.

    Attributes:
        total: documents in the input.
        skipped_existing: documents already in the backend, not encoded again.
        written: documents encoded and written by this call.
        seconds: wall time of the whole call.
        workers: encoding actors used (0 when nothing was left to encode).
    """

    total: int
    skipped_existing: int
    written: int
    seconds: float
    workers: int


class _Encoder:
    """A Ray Data actor: loads the model once, then turns ``{"id", "text"}`` batches into unit vectors."""

    def __init__(self, model_name: str | None, batch_size: int, runtime: str = "torch", quantize: str | None = None,
                 ) -> None:
        from matryoshka.models.loading import load_model

        self.model = load_model(model_name, backend=runtime, quantize=quantize)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from matryoshka.embeddings.vectors import encode

        texts = [str(t) for t in batch["text"]]
        vectors = encode(self.model, texts, batch_size=self.batch_size, show_progress_bar=False)
        return {"id": batch["id"], "vector": np.ascontiguousarray(vectors, dtype=np.float32)}


def encode_to_index(
    documents: Iterable[Document] | str | os.PathLike[str],
    backend: VectorIndex | str,
    model: str | UpstreamModel | None = None,
    *,
    batch_size: int = 256,
    write_batch: int = 1024,
    ray_address: str | None = None,
    num_workers: int | None = None,
    resume: bool = True,
    show_progress: bool = True,
    use_ray: bool = True,
    text_column: str | None = None,
    id_column: str | None = None,
    runtime: str = "torch",
    quantize: str | None = None,
) -> EncodeReport:
    """Encode ``documents`` with Ray Data and upsert the full-size unit vectors into ``backend``.

    Args:
        documents: ``(id, text)`` or ``(id, text, metadata)`` tuples, or a corpus to read with
            :func:`read_documents` (a .csv/.tsv/.parquet/.jsonl/.txt file, a hub data set, a BEIR
            directory or name).
        backend: an open :class:`~matryoshka.indexes.base.VectorIndex` (left open), or a backend URL
            opened with the model's dimension and name (and closed afterwards).
        model: a model name or directory; ``None`` is the packaged all-MiniLM-L6-v2. On a cluster a
            directory must be visible at the same path on every node. An
            :class:`~matryoshka.models.upstream.UpstreamModel` (an embeddings API, already open) is
            called from this process whatever ``use_ray`` says (its calls run concurrently); the
            index records its label.
        batch_size: texts per Ray batch and forward pass on a worker.
        write_batch: vectors per backend upsert; a crash loses at most the batches in flight.
        ray_address: a Ray cluster to join (default: ``$RAY_ADDRESS``). A Ray already initialized in
            this process is used as it is; with neither, a local instance with a capped object store
            (:data:`LOCAL_OBJECT_STORE_BYTES`) is started and shut down afterwards.
        num_workers: encoding actors, one CPU each (default: the cluster's CPU count).
        resume: skip ids the backend already holds; ``False`` re-encodes and overwrites them.
        show_progress: a progress bar over documents written (on stderr).
        use_ray: ``False`` encodes in this process instead (same batching, resume and writes), for
            corpora one machine handles.
        text_column, id_column: the corpus columns holding texts and ids, where ``documents`` is read
            from a file or data set (default: chosen as :mod:`matryoshka.data.corpus` describes).
        runtime, quantize: how the model runs (``torch``, ``onnx``, ``openvino``, ``auto``; ``int8``), as
            ``index build --backend`` runs it: the same model's vectors, faster on a CPU.

    Raises:
        InputError: the corpus is empty, an id is empty or repeats (the message names it), or the
            backend's dimension differs from the model's (checked before any encoding).
        ImportError: Ray Data is not installed (``pip install 'matryoshka[ray]'``).
    """
    from matryoshka.models.identity import model_label
    from matryoshka.models.loading import model_dimension
    from matryoshka.models.upstream import UpstreamModel

    started = time.perf_counter()
    if batch_size < 1 or write_batch < 1:
        raise InputError(f"batch_size and write_batch must be positive, got {batch_size} and {write_batch}")
    if num_workers is not None and num_workers < 1:
        raise InputError(f"num_workers must be positive, got {num_workers}")
    docs = _check_documents(documents, text_column, id_column)
    dim = model_dimension(model) if isinstance(model, UpstreamModel) else _model_dim(model)
    label = model.label if isinstance(model, UpstreamModel) else model_label(model)

    opened = isinstance(backend, str)
    store = _open(backend, dim, label) if isinstance(backend, str) else backend
    try:
        if store.dim != dim:
            raise InputError(
                f"the backend {store.url} holds {store.dim}-dimensional vectors but model {label} "
                f"makes {dim}-dimensional ones"
            )
        present = _existing(store, list(docs)) if resume else set()
        todo = [doc_id for doc_id in docs if doc_id not in present]
        skipped = len(docs) - len(todo)
        if not todo:
            return EncodeReport(len(docs), skipped, 0, time.perf_counter() - started, 0)
        if use_ray and not isinstance(model, UpstreamModel):
            written, workers = _run(
                store, docs, todo, model, batch_size, write_batch, ray_address, num_workers, show_progress,
                (runtime, quantize),
            )
        else:
            written = _run_here(store, docs, todo, model, batch_size, write_batch, show_progress, (runtime, quantize))
            workers = 1
        return EncodeReport(len(docs), skipped, written, time.perf_counter() - started, workers)
    finally:
        if opened:
            store.close()
        else:
            store.flush()


def _check_documents(
    documents: Iterable[Document] | str | os.PathLike[str], text_column: str | None = None,
    id_column: str | None = None,
) -> dict[str, tuple[str, Mapping[str, Any] | None]]:
    """The input as ``{id: (text, metadata)}`` in input order, refusing empty or repeated ids."""
    if isinstance(documents, (str, os.PathLike)):
        rows: Iterable[Any] = read_documents(documents, text_column=text_column, id_column=id_column)
    elif text_column is not None or id_column is not None:
        raise InputError("text_column and id_column apply to a corpus read from a file or data set")
    else:
        rows = documents
    out: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
    for number, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) not in (2, 3):
            raise InputError(f"document {number} must be (id, text) or (id, text, metadata), got {row!r:.80}")
        doc_id, text = str(row[0]), row[1]
        metadata = row[2] if len(row) == 3 else None
        if not doc_id:
            raise InputError(f"document {number} has an empty id")
        if not isinstance(text, str):
            raise InputError(f"document {doc_id!r} has a {type(text).__name__} for text, expected a string")
        if doc_id in out:
            raise InputError(f"duplicate document id {doc_id!r} in the input")
        out[doc_id] = (text, metadata)
    if not out:
        raise InputError("the corpus is empty: nothing to encode")
    return out


@functools.lru_cache(maxsize=8)
def _model_dim(model: str | None) -> int:
    """Full dimension of ``model``, loaded once on the driver (cached: the check repeats per call)."""
    from matryoshka.models.loading import load_model, model_dimension

    return model_dimension(load_model(model, device="cpu"))


def _open(url: str, dim: int, model_name: str) -> VectorIndex:
    """Open an index URL with the model's dimension and name (created when missing)."""
    from matryoshka.indexes import open_index

    return open_index(url, dim=dim, model_name=model_name, create=True)


def _existing(store: VectorIndex, ids: Sequence[str]) -> set[str]:
    """Ids the backend already holds, asked in chunks so no single query grows with the corpus."""
    found: set[str] = set()
    for start in range(0, len(ids), EXISTING_CHUNK):
        found |= set(store.existing(ids[start : start + EXISTING_CHUNK]))
    return found


def _run(
    store: VectorIndex,
    docs: dict[str, tuple[str, Mapping[str, Any] | None]],
    todo: list[str],
    model: str | None,
    batch_size: int,
    write_batch: int,
    ray_address: str | None,
    num_workers: int | None,
    show_progress: bool,
    runtime: tuple[str, str | None] = ("torch", None),
) -> tuple[int, int]:
    """Encode ``todo`` on Ray and write it batch by batch; returns (written, workers)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - ray is an optional dependency
        raise MissingDependencyError("encoding with Ray needs `pip install 'matryoshka[ray]'` (ray[data])") from exc

    we_started = _connect(ray, ray_address)
    context = ray.data.DataContext.get_current()
    ray_bars = context.enable_progress_bars
    try:
        context.enable_progress_bars = False  # ours counts what is written, not what is computed
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(workers, math.ceil(len(todo) / batch_size))
        blocks = min(len(todo), max(2 * workers, math.ceil(len(todo) / batch_size)))
        items = [{"id": doc_id, "text": docs[doc_id][0]} for doc_id in todo]
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _Encoder,
            fn_constructor_args=(model, batch_size, *runtime),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        del items
        written = 0
        with progress(len(todo), show_progress, "encoding with Ray") as advance:
            for batch in dataset.iter_batches(batch_size=write_batch, batch_format="numpy"):
                ids = [str(i) for i in batch["id"]]
                store.upsert(
                    ids,
                    np.asarray(batch["vector"], dtype=np.float32),
                    texts=[docs[i][0] for i in ids],
                    metadata=[docs[i][1] for i in ids],
                )
                written += len(ids)
                advance(len(ids))
        return written, workers
    finally:
        context.enable_progress_bars = ray_bars
        if we_started:
            ray.shutdown()


def _run_here(
    store: VectorIndex,
    docs: dict[str, tuple[str, Mapping[str, Any] | None]],
    todo: list[str],
    model: str | UpstreamModel | None,
    batch_size: int,
    write_batch: int,
    show_progress: bool,
    runtime: tuple[str, str | None] = ("torch", None),
) -> int:
    """Encode ``todo`` in this process, one backend write per ``write_batch`` documents."""
    from matryoshka.embeddings.vectors import encode
    from matryoshka.models.loading import load_model
    from matryoshka.models.upstream import UpstreamModel

    loaded = model if isinstance(model, UpstreamModel) else load_model(model, backend=runtime[0], quantize=runtime[1])
    written = 0
    with progress(len(todo), show_progress, "encoding") as advance:
        for start in range(0, len(todo), write_batch):
            ids = todo[start : start + write_batch]
            texts = [docs[i][0] for i in ids]
            vectors = encode(loaded, texts, batch_size=batch_size, show_progress_bar=False)
            store.upsert(ids, vectors, texts=texts, metadata=[docs[i][1] for i in ids])
            written += len(ids)
            advance(len(ids))
    return written


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS``, reuse an initialized Ray, or start a capped local one.

    Returns whether this call initialized Ray (and so should shut it down).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False, log_to_driver=False)
    return True


def free_ids(index: VectorIndex, ids: Sequence[str | None]) -> list[str]:
    """``ids`` with each ``None`` replaced by the next number, counting from ``len(index)``, that neither
    the index nor ``ids`` holds (asked with ``index.existing``, so it works on every engine)."""
    given = {i for i in ids if i is not None}
    missing = sum(1 for i in ids if i is None)
    free: list[str] = []
    start = len(index)
    while len(free) < missing:
        candidates = [str(n) for n in range(start, start + max(2 * (missing - len(free)), 16))]
        taken = index.existing(candidates) | given
        free.extend(c for c in candidates if c not in taken)
        start += len(candidates)
    numbers = iter(free)
    return [i if i is not None else next(numbers) for i in ids]
