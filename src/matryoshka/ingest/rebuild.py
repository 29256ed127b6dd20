"""Replace an index's documents with a corpus, all at once: ``matryoshka index build``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from matryoshka.data.corpus import read_documents
from matryoshka.ingest.progress import encode_chunks, progress

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel
    from matryoshka.models.upstream import UpstreamModel
    from matryoshka.retrieval.stages import Stage
    from matryoshka.retrieval.types import IndexInfo

__all__ = ["check_build_target", "rebuild_index", "use_model_hint"]


def rebuild_index(
    corpus: str | os.PathLike[str],
    url: str,
    model: str | UpstreamModel | None = None,
    *,
    stages: Sequence[Stage] | None = None,
    storage: str = "float32",
    batch_size: int = 64,
    limit: int | None = None,
    runtime: str = "torch",
    quantize: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    load: Callable[..., AnyModel] | None = None,
) -> IndexInfo:
    """Encode ``corpus`` at full size and make it the whole content of the index at ``url``.

    An existing index keeps its old documents until all the new ones are written (``replace_all``: one
    transaction on PostgreSQL, an alias switch on Qdrant, an atomic save of a directory); one of
    another model or dimension is refused before the encoding starts. ``stages`` is the default
    funnel recorded, ``storage`` the stored dtype (``float16`` on ``faiss://`` only), ``runtime`` and
    ``quantize`` how the model runs (the index records the model, not its runtime). ``load`` replaces
    :func:`matryoshka.models.loading.load_model` (same arguments), e.g. with a cache of loaded models.
    ``model`` may be an :class:`~matryoshka.models.upstream.UpstreamModel` (an embeddings API, already
    open): the index records its label, and a failed call leaves the index as it was.

    Example:
        >>> info = rebuild_index("corpus.jsonl", "faiss:///data/index")     # doctest: +SKIP
        >>> info.count, info.dim
        (5183, 384)
    """
    from matryoshka.indexes import open_index
    from matryoshka.models.identity import model_label
    from matryoshka.models.loading import load_model, model_dimension
    from matryoshka.models.upstream import UpstreamModel

    log(f"reading {corpus}")
    docs = read_documents(corpus, text_column=text_column, id_column=id_column)
    if limit is not None and limit < len(docs):
        docs = docs[:limit]
    ids, texts, metadata = [d[0] for d in docs], [d[1] for d in docs], [d[2] for d in docs]
    loaded: AnyModel
    if isinstance(model, UpstreamModel):
        label, loaded = model.label, model
    else:
        label = model_label(model)
        log(f"loading model {label}")
        loaded = (load or load_model)(model, backend=runtime, quantize=quantize)
    check_build_target(url, label, model_dimension(loaded))  # before the long part, the encoding
    with progress(len(texts), show_progress) as advance:
        done = [0]

        def step(count: int, total: int) -> None:
            advance(count - done[0])
            done[0] = count

        vectors = encode_chunks(loaded, texts, batch_size, on_progress=step)
    with open_index(url, dim=int(vectors.shape[1]), model_name=label, create=True, stages=stages,
                    storage=storage) as index:
        index.replace_all(ids, vectors, texts, metadata)  # the old documents or all the new ones, never none
        index.prepare()
        return index.info()


def check_build_target(url: str, label: str, dim: int) -> None:
    """Refuse an existing index of another model or dimension before :func:`rebuild_index` encodes anything.

    A missing index (or one the engine cannot be asked about now) passes: the write after encoding
    creates it, or reports the engine's error. Something that is not an index fails here.

    Raises:
        ModelError: the index holds another model's vectors, or vectors of another dimension.
        IndexCorruptError: a directory that is not an index (or lost its manifest).
    """
    from matryoshka.errors import EngineError, ModelError
    from matryoshka.indexes import open_index

    try:
        index = open_index(url, create=False)
    except (FileNotFoundError, EngineError):
        return
    with index:
        if index.model_name and index.model_name != label:
            raise ModelError(
                f"{index.url} holds vectors of model {index.model_name!r}, not {label!r}: build into another "
                f"--out, or {use_model_hint(index.model_name)}"
            )
        if index.dim != dim:
            raise ModelError(f"{index.url} holds {index.dim}-dim vectors, but model {label!r} makes {dim}-dim ones")


def use_model_hint(recorded: str) -> str:
    """How to name the model an index records on the command line: ``pass --model NAME``, or for an
    upstream's ``URL#MODEL``, ``pass --upstream URL --upstream-model MODEL``."""
    from matryoshka.models.upstream import split_label

    upstream = split_label(recorded)
    if upstream is None:
        return f"pass --model {recorded}"
    return f"pass --upstream {upstream[0]} --upstream-model {upstream[1]} (and --upstream-key-env if it needs a key)"
