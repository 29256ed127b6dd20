"""Typer options shared by the commands: the model, what runs it and on how many layers, an upstream
embeddings API instead of a local model, a corpus's columns, and list parsers.

They live apart from :mod:`matryoshka.cli.app` so command modules registered by it can import them without
importing it (``python -m matryoshka.cli`` runs it as a module).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

from matryoshka.cli.errors import fail

if TYPE_CHECKING:
    from matryoshka.models.loading import AnyModel
    from matryoshka.models.upstream import UpstreamConfig

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

#: Where the upstream options show in ``--help``.
UPSTREAM_PANEL = "Upstream API (instead of a local model)"
UpstreamOption = Annotated[str | None, typer.Option(
    "--upstream", rich_help_panel=UPSTREAM_PANEL, show_default=False,
    help="Base URL of an OpenAI-compatible embeddings API (e.g. http://host:8080/v1): its full-size vectors "
    "stand in for a local model's.")]
UpstreamModelOption = Annotated[str | None, typer.Option(
    "--upstream-model", rich_help_panel=UPSTREAM_PANEL, show_default=False,
    help="The model name sent to --upstream (required with it).")]
UpstreamKeyEnvOption = Annotated[str | None, typer.Option(
    "--upstream-key-env", rich_help_panel=UPSTREAM_PANEL, show_default=False,
    help="Name of the environment variable holding the upstream's key (sent as a Bearer token; never printed).")]
UpstreamBatchOption = Annotated[int, typer.Option(
    "--upstream-batch", min=1, rich_help_panel=UPSTREAM_PANEL, help="Texts per upstream call.")]
UpstreamCharsOption = Annotated[int, typer.Option(
    "--upstream-max-chars", min=1, rich_help_panel=UPSTREAM_PANEL, help="Characters per upstream call.")]
UpstreamConcurrencyOption = Annotated[int, typer.Option(
    "--upstream-concurrency", min=1, rich_help_panel=UPSTREAM_PANEL, help="Upstream calls in flight at once.")]
UpstreamTimeoutOption = Annotated[float, typer.Option(
    "--upstream-timeout", min=0.001, rich_help_panel=UPSTREAM_PANEL, help="Seconds one upstream call may take.")]
UpstreamRetriesOption = Annotated[int, typer.Option(
    "--upstream-retries", min=0, rich_help_panel=UPSTREAM_PANEL,
    help="Tries after a 429, a 5xx, a timeout or a dropped connection (backoff honours Retry-After).")]
NoCacheOption = Annotated[bool, typer.Option(
    "--no-cache", rich_help_panel=UPSTREAM_PANEL,
    help="Do not read or write the upstream vector cache ($MATRYOSHKA_CACHE/upstream, else ~/.cache/matryoshka/upstream).")]


@dataclass(frozen=True)
class UpstreamArgs:
    """The upstream options of one command, as given (``url=None``: no upstream)."""

    url: str | None = None
    model: str | None = None
    key_env: str | None = None
    batch: int = 32
    max_chars: int = 100_000
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    no_cache: bool = False

    def config(self) -> UpstreamConfig | None:
        """The :class:`UpstreamConfig` these options describe; ``None`` without ``--upstream``. Options that
        need ``--upstream``, or ``--upstream`` without ``--upstream-model``, fail with one line."""
        from matryoshka.models.upstream import UpstreamConfig, default_cache_dir

        if self.url is None:
            stray = [name for name, value in (("--upstream-model", self.model), ("--upstream-key-env", self.key_env),
                                              ("--no-cache", self.no_cache)) if value]
            if stray:
                fail(f"{', '.join(stray)} {'needs' if len(stray) == 1 else 'need'} --upstream URL")
            return None
        if not self.model:
            fail("--upstream needs --upstream-model NAME (the model name the API expects)")
        return UpstreamConfig(
            self.url, self.model, key_env=self.key_env, batch_size=self.batch, max_chars=self.max_chars,
            concurrency=self.concurrency, timeout=self.timeout, retries=self.retries,
            cache_dir=None if self.no_cache else default_cache_dir(),
        )


#: The options :func:`upstream_options` adds, by :class:`UpstreamArgs` field: (parameter name, annotation).
_UPSTREAM_PARAMETERS: dict[str, tuple[str, Any]] = {
    "url": ("upstream", UpstreamOption), "model": ("upstream_model", UpstreamModelOption),
    "key_env": ("upstream_key_env", UpstreamKeyEnvOption), "batch": ("upstream_batch", UpstreamBatchOption),
    "max_chars": ("upstream_max_chars", UpstreamCharsOption),
    "concurrency": ("upstream_concurrency", UpstreamConcurrencyOption),
    "timeout": ("upstream_timeout", UpstreamTimeoutOption), "retries": ("upstream_retries", UpstreamRetriesOption),
    "no_cache": ("no_cache", NoCacheOption),
}

Command = TypeVar("Command", bound=Callable[..., Any])
M = TypeVar("M")


def upstream_options(command: Command) -> Command:
    """Give a Typer command every upstream option (``--upstream``, ``--upstream-model``, ...); the command
    receives them as one ``upstream: UpstreamArgs`` parameter, so each command lists one line, not nine.

    Example:
        >>> @app.command()
        ... @upstream_options
        ... def encode(texts: list[str], upstream: UpstreamArgs = UpstreamArgs()) -> None: ...
    """
    hints = get_type_hints(command, include_extras=True)  # real objects: Typer reads the new signature as is
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in inspect.signature(command).parameters.values() if p.name != "upstream"]
    defaults = {f.name: f.default for f in fields(UpstreamArgs)}
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[field], annotation=annotation)
             for field, (name, annotation) in _UPSTREAM_PARAMETERS.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {field: kwargs.pop(name) for field, (name, _) in _UPSTREAM_PARAMETERS.items() if name in kwargs}
        return command(*args, upstream=UpstreamArgs(**given), **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in own}, **dict(_UPSTREAM_PARAMETERS.values())}
    return wrapper  # type: ignore[return-value]


def load_cli_model(
    model: str | None, upstream: UpstreamArgs | UpstreamConfig | None = None, *, backend: str = "torch",
    quantize: str | None = None, layers: int | None = None,
) -> AnyModel:
    """The model a command's options name: ``--upstream ...`` (an API), else ``--model`` run by ``--backend``.

    ``--model`` (or a local model's options) together with ``--upstream`` fails with one line.
    """
    from matryoshka.models.loading import load_model

    config = upstream.config() if isinstance(upstream, UpstreamArgs) else upstream
    if config is None:
        return load_model(model, backend=backend, quantize=quantize, layers=layers)
    local = [name for name, value in (("--model", model), ("--quantize", quantize), ("--layers", layers)) if value]
    local += ["--backend"] if backend != "torch" else []
    if local:
        fail(f"--upstream calls an API instead of a local model: drop {', '.join(local)}")
    return load_model(upstream=config)


def upstream_summary(model: object) -> str | None:
    """One line of what an upstream model cost (calls, texts, cache hit rate); ``None`` for a local model."""
    from matryoshka.models.upstream import UpstreamModel

    if not isinstance(model, UpstreamModel):
        return None
    stats = model.stats
    retries = f" ({stats.retries} retries)" if stats.retries else ""
    line = f"upstream {model.config.model}: {stats.calls:,} calls{retries}, {stats.texts:,} texts embedded; "
    if model.cache is None:
        return line + "cache off"
    rate = stats.hit_rate
    shown = f"{100 * rate:.1f}% hit rate" if rate is not None else "no lookups"
    return line + f"cache {stats.cache_hits:,} hits, {stats.cache_misses:,} misses ({shown})"


@contextlib.contextmanager
def upstream_cost(console: Any, model: M) -> Iterator[M]:
    """Use ``model`` inside; then, for an upstream model, print :func:`upstream_summary` on ``console`` (when the
    block succeeded: a failure's one ``error:`` line says enough) and close it. A local model passes through."""
    from matryoshka.models.upstream import UpstreamModel

    try:
        yield model
        line = upstream_summary(model)
        if line:
            console.print(line, soft_wrap=True, highlight=False)
    finally:
        if isinstance(model, UpstreamModel):
            model.close()


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
    """The commands' one progress bar: description, bar, done/total, elapsed, time left; cleared when done."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("left"), TimeRemainingColumn(), console=console, transient=True)
