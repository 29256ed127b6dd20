"""Typer options shared by every command that encodes: what runs the model, and on how many layers."""

from __future__ import annotations

from typing import Annotated

import typer

BackendOption = Annotated[str, typer.Option(
    "--backend", help="What runs the model: torch, onnx (ONNX Runtime) or openvino; exported locally on first use, "
    "cached beside the model.")]
QuantizeOption = Annotated[str | None, typer.Option(
    "--quantize", help="int8: an int8 export (with --backend onnx or openvino).")]
LayersOption = Annotated[int | None, typer.Option(
    "--layers", min=1, help="Run only the first N transformer layers (best with a model trained by `train --layers`).")]
