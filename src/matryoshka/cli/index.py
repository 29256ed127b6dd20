"""``matryoshka index ...`` and ``matryoshka advise``: a thin command line over the retrieval API.

Every ``index`` command takes an index URL: a directory (or ``faiss://DIR``), ``postgresql://...``,
``qdrant://HOST/COLLECTION`` or ``qdrant+local://DIR`` (see :func:`matryoshka.indexes.open_index`).

matryoshka index build --corpus scifact --out runs/scifact-index --stages funnel
matryoshka index search runs/scifact-index "aspirin and heart attacks" --k 5 --preset binary
matryoshka index add postgresql://localhost/search?table=docs --texts new.jsonl
matryoshka index delete runs/scifact-index 4983 5836
matryoshka advise --dataset scifact --target 0.99
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli.errors import HandledGroup, fail
from matryoshka.cli.options import (
    CORPUS_HELP,
    BackendOption,
    IdColumnOption,
    QuantizeOption,
    TextColumnOption,
    UpstreamArgs,
    load_cli_model,
    upstream_cost,
    upstream_options,
)
from matryoshka.data.corpus import fill_ids, read_corpus, read_text_file  # noqa: F401  (re-exported for callers)
from matryoshka.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from matryoshka.models.loading import AnyModel
    from matryoshka.retrieval.stages import Stage

index_app = typer.Typer(
    help="Build, search and update a Matryoshka funnel index (prefix shortlist, full-size re-rank) on any engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=HandledGroup,
)
console = Console(stderr=True)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model directory or hub name; default: packaged all-MiniLM-L6-v2."),
]
IndexArgument = Annotated[
    str,
    typer.Argument(
        help="Index: a directory (faiss://DIR), postgresql://..., qdrant://HOST/COLLECTION or qdrant+local://DIR.",
        show_default=False,
    ),
]


@index_app.command()
@upstream_options
def build(
    corpus: Annotated[
        str,
        typer.Option("--corpus", "-c", help=CORPUS_HELP),
    ],
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Index URL or directory to write; its documents are replaced all at once "
                     "(the old ones stay until the new ones are complete); an index of another model or dimension "
                     "is refused before encoding."),
    ],
    model: ModelOption = None,
    stages: Annotated[
        str,
        typer.Option(
            help="Default funnel: a preset (exact, funnel, binary) or a spec such as 64:binary:400,full:float32:10."
        ),
    ] = "exact",
    storage: Annotated[str, typer.Option(help="dtype of the stored full vectors: float32 or float16 (faiss:// only).")] = "float32",
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Index only the first N documents (a quick trial on a large corpus).")
    ] = None,
    backend: BackendOption = "torch",
    quantize: QuantizeOption = None,
    text_column: TextColumnOption = None,
    id_column: IdColumnOption = None,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Encode a corpus at full size and write it to an index (any engine), with a progress bar.

    An existing index keeps its old documents until all the new ones are written (``replace_all``:
    one transaction on PostgreSQL, an alias switch on Qdrant, an atomic save of a directory).
    --backend openvino (or onnx, --quantize int8) encodes the corpus faster on a CPU; the index
    records the model, not the backend, since every backend gives the same model's vectors.
    --upstream URL --upstream-model NAME encodes through an embeddings API (texts already in the
    vector cache cost no call); the index records URL#NAME as its model.
    """
    from matryoshka.ingest import rebuild_index
    from matryoshka.retrieval.stages import format_stages

    funnel = _parse_stages(stages)
    config = upstream.config()
    source = load_cli_model(model, config, backend=backend, quantize=quantize) if config is not None else model
    with upstream_cost(console, source):
        info = rebuild_index(corpus, out, source, stages=funnel, storage=storage, batch_size=batch_size,  # type: ignore[arg-type]
                             limit=limit, runtime=backend, quantize=quantize, text_column=text_column,
                             id_column=id_column, log=lambda message: console.print(message, highlight=False),
                             load=_load_model)
    console.print(
        f"wrote {info.url}: {info.count:,} vectors × {info.dim} ({storage}), model {info.model_name}, "
        f"stages {format_stages(info.stages)}",
        soft_wrap=True,
    )


@index_app.command()
@upstream_options
def search(
    index_url: IndexArgument,
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.", show_default=False)],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Hits per query.")] = 10,
    stages: Annotated[
        str | None, typer.Option(help="Funnel spec for this search, e.g. 64:binary:400,full:float32:10.")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="A named funnel: exact, funnel or binary.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Override the model the index records.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per query (same as --format json).")] = False,
    output: Annotated[
        str,
        typer.Option(
            "--format",
            help="table (a terminal), tsv (piped: query, rank, id, score, text), json (one object per query); "
            "auto picks table on a terminal, tsv otherwise.",
        ),
    ] = "auto",
    filter: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter as JSON, e.g. \'{"source": ["scifact", "npl"]}\'.')
    ] = None,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Search an index; prints the hits and how long each stage took (an index built through an
    upstream API needs the same --upstream and --upstream-model)."""
    from matryoshka.embeddings.vectors import encode
    from matryoshka.indexes import open_index
    from matryoshka.retrieval.filters import check_filter_keys
    from matryoshka.retrieval.stages import check_keeps

    if stages is not None and preset is not None:
        fail("give --stages or --preset, not both")
    if output not in ("auto", "table", "tsv", "json"):
        raise typer.BadParameter(f"--format must be auto, table, tsv or json, got {output!r}", param_hint="--format")
    out = _out_console()
    fmt = "json" if as_json else output if output != "auto" else ("table" if out.is_terminal else "tsv")
    spec = stages or preset
    funnel = _parse_stages(spec) if spec else None
    wanted = _parse_filter(filter)
    with open_index(index_url, create=False) as index:
        check_keeps(funnel if funnel is not None else index.stages, k)
        keys = index.metadata_keys()
        if wanted and keys is not None:
            check_filter_keys(wanted, keys)
        loaded = _index_model(index_url, index.model_name, model, upstream)
        with upstream_cost(console, loaded):
            vectors = encode(loaded, queries)
        hits, timings = index.search_with_timings(vectors, k=k, stages=funnel, filter=wanted)
    if fmt == "json":
        for query, found in zip(queries, hits):
            row = {
                "query": query,
                "hits": [{"id": h.id, "score": h.score, "text": h.text} for h in found],
                "stages": timings,
            }
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    if fmt == "tsv":
        typer.echo("query\trank\tid\tscore\ttext")
        for query, found in zip(queries, hits):
            for rank, hit in enumerate(found, start=1):
                fields = (query, str(rank), hit.id, f"{hit.score:.4f}", hit.text or "")
                typer.echo("\t".join(one_line(f) for f in fields))
        console.print(timings_table(timings, len(queries)))  # stderr: stdout stays plain TSV
        return
    for query, found in zip(queries, hits):
        out.print(hits_table(query, found, out.width))
    out.print(timings_table(timings, len(queries)))


def one_line(text: str) -> str:
    """``text`` with newlines and tabs as single spaces, so one hit stays one row (of a table or a TSV)."""
    return " ".join(text.split())


def hits_table(query: str, hits: list[Any], width: int) -> Table:
    """One query's hits as a rich table of ``width`` columns that keeps ``#``, ``id`` and ``score`` whole.

    Those three get exactly their content's width (ids are cut at 40 characters with an ellipsis) and
    the text gets what is left, cut to one line; on a terminal too narrow for any text, it is left out.
    Rich would otherwise shrink every no-wrap column alike, down to nothing.
    """
    rank_w = len(str(len(hits))) or 1
    id_w = min(max([len(h.id) for h in hits] + [2]), 40)
    score_w = 6
    text_w = width - (rank_w + id_w + score_w) - 13  # 4 columns: 3 border/padding characters each, plus 1
    table = Table(title=one_line(query), title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, width=rank_w)
    table.add_column("id", no_wrap=True, overflow="ellipsis", width=id_w)
    table.add_column("score", justify="right", no_wrap=True, width=score_w)
    if text_w >= 8:
        table.add_column("text", overflow="ellipsis", no_wrap=True, width=min(text_w, 100))
    for rank, hit in enumerate(hits, start=1):
        cells = [str(rank), hit.id, f"{hit.score:.4f}", one_line(hit.text or "")]
        table.add_row(*cells[: len(table.columns)])
    return table


def _out_console() -> Console:
    """The stdout console, created per command so it sees the current terminal (width, TTY or pipe)."""
    return Console()


@index_app.command()
@upstream_options
def add(
    index_url: IndexArgument,
    texts: Annotated[
        Path, typer.Option("--texts", "-t", help='A .txt (one text per line) or .jsonl file ({"_id", "text", "metadata"}).')
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Override the model the index records.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    upstream: UpstreamArgs = UpstreamArgs(),
) -> None:
    """Encode new texts and add them to an index (no rebuild); texts without ids get the next free numbers."""
    from matryoshka.data.corpus import jsonl_metadata
    from matryoshka.errors import InputError
    from matryoshka.indexes import open_index
    from matryoshka.ingest import free_ids

    with open_index(index_url, create=False) as index:
        ids, new_texts = read_text_file(texts)
        metadata = jsonl_metadata(texts, len(new_texts))
        given = [i for i in ids if i is not None]
        taken = sorted(index.existing(given))
        if taken:
            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise InputError(f"id {taken[0]!r}{more} is already in the index; delete it first to replace it")
        filled = free_ids(index, ids)
        loaded = _index_model(index_url, index.model_name, model, upstream)
        with upstream_cost(console, loaded):
            vectors = encode_with_progress(loaded, new_texts, batch_size)
        index.upsert(filled, vectors, new_texts, metadata)
        count = len(index)
    console.print(f"added {len(filled):,} texts to {index_url} (now {count:,})", soft_wrap=True, highlight=False)


@index_app.command()
def delete(
    index_url: IndexArgument,
    ids: Annotated[list[str], typer.Argument(help="Ids of the documents to remove.", show_default=False)],
) -> None:
    """Remove documents by id; unknown ids are reported, not an error."""
    from matryoshka.indexes import open_index

    wanted = list(dict.fromkeys(ids))
    with open_index(index_url, create=False) as index:
        present = index.existing(wanted)
        removed = index.delete(wanted)
        count = len(index)
    unknown = [doc_id for doc_id in wanted if doc_id not in present]
    console.print(f"deleted {removed:,} of {len(wanted):,} ids from {index_url} (now {count:,})", soft_wrap=True,
                  highlight=False)
    if unknown:
        console.print(
            f"[yellow]not in the index:[/yellow] {', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''}",
            soft_wrap=True,
        )


@index_app.command()
def info(index_url: IndexArgument) -> None:
    """Print what an index records (model, dims, default funnel, count, engine details) as JSON."""
    from matryoshka.indexes import open_index

    with open_index(index_url, create=False) as index:
        typer.echo(json.dumps(index.info().to_dict(), indent=2, ensure_ascii=False))


def advise_command(
    dataset: Annotated[str, typer.Option(help="A BEIR data set: scifact, npl, or a directory.")] = "scifact",
    model: ModelOption = None,
    target: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of exact nDCG@10 to keep.")] = 0.99,
    dims: Annotated[str | None, typer.Option(
        help="First-stage dims to try, comma-separated (default: the model's full size, then each power of "
        "two below it down to 16).")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the report: a .json or .md file, or a directory for both."),
    ] = None,
) -> None:
    """Recommend the cheapest funnel (first-stage bytes, then speed) that keeps target × exact nDCG@10."""
    from matryoshka.data.beir import load_beir
    from matryoshka.embeddings.vectors import dimension_ladder
    from matryoshka.experiments.advise import advise
    from matryoshka.files import write_atomic
    from matryoshka.models.identity import model_label
    from matryoshka.models.loading import model_dimension

    try:
        dim_list = [int(part) for part in dims.split(",") if part.strip()] if dims is not None else None
    except ValueError:
        raise typer.BadParameter(f"--dims must be comma-separated integers, got {dims!r}") from None
    if dim_list is not None and not dim_list:
        raise typer.BadParameter("--dims is empty")
    data = load_beir(dataset)
    loaded = _load_model(model)
    dim_list = dim_list or dimension_ladder(model_dimension(loaded))
    console.print(f"{data!r}: encoding {len(data.corpus):,} documents and {len(data.queries):,} queries once")
    report = advise(loaded, data, dim_list, target=target, model_name=model_label(model), show_progress=True)
    out_console = _out_console()
    out_console.print(fit_table(report.table(), out_console.width, ADVICE_DROPS))
    if out is not None:
        if out.suffix == ".json":
            write_atomic(out, json.dumps(report.to_dict(), indent=2).encode())
        elif out.suffix == ".md":
            write_atomic(out, report.to_markdown().encode())
        else:
            write_atomic(out / "advice.json", json.dumps(report.to_dict(), indent=2).encode())
            write_atomic(out / "advice.md", report.to_markdown().encode())
        console.print(f"wrote {out}")


# -- helpers ------------------------------------------------------------------------------------


def encode_with_progress(model: AnyModel, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """:func:`matryoshka.ingest.encode_chunks` under a rich progress bar (a line per tenth when piped)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from matryoshka.ingest import encode_chunks, piped_progress

    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    report = piped_progress(console, len(texts))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("encoding", total=len(texts))

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done)
            report(done)

        return encode_chunks(model, texts, batch_size, on_progress=advance)


#: Columns of the advice table left out, in this order, while it is wider than the terminal.
ADVICE_DROPS = ("memory B/vec", "overlap@", "nDCG@", "queries/s", "ok", "scan B/vec", "vs exact")


def fit_table(table: Table, width: int, drops: Sequence[str]) -> Table:
    """``table`` with its first column (the key, e.g. a config) kept whole, fitted to ``width`` columns.

    Rich shrinks every column of a table wider than the terminal, the key too (``16:bina…``), so
    the columns whose header starts with one of ``drops`` are left out, in that order, until the
    natural widths fit; the caption says which. A key longer than the whole width folds onto more
    lines rather than being cut.
    """
    measure = Console(width=max(width, 1))

    def natural(column: Any) -> int:
        cells = [column.header, *column.cells]
        return max((measure.measure(cell).maximum for cell in cells), default=1)

    def total() -> int:
        return sum(natural(column) + 3 for column in table.columns) + 1  # padding and a border per column

    left_out = []
    for prefix in drops:
        if total() <= width:
            break
        found = [column for column in table.columns[1:] if str(column.header).startswith(prefix)]
        for column in found:
            table.columns.remove(column)
            left_out.append(str(column.header))
    key = table.columns[0]
    key.no_wrap, key.overflow, key.min_width = False, "fold", min(natural(key), max(width - 4, 1))
    if left_out:
        note = f"Left out at {width} columns: {', '.join(left_out)} (a wider terminal or --out shows them)."
        table.caption = f"{table.caption} {note}" if table.caption else note
    return table


def timings_table(timings: Sequence[Mapping[str, Any]], queries: int) -> Table:
    """Per-stage timings of one search call as a rich table."""
    table = Table(title=f"stages ({queries} {'query' if queries == 1 else 'queries'})", title_justify="left")
    for column in ("stage", "dim", "codec", "candidates", "keep", "ms"):
        table.add_column(column, justify="left" if column in ("codec",) else "right")
    for position, t in enumerate(timings, start=1):
        table.add_row(
            str(position),
            str(t["dim"]),
            t["codec"],
            f"{t['candidates']:,}",
            f"{t['keep']:,}",
            f"{t['seconds'] * 1000:.2f}",
        )
    table.add_row("", "", "total", "", "", f"{sum(t['seconds'] for t in timings) * 1000:.2f}", style="bold")
    return table


_MODELS: dict[str, Any] = {}


def _index_model(url: str, recorded: str | None, model: str | None, upstream: UpstreamArgs) -> AnyModel:
    """The model to encode for an index: --upstream (which must be the API the index records), --model, or
    the model the index records. An index built through an API names it, so its queries go there too."""
    from matryoshka.errors import ModelError
    from matryoshka.ingest.rebuild import use_model_hint
    from matryoshka.models.upstream import split_label

    config = upstream.config()
    if config is not None:
        if recorded and recorded != config.label and model is None:
            raise ModelError(f"{url} holds vectors of model {recorded!r}, not {config.label!r}")
        return load_cli_model(model, config)
    name = model or recorded
    if not name:
        fail(f"{url} records no model name; pass --model")
    if split_label(name) is not None:
        fail(f"{url} was built through an upstream API: {use_model_hint(name)}")
    return _load_model(name)


def _load_model(name: str | None, backend: str = "torch", quantize: str | None = None) -> SentenceTransformer:
    from matryoshka.models.loading import load_model, resolve_model_name

    key = f"{resolve_model_name(name)}|{backend}|{quantize}"
    if key not in _MODELS:  # one process may load the same model for several commands (tests, notebooks)
        _MODELS[key] = load_model(name, backend=backend, quantize=quantize)
    return _MODELS[key]


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    from matryoshka.retrieval.filters import check_filter

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--filter is not valid JSON: {exc}")
    if not isinstance(value, dict):
        fail('--filter must be a JSON object such as {"source": "scifact"}')
    check_filter(value)
    return value


def _parse_stages(spec: str) -> list[Stage]:
    from matryoshka.retrieval.stages import parse_stages

    try:
        return parse_stages(spec)
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--stages/--preset") from None
