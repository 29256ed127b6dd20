"""The ``matryoshka`` command line: a thin Typer layer over the Python API.

Commands: ``encode``, ``train``, ``evaluate``, ``compare``, ``index``, ``advise``, ``serve``, ``demo``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="matryoshka",
    help="Train, encode, evaluate and search with Matryoshka embedding models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ModelOption = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Model directory or hub name; default: packaged all-MiniLM-L6-v2.")
]


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


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 1."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def encode(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to encode; or use --input.")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="A file with one text per line.")] = None,
    dim: Annotated[Optional[int], typer.Option("--dim", "-d", help="Leading dimensions to keep (default: all).")] = None,
    precision: Annotated[str, typer.Option(help="float32, float16, int8, uint8, binary or ubinary.")] = "float32",
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep the truncated prefix as is.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write a .npy file instead of JSON lines.")] = None,
    model: ModelOption = None,
    corpus: Annotated[Optional[str], typer.Option(
        "--corpus", "-c", help="With --backend: a BEIR data set (scifact, npl, a directory) or a .txt/.jsonl file.")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", "-b", help="Load the corpus into a backend: faiss://DIR, postgresql://..., qdrant://..., qdrant+local://DIR.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="With --backend: encode on a Ray cluster ($RAY_ADDRESS, else local).")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray encoding actors (default: the cluster's CPUs).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    write_batch: Annotated[int, typer.Option(min=1, help="Vectors per backend write.")] = 1024,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Re-encode ids the backend already holds.")] = False,
) -> None:
    """Encode texts at any dimension; print one JSON array per line, or save a .npy file.

    With --corpus and --backend, encode a whole corpus at full size into a vector backend instead
    (resumable: ids already stored are skipped); --ray spreads the encoding over a Ray cluster.
    """
    from matryoshka.embeddings import PRECISIONS, DimensionError
    from matryoshka.embeddings import encode as encode_texts
    from matryoshka.models import ModelLoadError, load_model

    if backend is not None or corpus is not None or ray:
        if backend is None or corpus is None:
            fail("loading a corpus needs both --corpus and --backend")
        if texts or input is not None or output is not None or dim is not None:
            fail("--corpus/--backend load full-size vectors; drop texts, --input, --output and --dim")
        load_corpus(corpus, backend, model, ray, workers, batch_size, write_batch, not no_resume)
        return
    lines = list(texts or [])
    if input is not None:
        if not input.is_file():
            fail(f"no such file: {input}")
        lines += [line for line in input.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        fail("give texts as arguments or with --input")
    if precision not in PRECISIONS:
        fail(f"precision must be one of {', '.join(PRECISIONS)}")
    try:
        vectors = encode_texts(load_model(model), lines, dim=dim, precision=precision, normalize=not no_normalize)  # type: ignore[arg-type]
    except (DimensionError, ModelLoadError) as exc:
        fail(str(exc))
    if output is not None:
        import numpy as np

        from matryoshka.files import write_atomic

        buffer = __import__("io").BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        write_atomic(output, buffer.getvalue())
        console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} {vectors.dtype} to {output}")
        return
    for row in vectors:
        sys.stdout.write(json.dumps([round(float(x), 6) if row.dtype.kind == "f" else int(x) for x in row]) + "\n")


def load_corpus(
    corpus: str, backend: str, model: str | None, ray: bool, workers: int | None, batch_size: int,
    write_batch: int, resume: bool,
) -> None:
    """``matryoshka encode --corpus ... --backend ...``: a thin layer over :func:`encode_to_backend`."""
    from matryoshka.backends import BackendError
    from matryoshka.backends.ray_encoding import encode_to_backend
    from matryoshka.models import ModelLoadError

    try:
        report = encode_to_backend(
            corpus, backend, model, batch_size=batch_size, write_batch=write_batch, num_workers=workers,
            resume=resume, use_ray=ray,
        )
    except (ValueError, TypeError, FileNotFoundError, ModelLoadError, BackendError, ImportError) as exc:
        fail(str(exc))
    console.print(
        f"{backend}: wrote {report.written:,} of {report.total:,} documents "
        f"({report.skipped_existing:,} already stored) in {report.seconds:.1f}s"
        + (f" on {report.workers} Ray workers" if ray else ""),
        soft_wrap=True,
    )


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trained model.")] = Path("runs/model"),
    model: ModelOption = None,
    standard: Annotated[bool, typer.Option("--standard", help="Train without MatryoshkaLoss (the baseline).")] = False,
    objective: Annotated[str, typer.Option(help="distill (self-distillation on pairs) or nli (MNRL on triplets).")] = "distill",
    distill_loss: Annotated[str, typer.Option(help="For distill: cosine, cosent (ranking) or inbatch.")] = "cosent",
    dims: Annotated[str, typer.Option(help="Dimensions MatryoshkaLoss scores.")] = "384,256,128,64,32,16",
    weights: Annotated[Optional[str], typer.Option(help="One weight per dimension, e.g. 1,1,1,2,4,4.")] = None,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    epochs: Annotated[float, typer.Option()] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many steps.")] = None,
    max_examples: Annotated[Optional[int], typer.Option(min=1, help="Use at most this many training rows.")] = None,
    pairs: Annotated[str, typer.Option(help="Pair sources for distill: stsb,snli,wordnet.")] = "stsb,snli",
    checkpoint_steps: Annotated[Optional[int], typer.Option(min=1, help="Save a checkpoint every N steps.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fine-tune a model with MatryoshkaLoss (or the plain loss with --standard) and save it."""
    from matryoshka.models import ModelLoadError, load_model
    from matryoshka.training import TrainConfig
    from matryoshka.training import train as run_training

    dim_list = parse_ints(dims, "--dims")
    config = TrainConfig(
        objective=objective,  # type: ignore[arg-type]
        distill_loss=distill_loss,  # type: ignore[arg-type]
        matryoshka=not standard,
        dims=tuple(dim_list),
        weights=tuple(parse_floats(weights, "--weights")) if weights else None,
        batch_size=batch_size,
        learning_rate=lr,
        epochs=epochs,
        max_steps=max_steps,
        max_examples=max_examples,
        pair_sources=tuple(p.strip() for p in pairs.split(",") if p.strip()),
        checkpoint_steps=checkpoint_steps,
        seed=seed,
    )
    try:
        loaded = load_model(model)
        result = run_training(loaded, config, out)
    except (ValueError, ModelLoadError) as exc:
        fail(str(exc))
    console.print(f"saved {'standard' if standard else 'Matryoshka'} model to {result.output_dir} "
                  f"({result.steps} steps, {result.seconds:.0f}s)")


@app.command()
def evaluate(
    models: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Model(s) to score; repeat the option.")] = None,
    task: Annotated[str, typer.Option(help="stsb, or a retrieval set: scifact, npl, or a BEIR directory.")] = "stsb",
    dims: Annotated[str, typer.Option(help="Dimensions to score.")] = "384,256,128,64,32,16",
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for results.json/.md/.png.")] = Path("runs/evaluate"),
    split: Annotated[str, typer.Option(help="Data split.")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=10, help="STS only: score the first N pairs.")] = None,
) -> None:
    """Score models at every dimension; write JSON, a Markdown table and a plot, with retention."""
    from matryoshka.evaluation import Results
    from matryoshka.models import ModelLoadError, load_model

    dim_list = parse_ints(dims, "--dims")
    names = models or [None]
    scores: dict[str, dict[int, float]] = {}
    metrics: dict[str, dict[str, dict[int, float]]] = {}
    try:
        for name in names:
            label = Path(name).name if name and Path(name).exists() else (name or "all-MiniLM-L6-v2")
            loaded = load_model(name)
            if task == "stsb":
                from matryoshka.data import load_sts
                from matryoshka.evaluation import evaluate_sts

                scores[label] = evaluate_sts(loaded, load_sts(split)[:limit], dim_list, show_progress_bar=True)  # type: ignore[arg-type]
            else:
                from matryoshka.data.beir import load_beir
                from matryoshka.evaluation.retrieval import evaluate_retrieval

                per_metric = evaluate_retrieval(loaded, load_beir(task, split=split), dim_list)
                for metric, by_dim in per_metric.items():
                    metrics.setdefault(metric, {})[label] = by_dim
                scores[label] = per_metric["ndcg@10"]
    except (ValueError, ModelLoadError) as exc:
        fail(str(exc))
    metric = "spearman_cosine" if task == "stsb" else "ndcg@10"
    results = Results(task=f"{task}-{split}", metric=metric, scores=scores, metrics=metrics,
                      metadata={"models": [n or "all-MiniLM-L6-v2" for n in names], "dims": dim_list})
    paths = results.save(out)
    print_results(results)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def print_results(results: object) -> None:
    """Print a per-dimension table with retention."""
    from matryoshka.evaluation import Results

    assert isinstance(results, Results)
    retention = results.retention()
    table = Table(title=f"{results.task}: {results.metric} (retention vs full size)")
    table.add_column("dim", justify="right")
    for name in results.scores:
        table.add_column(name, justify="right")
    dims = sorted({d for by_dim in results.scores.values() for d in by_dim}, reverse=True)
    for d in dims:
        table.add_row(str(d), *[
            f"{results.scores[n][d]:.4f} ({100 * retention[n][d]:.1f}%)" if d in results.scores[n] else ""
            for n in results.scores
        ])
    Console().print(table)


@app.command()
def compare(
    quick: Annotated[bool, typer.Option("--quick", help="Cap training to a few dozen steps (minutes on 2 cores).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/compare"),
    model: ModelOption = None,
    no_static: Annotated[bool, typer.Option("--no-static", help="Skip the StaticEmbedding variant.")] = False,
    no_nli: Annotated[bool, typer.Option("--no-nli", help="Skip the NLI (article) recipe.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Cap every recipe's steps (smoke test).")] = None,
    max_examples: Annotated[int, typer.Option(min=2, help="Rows loaded when --max-steps is set.")] = 256,
    eval_limit: Annotated[Optional[int], typer.Option(min=10, help="Score only the first N STS-B test pairs.")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=2, help="Train a recipe's two variants in 1 or 2 processes.")] = 2,
    weights: Annotated[Optional[str], typer.Option(
        help="MatryoshkaLoss weights of the self-distillation recipe, one per dim 384..16 (default 1,1,1,2,8,4).")] = None,
    keep_previous: Annotated[bool, typer.Option(
        "--keep-previous", help="Reuse results.json in --out: models with unchanged training settings keep their "
        "scores (not retrained); with --no-nli/--no-static, keep those recipes' rows.")] = False,
) -> None:
    """Train standard and Matryoshka models from one base, score all per dimension on STS-B test."""
    from dataclasses import replace

    from matryoshka.compare import CompareConfig, run_compare

    kwargs = dict(base_model=model, out=out, seed=seed, run_static=not no_static, run_nli=not no_nli,
                  eval_limit=eval_limit, jobs=jobs, keep_previous=keep_previous)
    config = CompareConfig.quick(**kwargs) if quick else CompareConfig(**kwargs)
    if weights is not None:
        config.distill = replace(config.distill, weights=tuple(parse_floats(weights, "--weights")))
        try:  # before any work: the recipe would refuse these weights only after scoring the base model
            replace(config.distill, dims=config.dims).validate(max(config.dims))
        except ValueError:
            raise typer.BadParameter(f"--weights needs {len(config.dims)} non-negative numbers, got {weights!r}") from None
    if max_steps is not None:
        config.cap(max_steps, max_examples)
    try:
        results = run_compare(config, log=console.print)
    except ValueError as exc:
        fail(str(exc))
    print_results(results)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")


def _register_optional() -> None:
    """Attach the retrieval and serving commands, which live next to the code they drive."""
    from matryoshka.retrieval.cli import advise_command, index_app

    app.add_typer(index_app, name="index", help="Build, search and update a Matryoshka funnel index.")
    app.command("advise")(advise_command)
    from matryoshka.serving.cli import demo_command, serve_command

    app.command("serve")(serve_command)
    app.command("demo")(demo_command)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    app()
