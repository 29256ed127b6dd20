"""The ``matryoshka`` command line: a thin Typer layer over the Python API.

Commands: ``encode``, ``train``, ``evaluate``, ``compare``, ``index``, ``advise``, ``serve``, ``demo``,
``static``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli.errors import HandledGroup, fail
from matryoshka.cli.options import (  # noqa: F401  (ModelOption, parse_*: re-exported for the other CLI modules)
    CORPUS_HELP,
    BackendOption,
    IdColumnOption,
    LayersOption,
    ModelOption,
    QuantizeOption,
    TextColumnOption,
    UpstreamArgs,
    load_cli_model,
    parse_floats,
    parse_ints,
    progress_bar,
    upstream_cost,
    upstream_options,
)
from matryoshka.errors import InputError, MatryoshkaError

app = typer.Typer(
    cls=HandledGroup,
    name="matryoshka",
    help="Train, encode, evaluate and search with Matryoshka embedding models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

@app.command()
@upstream_options
def encode(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to encode; or use --input.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="A file with one text per line.")] = None,
    dim: Annotated[int | None, typer.Option("--dim", "-d", help="Leading dimensions to keep (default: all).")] = None,
    precision: Annotated[str, typer.Option(help="float32, float16, int8, uint8, binary or ubinary.")] = "float32",
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep the truncated prefix as is.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write a .npy file instead of JSON lines.")] = None,
    model: ModelOption = None,
    backend: BackendOption = "torch",
    quantize: QuantizeOption = None,
    layers: LayersOption = None,
    corpus: Annotated[str | None, typer.Option("--corpus", "-c", help=f"With --index: {CORPUS_HELP}")] = None,
    text_column: TextColumnOption = None,
    id_column: IdColumnOption = None,
    index: Annotated[str | None, typer.Option(
        "--index", help="Load the corpus into an index: faiss://DIR, postgresql://..., qdrant://..., qdrant+local://DIR.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="With --index: encode on a Ray cluster ($RAY_ADDRESS, else local).")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray encoding actors (default: the cluster's CPUs).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    write_batch: Annotated[int, typer.Option(min=1, help="Vectors per backend write.")] = 1024,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Re-encode ids the backend already holds.")] = False,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Encode texts at any dimension; print one JSON array per line, or save a .npy file.

    --backend onnx/openvino (and --quantize int8, --layers N) run the model faster on a CPU.
    --upstream URL --upstream-model NAME encodes through an OpenAI-compatible API instead (cached on disk).
    With --corpus and --index, encode a whole corpus at full size into a vector index instead
    (resumable: ids already stored are skipped); --ray spreads the encoding over a Ray cluster.
    """
    from matryoshka.embeddings.vectors import PRECISIONS
    from matryoshka.embeddings.vectors import encode as encode_texts

    if index is not None or corpus is not None or ray or text_column is not None or id_column is not None:
        if index is None or corpus is None:
            fail("loading a corpus needs both --corpus and --index")
        if texts or input is not None or output is not None or dim is not None:
            fail("--corpus/--index load full-size vectors; drop texts, --input, --output and --dim")
        if layers:
            fail("--corpus/--index take --backend and --quantize as `index build` does; --layers applies to texts "
                 "and --input (index with a cut model saved by `matryoshka cut` instead)")
        if upstream.url is not None and ray:
            fail("--upstream encodes through the API from this process (--upstream-concurrency calls at once); drop --ray")
        load_corpus(corpus, index, model, ray, workers, batch_size, write_batch, not no_resume,
                    text_column=text_column, id_column=id_column, backend=backend, quantize=quantize,
                    upstream=upstream)
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
    loaded = load_cli_model(model, upstream, backend=backend, quantize=quantize, layers=layers)
    with upstream_cost(console, loaded):
        vectors = encode_texts(loaded, lines, dim=dim, precision=precision, normalize=not no_normalize)  # type: ignore[arg-type]
    if output is not None:

        from matryoshka.files import save_npy_atomic

        save_npy_atomic(output, vectors)
        console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} {vectors.dtype} to {output}")
        return
    for row in vectors:
        sys.stdout.write(json.dumps([round(float(x), 6) if row.dtype.kind == "f" else int(x) for x in row]) + "\n")


def load_corpus(
    corpus: str, index: str, model: str | None, ray: bool, workers: int | None, batch_size: int,
    write_batch: int, resume: bool, *, text_column: str | None = None, id_column: str | None = None,
    backend: str = "torch", quantize: str | None = None, upstream: UpstreamArgs | None = None,
) -> None:
    """``matryoshka encode --corpus ... --index ...``: a thin layer over :func:`matryoshka.ingest.encode_to_index`."""
    from matryoshka.ingest import encode_to_index

    config = upstream.config() if upstream is not None else None
    source = load_cli_model(model, config, backend=backend, quantize=quantize) if config is not None else model
    with upstream_cost(console, source):
        report = encode_to_index(
            corpus, index, source, batch_size=batch_size, write_batch=write_batch, num_workers=workers,  # type: ignore[arg-type]
            resume=resume, use_ray=ray, text_column=text_column, id_column=id_column, runtime=backend,
            quantize=quantize,
        )
    console.print(
        f"{index}: wrote {report.written:,} of {report.total:,} documents "
        f"({report.skipped_existing:,} already stored) in {report.seconds:.1f}s"
        + (f" on {report.workers} Ray workers" if ray else ""),
        soft_wrap=True,
    )


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trained model.")] = Path("runs/model"),
    model: ModelOption = None,
    standard: Annotated[bool, typer.Option("--standard", help="Train without MatryoshkaLoss (the baseline).")] = False,
    objective: Annotated[str | None, typer.Option(
        help="distill (self-distillation), nli (MNRL on triplets), retrieval (MNRL on query-document pairs) or sts "
        "(CoSENT on STS-B train's gold scores); "
        "default: retrieval for --data with anchor/positive columns, else distill.")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Your training data: a .jsonl/.csv/.parquet file, a hub data set, or a BEIR set/directory "
        "(its --data-split qrels become query-document pairs). Columns: anchor, positive[, negative...], or one text column.")] = None,
    data_split: Annotated[str, typer.Option(help="Split of a hub data set or BEIR --data.")] = "train",
    distill_weight: Annotated[float, typer.Option(
        min=0.0, help="retrieval: weight of a term keeping the untouched model's full-size similarities.")] = 0.0,
    distill_loss: Annotated[str, typer.Option(help="For distill: cosine, cosent (ranking), inbatch, or vector "
        "(inbatch plus each text's vector; for a model cut to fewer layers).")] = "cosent",
    dims: Annotated[str | None, typer.Option(
        help="Dimensions MatryoshkaLoss scores (default: the model's full size, then each power of two "
        "below it down to 16).")] = None,
    weights: Annotated[str | None, typer.Option(help="One weight per dimension, e.g. 1,1,1,2,4,4.")] = None,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    epochs: Annotated[float, typer.Option()] = 1.0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    max_examples: Annotated[int | None, typer.Option(min=1, help="Use at most this many training rows.")] = None,
    pairs: Annotated[str, typer.Option(help="Pair sources for distill: stsb,snli,wordnet.")] = "stsb,snli",
    checkpoint_steps: Annotated[int | None, typer.Option(min=1, help="Save a checkpoint every N steps.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_seq_length: Annotated[int | None, typer.Option(min=8, help="Cap on tokens per training text.")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="Also train every layer count (Matryoshka2dLoss), "
                                          "so `--layers N` at encoding time is faster and still good.")] = False,
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="distill: the model whose full-size similarities are taught (default: --model as it is "
        "before training). With a model saved by `cut`, this distills the full-depth model into fewer layers.")] = None,
) -> None:
    """Fine-tune a model with MatryoshkaLoss (or the plain loss with --standard) and save it.

    Without --data it self-distills on the built-in pairs (or trains on NLI triplets); with --data it
    trains on your file or data set. `cut` then `train --teacher` gives a smaller, faster model that
    learns the full-depth model's similarities.
    """
    from matryoshka.errors import DataError
    from matryoshka.models.loading import load_model, quiet_loading
    from matryoshka.training.train import TrainConfig
    from matryoshka.training.train import train as run_training

    dim_list = parse_ints(dims, "--dims") if dims is not None else []
    if objective is None:
        objective = "distill"
        if data is not None:
            from matryoshka.data.user import load_training_data

            try:
                shape = load_training_data(data, split=data_split).kind
            except DataError as exc:
                fail(str(exc))
            objective = "retrieval" if shape == "pairs" else "distill"
    config = TrainConfig(
        data=data,
        data_split=data_split,
        distill_weight=distill_weight,
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
        layers=layers,
        max_seq_length=max_seq_length,
    )
    quiet_loading()
    try:
        loaded = load_model(model)
        teacher_model = load_model(teacher) if teacher is not None else None
        with progress_bar(console) as bar:
            task = bar.add_task(f"training ({objective})", total=None)
            result = run_training(loaded, config, out, teacher=teacher_model,
                                  progress=lambda step, total, loss: bar.update(task, completed=step, total=total))
    except MatryoshkaError as exc:
        fail(str(exc))
    console.print(f"saved {'standard' if standard else 'Matryoshka'} {objective} model to {result.output_dir} "
                  f"({result.steps} steps on {result.examples:,} rows, {result.seconds:.0f}s)")


@app.command()
def cut(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the cut model.")],
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="Keep the first N transformer layers.")] = None,
    keep: Annotated[str | None, typer.Option(
        "--keep", help="Keep these layers instead, e.g. 0,3,5: a far better start for `train --teacher`.")] = None,
    model: ModelOption = None,
) -> None:
    """Save a model cut to fewer layers: a plain sentence-transformers model every command takes.

    `--layers N` pairs with a model trained by `train --layers` (Matryoshka2dLoss). `--keep 0,3,5`
    keeps the first and last layers of an untouched model, the start for distilling it (`train --teacher`).
    """
    from matryoshka.files import save_model_atomic
    from matryoshka.models.layers import keep_layers
    from matryoshka.models.loading import load_model

    if (layers is None) == (keep is None):
        fail("give exactly one of --layers N and --keep I,J,...")
    try:
        indices = [int(part) for part in keep.split(",") if part.strip()] if keep is not None else []
    except ValueError:
        fail(f"--keep takes comma-separated layer numbers, got {keep!r}")
    try:
        if keep is not None:
            cut_model = keep_layers(load_model(model), indices)
            what = f"layers {','.join(map(str, indices))}"
        else:
            cut_model = load_model(model, layers=layers)
            what = f"{layers} layers"
        saved = save_model_atomic(cut_model, out)
    except MatryoshkaError as exc:
        fail(str(exc))
    console.print(f"saved {model or 'all-MiniLM-L6-v2'} cut to {what} to {saved}")


@app.command()
@upstream_options
def evaluate(
    models: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model(s) to score; repeat the option.")] = None,
    task: Annotated[str, typer.Option(help="stsb, or a retrieval set: scifact, npl, or a BEIR directory.")] = "stsb",
    dims: Annotated[str | None, typer.Option(
        help="Dimensions to score, e.g. 384,64. Default: each model's full size, then each power of "
        "two below it down to 16.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for results.json/.md/.png.")] = Path("runs/evaluate"),
    split: Annotated[str, typer.Option(help="Data split.")] = "test",
    limit: Annotated[int | None, typer.Option(min=10, help="STS only: score the first N pairs.")] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="A layers axis, e.g. 6,4,3,2: score each model cut to each depth, with texts/s "
        "(writes layers-<model>.json/.md/.png).")] = None,
    backend: BackendOption = "torch",
    quantize: QuantizeOption = None,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Score models at every dimension; write JSON, a Markdown table and a plot, with retention.

    With --layers, also score every model cut to each number of layers and time its encoding: a grid
    of (layers, dims) → score and texts/s, as a table and a plot per model. --upstream URL
    --upstream-model NAME scores an embeddings API too (its row is NAME), beside any --model.
    """
    from matryoshka.evaluation import Results
    from matryoshka.evaluation.layers import evaluate_layers, score_on_task
    from matryoshka.models.identity import model_label, short_name
    from matryoshka.models.loading import load_model

    dim_list = parse_ints(dims, "--dims") if dims is not None else None
    config = upstream.config()
    if config is not None and layers:
        fail("--layers cuts a local model's transformer; an --upstream model has none to cut")
    names: list[str | None] = [*(models or [])] if models or config is not None else [None]
    scores: dict[str, dict[int, float]] = {}
    metrics: dict[str, dict[str, dict[int, float]]] = {}
    metric = "spearman_cosine"
    command = " ".join(["matryoshka", *sys.argv[1:]])

    def record(label: str, result: Any) -> None:
        nonlocal metric
        metric, scores[label] = result.metric, result.primary
        if task != "stsb":
            for key, by_dim in result.metrics.items():
                metrics.setdefault(key, {})[label] = by_dim

    try:
        for name in names:
            label = short_name(model_label(name))
            result = None
            if layers:
                grid = evaluate_layers(name, parse_ints(layers, "--layers"), dim_list, task, split, limit, backend,
                                       quantize, label=label)
                grid.metadata["command"] = command
                written = grid.save(out, stem=f"layers-{label}")
                console.print(grid.to_markdown(), markup=False, highlight=False)
                console.print(f"wrote {', '.join(str(p) for p in written.values())}")
                result = grid.full_depth  # the uncut model, already scored by the grid
            if result is None:
                result = score_on_task(load_model(name, backend=backend, quantize=quantize), task, dim_list, split,
                                       limit, show_progress_bar=True)
            record(label, result)
        if config is not None:
            api = load_cli_model(None, config)
            with upstream_cost(console, api):
                scored = score_on_task(api, task, dim_list, split, limit, show_progress_bar=True)
            record(config.model if config.model not in scores else config.label, scored)
    except MatryoshkaError as exc:
        fail(str(exc))
    recorded = [n or "all-MiniLM-L6-v2" for n in names] + ([config.label] if config is not None else [])
    results = Results(task=f"{task}-{split}", metric=metric, scores=scores, metrics=metrics,
                      metadata={"models": recorded, "backend": backend, "quantize": quantize, "command": command})
    results.metadata["dims"] = results.dims  # the ladder may differ per model: record what was scored
    paths = results.save(out)
    print_results(results)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def print_results(results: object) -> None:
    """Print one row per model, one column per dimension, and the retention (ret) at the smallest but one."""
    from matryoshka.evaluation import Results

    assert isinstance(results, Results)
    retention = results.retention()
    dims = results.dims
    kept_at = dims[-2] if len(dims) > 2 else dims[-1]
    table = Table(title=f"{results.task}: {results.metric} × 100 per dimension", title_justify="left")
    table.add_column("model", no_wrap=True, min_width=min(24, max(len(n) for n in results.scores)))
    for d in dims:
        table.add_column(str(d), justify="right", no_wrap=True)
    table.add_column(f"ret@{kept_at}", justify="right", no_wrap=True)
    for name, by_dim in results.scores.items():
        cells = [f"{100 * by_dim[d]:.2f}" if d in by_dim else "" for d in dims]
        kept = f"{100 * retention[name][kept_at]:.1f}%" if kept_at in by_dim else ""
        table.add_row(name, *cells, kept)
    stdout = Console()
    # Piped, Rich assumes 80 columns, which cut the retention header beside long model names.
    (stdout if stdout.is_terminal else Console(width=120)).print(table)


@app.command()
def compare(
    quick: Annotated[bool, typer.Option("--quick", help="Baselines, adaptor twins and top-layer twins only: no full fine-tune (minutes on 2 cores).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/compare"),
    model: ModelOption = None,
    no_static: Annotated[bool, typer.Option("--no-static", help="Skip the StaticEmbedding variant.")] = False,
    no_nli: Annotated[bool, typer.Option("--no-nli", help="Skip the NLI (article) recipe.")] = False,
    no_sts: Annotated[bool, typer.Option("--no-sts", help="Skip the headline recipe (CoSENT on STS-B train's gold scores).")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Cap every recipe's steps (smoke test).")] = None,
    max_examples: Annotated[int, typer.Option(min=2, help="Rows loaded when --max-steps is set.")] = 256,
    eval_limit: Annotated[int | None, typer.Option(min=10, help="Score only the first N STS-B test pairs.")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=2, help="Train a recipe's two variants in 1 or 2 processes.")] = 2,
    weights: Annotated[str | None, typer.Option(
        help="MatryoshkaLoss weights of the self-distillation recipe, one per size of the model's ladder, largest first "
        "(default: 2 at 64, 8 at 32, 4 at 16, 1 at every other size).")] = None,
    keep_previous: Annotated[bool, typer.Option(
        "--keep-previous", help="Reuse results.json in --out: models with unchanged training settings keep their "
        "scores (not retrained); with --no-nli/--no-sts/--no-static, keep those recipes' rows. An interrupted run "
        "leaves the models it finished in results.json, so the same command resumes it.")] = False,
    retrieval: Annotated[str, typer.Option(
        help="BEIR set of the retrieval table (name or directory with test and train qrels).")] = "scifact",
    no_retrieval: Annotated[bool, typer.Option("--no-retrieval", help="Skip the retrieval table.")] = False,
    cache: Annotated[Path, typer.Option(help="Where base-model encodings are kept between runs.")] = Path("runs/cache"),
) -> None:
    """Make Matryoshka models from one base; score them per dimension on STS-B and SciFact beside the baselines.

    --quick fits the rotation and the adaptor twins, and tunes the last layer (STS-B), in minutes; the full run
    also fine-tunes whole models.
    """
    from dataclasses import replace

    from matryoshka.experiments.compare import CompareConfig, run_compare

    kwargs: dict[str, Any] = dict(base_model=model, out=out, seed=seed, run_static=not no_static, run_nli=not no_nli,
                  run_sts=not no_sts,
                  eval_limit=eval_limit, jobs=jobs, keep_previous=keep_previous, cache_dir=cache)
    config = CompareConfig.quick(**kwargs) if quick else CompareConfig(**kwargs)
    if weights is not None:
        config.distill = replace(config.distill, weights=tuple(parse_floats(weights, "--weights")))
        from matryoshka.embeddings.vectors import dimension_ladder
        from matryoshka.models.loading import load_model, model_dimension

        dims = config.dims or tuple(dimension_ladder(model_dimension(load_model(model))))
        try:  # before any work: the recipe would refuse these weights only after scoring the base model
            replace(config.distill, dims=dims).validate(max(dims))
        except InputError:
            raise typer.BadParameter(f"--weights needs {len(dims)} non-negative numbers, got {weights!r}") from None
    if max_steps is not None:
        config.cap(max_steps, max_examples)
    config.retrieval = None if no_retrieval else retrieval
    from matryoshka.models.loading import quiet_loading

    quiet_loading()
    bars = progress_bar(console)
    tasks: dict[str, int] = {}

    def step(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(f"training {label}", total=total)
        bars.update(tasks[label], completed=done, total=total)

    try:
        with bars:
            results = run_compare(config, log=console.print, progress=step)
    except MatryoshkaError as exc:
        fail(str(exc))
    for result in results:
        print_results(result)
    written = [out / "results.json", out / "results.md", out / "results.png"]
    if config.retrieval:
        written += [out / "retrieval.json", out / "retrieval.md"]
    console.print(f"wrote {', '.join(map(str, written))}")


def _register_optional() -> None:
    """Attach the retrieval and serving commands, which live next to the code they drive."""
    from matryoshka.cli.adapt import adapt_app
    from matryoshka.cli.index import advise_command, index_app

    app.add_typer(adapt_app, name="adapt")
    app.add_typer(index_app, name="index", help="Build, search and update a Matryoshka funnel index.")
    app.command("advise")(advise_command)
    from matryoshka.cli.serve import demo_command, serve_command

    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    from matryoshka.cli.static import static_command

    app.command("static")(static_command)


_register_optional()

