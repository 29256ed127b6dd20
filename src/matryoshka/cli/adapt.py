"""``matryoshka adapt``: thin commands over :mod:`matryoshka.adapt` (the validated choice, and applying a map)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli.errors import HandledGroup, fail
from matryoshka.cli.options import (
    CORPUS_HELP,
    IdColumnOption,
    ModelOption,
    TextColumnOption,
    UpstreamArgs,
    load_cli_model,
    parse_ints,
    progress_bar,
    upstream_cost,
    upstream_options,
)

console = Console(stderr=True)


adapt_app = typer.Typer(
    cls=HandledGroup,
    help="Fit a rotation or a learned Matryoshka adaptor on a frozen model's vectors of a corpus.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@adapt_app.callback()
@upstream_options
def adapt(
    ctx: typer.Context,
    corpus: Annotated[str | None, typer.Option(
        "--corpus", "-c", help=f"Texts to fit on: a BEIR set (scifact, npl, a directory), or {CORPUS_HELP}")] = None,
    text_column: TextColumnOption = None,
    id_column: IdColumnOption = None,
    vectors: Annotated[Path | None, typer.Option(
        help="Instead of --corpus: a .npy of corpus vectors from any source (e.g. a hosted API).")] = None,
    method: Annotated[str, typer.Option(
        help="auto (fit the rotation and a learned map, save the one that validates best; never worse than the "
        "rotation), rotation (free, keeps full-size cosines) or learned (saved even where it validates worse).")] = "auto",
    pairs: Annotated[str | None, typer.Option(
        help="(query, document) pairs that supervise the learned map and its validation: a BEIR set (its "
        "--pairs-split qrels) or a file with anchor/positive columns; documents must be corpus texts.")] = None,
    pairs_split: Annotated[str, typer.Option(help="qrels split of a BEIR --pairs set.")] = "train",
    model: ModelOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapted model directory (or .safetensors with --vectors).")] = Path(
        "runs/adapted"),
    dims: Annotated[str | None, typer.Option(
        help="Prefixes the result must serve, e.g. 256,64,32 (default: the model's full size, then each power of "
        "two below it down to 16).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="learned: the most optimizer steps (validation stops earlier).")] = None,
    folds: Annotated[int | None, typer.Option(
        min=1, help="Validation folds over the labelled queries: 1 = one held-out share (default with 250+ queries), "
        "k = k-fold (default 5 with fewer).")] = None,
    no_refit: Annotated[bool, typer.Option(
        "--no-refit", help="With one held-out split, keep the map fitted without the held-out queries instead of "
        "refitting on all of them.")] = False,
    limit: Annotated[int | None, typer.Option(min=2, help="Fit on the first N corpus texts.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the validation split and the fit.")] = 0,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Make a frozen model Matryoshka for a corpus; save an ordinary sentence-transformers model.

    Candidates (the free rotation, a learned map) are scored on held-out data: labelled queries when
    --pairs are given, else how much of each held-out text's full-size neighbourhood a prefix keeps.
    The learned map is saved only where it beats the rotation at every asked dim; adapt-report.json and
    adapt-report.md beside the result say what was checked and why. The output directory loads with plain
    ``SentenceTransformer(path)`` and holds ``adaptor.safetensors``, which ``matryoshka adapt apply``
    applies to vectors from any source.

    With --upstream URL --upstream-model NAME the corpus (and the pairs' queries) are encoded through that
    embeddings API (cached on disk, so a later `index build` of the same corpus costs no call) and the
    adaptor file is saved with its report (an API is no model directory): `serve --upstream ... --adaptor`
    serves it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import replace

    from matryoshka.adapt import METHODS, LearnedConfig, ValidationConfig, choose_adaptor, load_vectors
    from matryoshka.errors import MatryoshkaError

    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if (corpus is None) == (vectors is None):
        fail("give the corpus to fit on: --corpus TEXTS or --vectors FILE.npy (one of them)")
    config = LearnedConfig(seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)
    validation = ValidationConfig(folds=folds, seed=seed, refit=not no_refit)
    dim_list = parse_ints(dims, "--dims") if dims is not None else None
    api = upstream.config()
    try:
        if vectors is not None:
            if pairs is not None:
                fail("--pairs are texts and need a model; with --vectors fit from corpus vectors alone")
            if api is not None:
                fail("--vectors are encoded already; --upstream encodes --corpus texts (give one of them)")
            corpus_vectors = load_vectors(vectors)[:limit]
            with progress_bar(console) as bar:
                fitted, report = choose_adaptor(corpus_vectors, None, method=method, dims=dim_list,  # type: ignore[arg-type]
                                                config=config, validation=validation, progress=_stage_updater(bar))
            _save_adaptor(fitted, report, out, f"{corpus_vectors.shape[0]:,} vectors")
            return
        assert corpus is not None
        if api is not None:
            _adapt_upstream(corpus, text_column, id_column, method, pairs, pairs_split, load_cli_model(model, api),
                            out, config, validation, dim_list, limit)
            return
        _adapt_model(corpus, text_column, id_column, method, pairs, pairs_split, model, out, config, validation,
                     dim_list, limit)
    except MatryoshkaError as exc:
        fail(str(exc))


def _save_adaptor(fitted: Any, report: Any, out: Path, fitted_on: str) -> Path:
    """Save an adaptor file (``out`` itself when it ends in .safetensors, else ``out/adaptor.safetensors``)
    and its report beside it; print the report. What ``adapt apply`` and ``serve --adaptor`` load."""
    target = out if out.suffix == ".safetensors" else out / "adaptor.safetensors"
    fitted.save(target)
    stem = f"{target.stem}.adapt-report" if out.suffix == ".safetensors" else "adapt-report"
    written = report.save(target.parent, stem=stem)
    _print_report(report, written)
    console.print(f"wrote the {report.chosen} adaptor ({fitted.dim}-d, fitted on {fitted_on}) to {target}",
                  soft_wrap=True)
    return target


def _read_pairs(pairs: str | None, pairs_split: str) -> list[tuple[str, str]] | None:
    """The (query, document) rows of ``--pairs`` (``None`` without it)."""
    from matryoshka.data.user import load_training_data

    if pairs is None:
        return None
    data = load_training_data(pairs, split=pairs_split)
    if data.kind != "pairs":
        fail(f"--pairs {pairs} has no anchor/positive columns (found {list(data.columns)})")
    return [(row[0], row[1]) for row in data.rows]


def _adapt_upstream(
    corpus: str, text_column: str | None, id_column: str | None, method: str, pairs: str | None, pairs_split: str,
    api: Any, out: Path, config: Any, validation: Any, dims: list[int] | None, limit: int | None,
) -> None:
    """``adapt --upstream``: the corpus and the pairs' queries encoded through the API, then the validated
    choice on those vectors, saved as an adaptor file with its report."""
    from matryoshka.adapt import AdaptError, Judgements, choose_adaptor, judgements_from_pairs
    from matryoshka.data.corpus import read_corpus
    from matryoshka.embeddings.vectors import encode

    with upstream_cost(console, api):
        _, texts = read_corpus(corpus, text_column=text_column, id_column=id_column)
        texts = texts[:limit]
        empty = [i for i, text in enumerate(texts, start=1) if not text.strip()]
        if empty:
            raise AdaptError(f"{len(empty):,} corpus texts are empty (the first is text {empty[0]:,})")
        if len(texts) < 2:
            raise AdaptError(f"a corpus of {len(texts)} texts cannot fit an adaptor; give at least 2")
        pair_rows = _read_pairs(pairs, pairs_split)
        counts: dict[str, int] = {"corpus_texts": len(texts)}
        warnings: list[str] = []
        queries, relevant = judgements_from_pairs(texts, pair_rows, counts, warnings) if pair_rows else ([], [])
        console.print(f"encoding {len(texts):,} corpus texts" + (f" and {len(queries):,} queries" if queries else "")
                      + f" through {api.label}", soft_wrap=True, highlight=False)
        corpus_vectors = encode(api, texts)
        judgements = Judgements(encode(api, queries), relevant, queries) if queries else None
    with progress_bar(console) as bar:
        fitted, report = choose_adaptor(corpus_vectors, judgements, method=method, dims=dims,  # type: ignore[arg-type]
                                        config=config, validation=validation, progress=_stage_updater(bar))
    report.counts.update(counts)
    report.warnings[:0] = warnings
    fitted.info["upstream"] = api.label
    _save_adaptor(fitted, report, out, f"{len(texts):,} texts" + (f" + {counts['pairs_used']:,} pairs" if queries else ""))


def _adapt_model(
    corpus: str, text_column: str | None, id_column: str | None, method: str, pairs: str | None, pairs_split: str,
    model: str | None, out: Path, config: Any, validation: Any, dims: list[int] | None, limit: int | None,
) -> None:
    from matryoshka.adapt import adapt as fit_adaptor
    from matryoshka.adapt import save_adapted_model
    from matryoshka.data.corpus import read_corpus
    from matryoshka.models.loading import load_model

    _, texts = read_corpus(corpus, text_column=text_column, id_column=id_column)
    texts = texts[:limit]
    pair_rows = _read_pairs(pairs, pairs_split)
    loaded = load_model(model)
    console.print(f"encoding {len(texts):,} corpus texts" + (f" and the queries of {len(pair_rows):,} pairs" if pair_rows else ""))
    with progress_bar(console) as bar:
        result = fit_adaptor(loaded, texts, method=method, pairs=pair_rows, config=config,  # type: ignore[arg-type]
                             progress=_stage_updater(bar), show_progress_bar=True, dims=dims, validation=validation)
    target = save_adapted_model(loaded, result.adaptor, out, report=result.report)
    _print_report(result.report, (target / "adapt-report.json", target / "adapt-report.md"))
    console.print(
        f"saved the {result.report.chosen} adaptor on {result.corpus_texts:,} texts"
        + (f" + {result.pairs:,} pairs" if result.pairs else "")
        + f" to {target} (encoding {result.encode_seconds:.1f}s, fit and validation {result.fit_seconds:.1f}s); "
        f"load it with SentenceTransformer({str(target)!r})", soft_wrap=True,
    )


def _stage_updater(bar: Any) -> Any:
    """A ``progress(stage, step, steps)`` callback: one rich task per stage (fold, refit...)."""
    tasks: dict[str, Any] = {}

    def update(stage: str, step: int, steps: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"fitting: {stage}", total=steps)
        bar.update(tasks[stage], completed=step)

    return update


def _print_report(report: Any, written: tuple[Path, Path]) -> None:
    """The report's short table, the choice in one line, and where the full report is."""
    table = Table(title=f"held-out {report.metric} ×100 ({report.signal})", title_justify="left")
    table.add_column("candidate", no_wrap=True)
    for dim in report.dims:
        table.add_column(str(dim), justify="right")
    for row in report.table():
        table.add_row(*row)
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    console.print(f"chose {report.chosen}: {report.reason}", soft_wrap=True)
    if report.confidence():
        console.print(report.confidence(), soft_wrap=True)
    console.print(f"report: {written[0]}, {written[1]}", soft_wrap=True)


@adapt_app.command("apply")
def adapt_apply(
    vectors: Annotated[Path, typer.Option(help="A .npy of vectors from any source (rows are texts).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the adapted .npy.")],
    adaptor: Annotated[Path, typer.Option(help="adaptor.safetensors, or an adapted model directory.")] = Path(
        "runs/adapted"),
    dim: Annotated[int | None, typer.Option("--dim", "-d", help="Keep this prefix, re-normalized.")] = None,
) -> None:
    """Apply a saved adaptor to vectors from anywhere (a hosted API, another model): Matryoshka prefixes."""


    from matryoshka.adapt import AdaptError, Adaptor, load_vectors
    from matryoshka.embeddings.vectors import DimensionError, truncate
    from matryoshka.files import save_npy_atomic

    try:
        mapped = Adaptor.load(adaptor).apply(load_vectors(vectors))
        mapped = truncate(mapped, dim)
    except (AdaptError, DimensionError) as exc:
        fail(str(exc))
    save_npy_atomic(out, mapped)
    console.print(f"wrote {mapped.shape[0]:,} x {mapped.shape[1]} adapted vectors to {out}")
