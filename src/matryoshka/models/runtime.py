"""Run a model's transformer on ONNX Runtime or OpenVINO instead of PyTorch, or on fewer layers.

Encoding is where a user's CPU time goes, and the PyTorch eager model is the slowest way to run a
small transformer on a CPU. :func:`use_backend` exports the transformer of a loaded
sentence-transformers model once, caches the export beside the model, and swaps the module's inner
model for :class:`CompiledTransformer`, a thin module that runs the compiled graph. Tokenization,
pooling, any adaptor and normalization stay sentence-transformers' own, so ``encode``,
``truncate_dim`` and every command work unchanged.

Why not sentence-transformers' own ``backend="onnx"`` / ``"openvino"``: it exports through
``optimum-onnx`` / ``optimum-intel``, and every release of those that installs here needs
transformers < 5, while sentence-transformers 6.2 needs transformers >= 5, so pip cannot install both.
So the export is ``torch.onnx.export``, int8 is onnxruntime's own dynamic quantization
(``onnxruntime.quantization.quantize_dynamic``) or NNCF's data-free weight compression for
OpenVINO, and the OpenVINO model is ``openvino.convert_model`` of the ONNX graph.

OpenVINO runs in its default inference precision, which is bfloat16 on CPUs with AMX or AVX-512
BF16 (this machine's); :func:`agreement` measures what that costs against PyTorch.

Example:
    >>> from matryoshka.models.loading import load_model
    >>> model = load_model(backend="openvino")           # exported and cached on first use
    >>> model.encode(["hello"], truncate_dim=64).shape   # doctest: +SKIP
    (1, 64)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch

from matryoshka.errors import InputError, RuntimeBackendError
from matryoshka.models.layers import encoder, num_layers

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Backend = Literal["torch", "onnx", "openvino"]
Quantize = Literal["int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: What ``serve --backend auto`` tries, fastest first (order measured in
#: ``benchmarks/results/encode/speed.md``); the first that passes :func:`agreement` is served.
AUTO_ORDER: tuple[tuple[Backend, Quantize | None], ...] = (
    ("openvino", None),
    ("onnx", "int8"),
    ("onnx", None),
    ("torch", None),
)

#: Fixed texts of several lengths and kinds for the start-up quality check.
CHECK_TEXTS: tuple[str, ...] = (
    "A man is playing a guitar.",
    "The cat sat on the mat.",
    "How do I reset my password?",
    "Matryoshka embeddings keep the most important information in the first dimensions.",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections in adults.",
    "ok",
    ("The quarterly report shows revenue grew 12% while operating costs fell, driven by lower energy "
    "prices and a smaller workforce after the restructuring that began last spring."),
    ("Transformers process tokens in parallel using self-attention, which lets every position attend to "
    "every other position in the sequence; this is why their cost grows with the square of the length."),
)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")



def check_backend(backend: str, quantize: str | None = None) -> None:
    """Raise ``ValueError`` for an unknown backend or quantization, before any model is loaded."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if quantize not in (None, "int8"):
        raise InputError(f"unknown quantization {quantize!r}: use int8 or none")
    if quantize is not None and backend == "torch":
        raise InputError("--quantize int8 needs --backend onnx or openvino")


def _require(module: str, backend: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeBackendError(
            f"the {backend} backend needs {module.split('.')[0]}: pip install 'matryoshka[{backend}]' ({exc})"
        ) from exc


class CompiledTransformer(torch.nn.Module):
    """Stands in for a Hugging Face encoder inside sentence-transformers' ``Transformer`` module:
    takes the tokenizer's tensors, runs an ONNX Runtime session or a compiled OpenVINO model, and
    returns ``{"last_hidden_state": ...}`` for the pooling module."""

    def __init__(self, run: Any, inputs: Sequence[str], config: Any, description: str) -> None:
        super().__init__()
        self._run = run
        self._inputs = tuple(inputs)
        self.config = config
        self.description = description

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        arrays = {}
        for name in self._inputs:
            value = feed[name]
            arrays[name] = (np.zeros_like(input_ids.numpy()) if value is None else value.numpy()).astype(np.int64)
        hidden = self._run(arrays)
        return {"last_hidden_state": torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))}


class _Exportable(torch.nn.Module):
    """Calls the encoder with keywords and returns the tensor, which is what ``torch.onnx.export`` traces."""

    def __init__(self, model: torch.nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = tuple(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.inputs, tensors, strict=True))).last_hidden_state


def _fingerprint(model: SentenceTransformer, layers: int) -> str:
    """Identifies the weights an export was made from: the tensors' bytes (cheap next to an export)."""
    digest = hashlib.sha256()
    inner = encoder(model)
    digest.update(f"{type(inner).__name__}:{layers}:{torch.__version__}".encode())
    for name, tensor in inner.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_root(model: SentenceTransformer, source: str | None) -> Path:
    """Where exports of ``model`` are cached: ``<model dir>/exports`` when that directory is writable,
    else ``$MATRYOSHKA_CACHE`` (default ``~/.cache/matryoshka``)/exports/<name>."""
    if source and Path(source).is_dir() and os.access(source, os.W_OK):
        return Path(source) / "exports"
    base = Path(os.environ.get("MATRYOSHKA_CACHE", Path.home() / ".cache" / "matryoshka"))
    name = hashlib.sha256(str(source or "model").encode()).hexdigest()[:12]
    return base / "exports" / name


def _model_inputs(model: SentenceTransformer) -> tuple[str, ...]:
    features = model.tokenize(["x"])
    return tuple(name for name in _INPUTS if name in features)


def _atomic_dir(target: Path, write: Any) -> Path:
    """Run ``write(tmpdir)`` and move the folder into place, so a killed export leaves no half files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_onnx(model: SentenceTransformer, folder: Path) -> Path:
    """Export ``model``'s transformer to ``folder/model.onnx`` (dynamic batch and sequence axes)."""
    _require("onnx", "onnx")
    inputs = _model_inputs(model)
    sample = model.tokenize(["a short text", "and a second, longer text to export with"])
    args = tuple(sample[name] for name in inputs)
    wrapper = _Exportable(encoder(model), inputs).eval()

    def write(tmp: Path) -> None:
        axes = {name: {0: "batch", 1: "sequence"} for name in (*inputs, "last_hidden_state")}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches of the HF code
            # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for a BERT.
            torch.onnx.export(
                wrapper, args, str(tmp / "model.onnx"), input_names=list(inputs),
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
            )

    return _atomic_dir(folder, write) / "model.onnx"


def quantize_onnx(onnx_path: Path, folder: Path) -> Path:
    """onnxruntime's dynamic int8 quantization of ``onnx_path`` (int8 weights, activations quantized per call)."""
    quantization = _require("onnxruntime.quantization", "onnx")

    def write(tmp: Path) -> None:
        # Per-channel int8 weights on the MatMuls only: the defaults (per-tensor, every op) moved short
        # texts' vectors to cosine 0.85 of torch's; this keeps them at 0.97 and is as fast.
        quantization.quantize_dynamic(
            str(onnx_path), str(tmp / "model.onnx"), weight_type=quantization.QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"],
        )

    return _atomic_dir(folder, write) / "model.onnx"


def convert_openvino(onnx_path: Path, folder: Path, quantize: str | None) -> Path:
    """OpenVINO IR of ``onnx_path``; with ``int8``, NNCF's data-free int8 weight compression."""
    ov = _require("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    if quantize == "int8":
        nncf = _require("nncf", "openvino")
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)

    def write(tmp: Path) -> None:
        ov.save_model(model, str(tmp / "model.xml"))

    return _atomic_dir(folder, write) / "model.xml"


def _session(backend: str, path: Path, threads: int) -> Any:
    if backend == "onnx":
        ort = _require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run(["last_hidden_state"], feed)[0]
    ov = _require("openvino", "openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)[0]


def use_backend(
    model: SentenceTransformer,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    source: str | None = None,
    threads: int | None = None,
) -> SentenceTransformer:
    """Run ``model``'s transformer on ``backend`` (in place; returns the model).

    The export is made once per set of weights (and layer count) and cached under :func:`export_root`;
    later loads read the cache. ``threads`` defaults to ``torch.get_num_threads()``.

    Raises:
        InputError: unknown backend or quantization.
        RuntimeBackendError: the backend's package is missing (the message names the pip extra), or
            the model is not a transformer this export handles.
    """
    check_backend(backend, quantize)
    if backend == "torch":
        return model
    from sentence_transformers.base.modules.transformer import Transformer

    first = model[0]
    if not isinstance(first, Transformer):
        raise RuntimeBackendError(f"--backend {backend} runs transformer models; this one starts with {type(first).__name__}")
    _require("onnxruntime" if backend == "onnx" else "openvino", backend)
    layers = num_layers(model)
    root = export_root(model, source) / _fingerprint(model, layers)
    onnx_path = root / "onnx" / "model.onnx"
    if not onnx_path.exists():
        export_onnx(model, onnx_path.parent)
        (root / "export.json").write_text(json.dumps({"layers": layers, "torch": torch.__version__, "source": source}))
    path = onnx_path
    if backend == "onnx" and quantize == "int8":
        path = root / "onnx-int8" / "model.onnx"
        if not path.exists():
            quantize_onnx(onnx_path, path.parent)
    elif backend == "openvino":
        path = root / ("openvino-int8" if quantize else "openvino") / "model.xml"
        if not path.exists():
            convert_openvino(onnx_path, path.parent, quantize)
    inputs = _model_inputs(model)
    run = _session(backend, path, threads or torch.get_num_threads())
    description = backend + (f"-{quantize}" if quantize else "")
    first.model = CompiledTransformer(run, inputs, first.model.config, description)
    first.model_forward_params = set(inputs)
    return model


def backend_label(model: SentenceTransformer) -> str:
    """``torch``, ``onnx``, ``onnx-int8``, ``openvino`` or ``openvino-int8``: what runs ``model``."""
    inner = getattr(model[0], "model", None) if len(model) else None  # a StaticEmbedding holds no model
    return inner.description if isinstance(inner, CompiledTransformer) else "torch"


def agreement(model: SentenceTransformer, reference: SentenceTransformer, texts: Sequence[str] = CHECK_TEXTS) -> float:
    """The lowest cosine between ``model``'s and ``reference``'s full-size embeddings of ``texts``."""
    a = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    b = reference.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return float(np.min(np.sum(a * b, axis=1)))
