"""``matryoshka index ...`` and ``matryoshka advise``: a thin command line over the retrieval API.

matryoshka index build --corpus scifact --out runs/scifact-index --stages funnel
matryoshka index search runs/scifact-index "aspirin and heart attacks" --k 5 --preset binary
matryoshka index add runs/scifact-index --texts new.jsonl
matryoshka index delete runs/scifact-index 4983 5836
matryoshka advise --dataset scifact --target 0.99
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli_options import BackendOption, QuantizeOption
from matryoshka.data.corpus import fill_ids, read_corpus, read_text_file  # noqa: F401  (re-exported for callers)

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

index_app = typer.Typer(
    help="Build, search and update a Matryoshka funnel index (prefix shortlist, full-size re-rank).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model directory or hub name; default: packaged all-MiniLM-L6-v2."),
]
IndexArgument = Annotated[Path, typer.Argument(help="Index directory.", show_default=False)]


@index_app.command()
def build(
    corpus: Annotated[
        str,
        typer.Option(
            "--corpus", "-c", help="A BEIR data set (scifact, npl, or a directory) or a .txt/.jsonl file of texts."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Index directory to write; an existing index is replaced atomically.")
    ],
    model: ModelOption = None,
    stages: Annotated[
        str,
        typer.Option(
            help="Default funnel: a preset (exact, funnel, binary) or a spec such as 64:binary:400,full:float32:10."
        ),
    ] = "exact",
    storage: Annotated[str, typer.Option(help="dtype of the stored full vectors: float32 or float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Index only the first N documents (a quick trial on a large corpus).")
    ] = None,
    backend: BackendOption = "torch",
    quantize: QuantizeOption = None,
) -> None:
    """Encode a corpus at full size and write an index directory, with a progress bar.

    --backend openvino (or onnx, --quantize int8) encodes the corpus faster on a CPU; the index
    records the model, not the backend, since every backend gives the same model's vectors.
    """
    from matryoshka.retrieval.index import FunnelIndex
    from matryoshka.retrieval.stages import format_stages

    with _errors():
        funnel = _parse_stages(stages)
        console.print(f"reading {corpus}", highlight=False)
        ids, texts = read_corpus(corpus)
        if limit is not None and limit < len(texts):
            ids, texts = ids[:limit], texts[:limit]
        ids = fill_ids(ids, existing=[])
        console.print(f"loading model {model_label(model)}", highlight=False)
        loaded = _load_model(model, backend, quantize)
        vectors = encode_with_progress(loaded, texts, batch_size)
        index = FunnelIndex.from_vectors(
            vectors, ids, texts, model_name=model_label(model), stages=funnel, storage=storage
        )  # type: ignore[arg-type]
        index.save(out)
    console.print(
        f"wrote {out}: {len(index):,} vectors × {index.dim} ({storage}), model {index.model_name}, "
        f"stages {format_stages(index.stages)}",
        soft_wrap=True,
    )


@index_app.command()
def search(
    index_dir: Annotated[
        str,
        typer.Argument(
            help="Index directory, or a backend URL (postgresql://..., qdrant://..., qdrant+local://...).",
            show_default=False,
        ),
    ],
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.", show_default=False)],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Hits per query.")] = 10,
    stages: Annotated[
        str | None, typer.Option(help="Funnel spec for this search, e.g. 64:binary:400,full:float32:10.")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="A named funnel: exact, funnel or binary.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Override the model named in the manifest.")
    ] = None,
    mmap: Annotated[bool, typer.Option(help="Map the vectors from disk instead of reading them.")] = False,
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
) -> None:
    """Search an index or a backend; prints the hits and how long each stage took."""
    from matryoshka.backends import backend_kind, open_backend
    from matryoshka.backends.base import timed_search
    from matryoshka.embeddings import encode
    from matryoshka.retrieval.filters import check_filter_keys
    from matryoshka.retrieval.index import FunnelIndex
    from matryoshka.retrieval.stages import PRESETS, check_keeps

    if stages is not None and preset is not None:
        _fail("give --stages or --preset, not both")
    if output not in ("auto", "table", "tsv", "json"):
        raise typer.BadParameter(f"--format must be auto, table, tsv or json, got {output!r}", param_hint="--format")
    out = _out_console()
    fmt = "json" if as_json else output if output != "auto" else ("table" if out.is_terminal else "tsv")
    with _errors():
        funnel = _parse_stages(stages or preset) if (stages or preset) else None
        wanted = _parse_filter(filter)
        if backend_kind(index_dir) == "faiss":
            index: Any = FunnelIndex.load(index_dir.removeprefix("faiss://"), mmap=mmap)
        else:
            index = open_backend(index_dir, create=False)
        name = model or index.model_name
        if not name:
            _fail(f"{index_dir} records no model name; pass --model")
        try:
            check_keeps(funnel if funnel is not None else getattr(index, "stages", PRESETS["exact"]), k)
            if wanted and hasattr(index, "metadata_keys"):
                check_filter_keys(wanted, index.metadata_keys())
            loaded = _load_model(name)
            vectors = encode(loaded, queries)
            hits, timings = timed_search(index, vectors, k, funnel, wanted)
        finally:
            if hasattr(index, "close"):
                index.close()
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
def add(
    index_dir: IndexArgument,
    texts: Annotated[
        Path, typer.Option("--texts", "-t", help='A .txt (one text per line) or .jsonl file ({"_id", "text"}).')
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Override the model named in the manifest.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
) -> None:
    """Encode new texts and add them to an index (no rebuild); texts without ids get the next free numbers."""
    from matryoshka.retrieval.index import FunnelIndex

    with _errors():
        index = FunnelIndex.load(index_dir)
        ids, new_texts = read_text_file(texts)
        ids = fill_ids(ids, existing=index.ids)
        name = model or index.model_name
        if not name:
            _fail(f"{index_dir} records no model name; pass --model")
        vectors = encode_with_progress(_load_model(name), new_texts, batch_size)
        index.add(vectors, ids, new_texts)
        index.save(index_dir)
    console.print(f"added {len(ids):,} texts to {index_dir} (now {len(index):,})")


@index_app.command()
def delete(
    index_dir: IndexArgument,
    ids: Annotated[list[str], typer.Argument(help="Ids of the documents to remove.", show_default=False)],
) -> None:
    """Remove documents by id; unknown ids are reported, not an error."""
    from matryoshka.retrieval.index import FunnelIndex

    with _errors():
        index = FunnelIndex.load(index_dir)
        unknown = [doc_id for doc_id in dict.fromkeys(ids) if doc_id not in index]
        removed = index.delete(ids)
        if removed:
            index.save(index_dir)
    console.print(f"deleted {removed:,} of {len(set(ids)):,} ids from {index_dir} (now {len(index):,})")
    if unknown:
        console.print(
            f"[yellow]not in the index:[/yellow] {', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''}"
        )


@index_app.command()
def info(index_dir: IndexArgument) -> None:
    """Print an index's manifest (no data files are read)."""
    from matryoshka.retrieval.store import IndexCorruptError, read_manifest

    try:
        manifest = read_manifest(index_dir)
    except (FileNotFoundError, IndexCorruptError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))


def advise_command(
    dataset: Annotated[str, typer.Option(help="A BEIR data set: scifact, npl, or a directory.")] = "scifact",
    model: ModelOption = None,
    target: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of exact nDCG@10 to keep.")] = 0.99,
    dims: Annotated[str, typer.Option(help="First-stage dims to try, comma-separated.")] = "384,256,128,64,32,16",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the report: a .json or .md file, or a directory for both."),
    ] = None,
) -> None:
    """Recommend the cheapest funnel (first-stage bytes, then speed) that keeps target × exact nDCG@10."""
    from matryoshka.data.beir import load_beir
    from matryoshka.files import write_atomic
    from matryoshka.retrieval.advisor import advise

    try:
        dim_list = [int(part) for part in dims.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--dims must be comma-separated integers, got {dims!r}") from None
    if not dim_list:
        raise typer.BadParameter("--dims is empty")
    with _errors():
        data = load_beir(dataset)
        loaded = _load_model(model)
        console.print(f"{data!r}: encoding {len(data.corpus):,} documents and {len(data.queries):,} queries once")
        report = advise(loaded, data, dim_list, target=target, model_name=model_label(model), show_progress=True)
    _out_console().print(report.table())
    if out is not None:
        if out.suffix == ".json":
            write_atomic(out, json.dumps(report.to_dict(), indent=2).encode())
        elif out.suffix == ".md":
            write_atomic(out, report.to_markdown().encode())
        else:
            write_atomic(out / "advice.json", json.dumps(report.to_dict(), indent=2).encode())
            write_atomic(out / "advice.md", report.to_markdown().encode())
        console.print(f"wrote {out}")


# -- helpers (public so the server and tests can reuse them) ------------------------------------


def model_label(name: str | None) -> str:
    """What the manifest records for ``--model``: the default's name, an absolute path, or a hub name."""
    from matryoshka.models import DEFAULT_MODEL

    if name is None:
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def encode_with_progress(model: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Encode at full size in chunks under a rich progress bar."""
    import numpy as np
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from matryoshka.embeddings import encode
    from matryoshka.models import model_dimension

    if not texts:
        return np.zeros((0, model_dimension(model)), dtype=np.float32)
    # A few batches per update: long enough for sentence-transformers to sort texts by length, short
    # enough that the bar moves every few seconds (1,024-text chunks of abstracts took minutes each).
    chunk = batch_size * 4
    parts = []
    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    reported = 0
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("encoding", total=len(texts))
        for start in range(0, len(texts), chunk):
            batch = texts[start : start + chunk]
            parts.append(encode(model, batch, batch_size=batch_size, show_progress_bar=False))
            progress.advance(task, len(batch))
            done = start + len(batch)
            if not console.is_terminal and (done - reported >= max(len(texts) // 10, 1) or done == len(texts)):
                console.print(f"encoded {done:,}/{len(texts):,}", highlight=False)  # no bar when piped
                reported = done
    return np.concatenate(parts)


def timings_table(timings: list[dict[str, Any]], queries: int) -> Table:
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


def _load_model(name: str | None, backend: str = "torch", quantize: str | None = None) -> SentenceTransformer:
    from matryoshka.models import load_model, resolve_model_name

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
        _fail(f"--filter is not valid JSON: {exc}")
    if not isinstance(value, dict):
        _fail('--filter must be a JSON object such as {"source": "scifact"}')
    check_filter(value)
    return value


def _parse_stages(spec: str) -> list:
    from matryoshka.retrieval.stages import parse_stages

    try:
        return parse_stages(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--stages/--preset") from None


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


class _errors:
    """Turn the library's expected errors into a one-line message and exit status 1."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> bool:
        from matryoshka.models import ModelLoadError
        from matryoshka.retrieval.store import IndexCorruptError

        expected = (ValueError, FileNotFoundError, FileExistsError, IndexCorruptError, ModelLoadError)
        if exc is not None and isinstance(exc, expected) and not isinstance(exc, typer.BadParameter):
            _fail(str(exc))
        return False
