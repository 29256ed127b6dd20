"""Typer options shared by the commands: the model, what runs it and on how many layers, a corpus's
columns, and list parsers.

They live apart from :mod:`matryoshka.cli.app` so command modules registered by it can import them without
importing it (``python -m matryoshka.cli`` runs it as a module).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

BackendOption = Annotated[str, typer.Option(
    "--backend", help="What runs the model: torch, onnx (ONNX Runtime) or openvino; exported locally on first use, "
    "cached beside the model.")]
QuantizeOption = Annotated[str | None, typer.Option(
    "--quantize", help="int8: an int8 export (with --backend onnx or openvino).")]
LayersOption = Annotated[int | None, typer.Option(
    "--layers", min=1, help="Run only the first N transformer layers (best with a model trained by `train --layers`).")]

ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Model directory or hub name; default: packaged all-MiniLM-L6-v2.")
]

#: What ``--corpus`` takes (one sentence for every command's help).
CORPUS_HELP = ("A .csv/.tsv/.parquet/.jsonl file, a .txt file (one text per line), a hub data set (owner/name), "
               "or a BEIR data set (scifact, npl, or a directory).")
TextColumnOption = Annotated[str | None, typer.Option(
    "--text-column", help="The --corpus column holding the texts; default: text (after a title column), "
    "else the only column of strings.")]
IdColumnOption = Annotated[str | None, typer.Option(
    "--id-column", help="The --corpus column holding the document ids; default: _id or id, else row positions.")]


def parse_ints(value: str, name: str) -> list[int]:
    """Parse ``"384,64,32"`` into integers, with an error that names the option."""
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated integers, got {value!r}") from None
    if not numbers:
        raise typer.BadParameter(f"{name} is empty")
    return numbers


def parse_floats(value: str, name: str) -> list[float]:
    """Parse ``"1,1,2"`` into floats, with an error that names the option."""
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {value!r}") from None


def progress_bar(console: Any) -> Any:
    """The commands' one progress bar: description, bar, done/total, elapsed; cleared when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
