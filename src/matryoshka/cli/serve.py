"""``matryoshka serve`` and ``matryoshka demo``: plain functions with Typer annotations.

``matryoshka.cli.app`` registers them with ``app.command("serve")(serve_command)``.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from matryoshka.cli.errors import fail
from matryoshka.cli.options import QuantizeOption, UpstreamArgs, upstream_options
from matryoshka.errors import MatryoshkaError
from matryoshka.serving.demo.index import DEMO_CACHE, DEMO_LIMIT

if TYPE_CHECKING:
    from matryoshka.models.upstream import UpstreamConfig
    from matryoshka.serving.served import Served

HostOption = Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")]
PortOption = Annotated[int, typer.Option(help="TCP port.")]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="MATRYOSHKA_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 and /demo/api."
    ),
]
ResultsOption = Annotated[
    list[Path] | None,
    typer.Option("--results", help="Evaluation results JSON (matryoshka evaluate) for the demo's quality chart and "
                 "the safe dimensions of models without an adapt report; repeatable."),
]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads for the model, on every backend (default: torch's choice).")
]
ServeBackendOption = Annotated[str, typer.Option(
    "--backend", help="auto (fastest that agrees with torch), torch, onnx or openvino.")]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]
AdaptorOption = Annotated[Path | None, typer.Option(
    "--adaptor", help="An adaptor from `matryoshka adapt` (.safetensors, or its directory), applied to the served "
    "model's vectors; its report's safe dimensions are listed in /v1/models.")]
StrictOption = Annotated[bool, typer.Option(
    "--strict-dimensions", help="Refuse (400) a 'dimensions' outside the model's safe ones (matryoshka_dimensions).")]
SafeShareOption = Annotated[float, typer.Option(
    "--safe-share", min=0.01, max=1.0, help="The share of full-size quality a safe dimension keeps (adapt report, "
    "or --results).")]


def _run(app: object, host: str, port: int, log_level: str, announce: str, sock: object | None = None) -> None:
    """Run uvicorn in the foreground with JSON logs; Ctrl-C / SIGTERM drain requests in flight, then stop.

    ``announce`` is printed only once the app's start-up (model warm-up) has finished, so a failure
    there never follows a "serving on" line; ``sock`` is the already-bound listening socket.
    """
    import uvicorn

    from matryoshka.serving.http.middleware import configure_json_logging
    from matryoshka.serving.runner import uvicorn_config

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                typer.echo(announce, err=True)

    configure_json_logging(getattr(logging, log_level.upper(), logging.INFO))
    server = AnnouncingServer(uvicorn_config(app, host=host, port=port, log_level=log_level.lower()))  # type: ignore[arg-type]
    server.run(sockets=[sock] if sock is not None else None)  # type: ignore[list-item]
    if not server.started:
        typer.echo("error: the server did not start (see the log line above)", err=True)
        raise typer.Exit(1)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@upstream_options
def serve_command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve (name, directory or NAME=DIRECTORY); repeatable. Default: all-MiniLM-L6-v2.",
        ),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    api_key: ApiKeyOption = None,
    index: Annotated[
        str | None,
        typer.Option(help="Funnel index directory (matryoshka index build) or backend URL (postgresql://..., qdrant://...) for /v1/search."),
    ] = None,
    results: ResultsOption = None,
    max_inputs: Annotated[int, typer.Option(help="Texts per embeddings request.")] = 2048,
    max_input_chars: Annotated[int, typer.Option(help="Characters per text.")] = 32_768,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body; larger gets 413.")] = 16 * 1024 * 1024,
    batch_max_texts: Annotated[
        int, typer.Option(help="Most texts in one model call; larger requests are split into calls this size.")
    ] = 64,
    batch_wait_ms: Annotated[float | None, typer.Option(
        help="How long a lone request waits for others to batch with. Default: 2 ms, 0 for --upstream.")] = None,
    max_queued_texts: Annotated[
        int | None,
        typer.Option(help="Texts waiting for the model at most; more get 429 + Retry-After. Default max(8192, 4 x max-inputs)."),
    ] = None,
    timeout_header: Annotated[float, typer.Option(help="Seconds a client has to send a request's headers.")] = 10.0,
    timeout_body: Annotated[float, typer.Option(help="Seconds a client has to send a request's body.")] = 30.0,
    timeout_keep_alive: Annotated[float, typer.Option(help="Seconds an idle kept-alive connection stays open.")] = 5.0,
    threads: ThreadsOption = None,
    log_level: LogLevelOption = "info",
    backend: ServeBackendOption = "auto",
    quantize: QuantizeOption = None,
    upstream: UpstreamArgs = UpstreamArgs(),  # noqa: B008 - the options of @upstream_options, as one value
    served_name: Annotated[str | None, typer.Option(
        "--served-name", help="The name --upstream's model is served under (default: --upstream-model).")] = None,
    adaptor: AdaptorOption = None,
    strict_dimensions: StrictOption = False,
    safe_share: SafeShareOption = 0.95,
) -> None:
    """Serve an OpenAI-compatible embeddings API (with Matryoshka 'dimensions'), search and the demo page.

    --backend auto (the default) serves each model on the fastest backend whose vectors agree with
    torch's (cosine >= 0.99 on fixed texts): OpenVINO, then ONNX int8, ONNX, torch.

    --upstream URL --upstream-model NAME serves another embeddings API's model (batched, retried, its
    vectors cached on disk); with --adaptor PATH its prefixes become Matryoshka dimensions.
    """
    from pydantic import ValidationError

    from matryoshka.serving.app import create_app
    from matryoshka.serving.config import ServeConfig
    from matryoshka.serving.served import load_config_models
    from matryoshka.serving.startup import (
        bind_socket,
        check_index_model,
        check_model_sources,
        load_results,
        open_served_index,
        serve_index_model,
        tune_malloc,
    )

    upstream_config = _upstream_config(upstream, backend, quantize)
    try:
        config = ServeConfig(
            **({"models": model} if model else {}),  # none given: the index's own model, else the default
            upstream=upstream_config,
            upstream_name=served_name,
            adaptor=str(adaptor) if adaptor is not None else None,
            strict_dimensions=strict_dimensions,
            safe_share=safe_share,
            api_key=api_key,
            max_inputs=max_inputs,
            max_input_chars=max_input_chars,
            max_body_bytes=max_body_bytes,
            batch_max_texts=batch_max_texts,
            batch_max_wait_ms=batch_wait_ms,
            max_queued_texts=max_queued_texts if max_queued_texts is not None else max(8192, 4 * max_inputs),
            timeout_header_s=timeout_header,
            timeout_body_s=timeout_body,
            timeout_keep_alive_s=timeout_keep_alive,
            index_path=str(index) if index else None,
            results_path=[str(p) for p in results] if results else None,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        fail(f"{where}: {str(first.get('msg', exc)).removeprefix('Value error, ')}")
    tune_malloc()  # before the model and any thread allocate: see its docstring
    sock = None
    try:
        # Everything that can fail without the model, before the model loads (that takes seconds to minutes).
        sock = bind_socket(host, port)
        check_model_sources(config)
        loaded_index = open_served_index(config.index_path) if config.index_path else None
        if loaded_index is not None:
            config = serve_index_model(config, loaded_index)
            check_model_sources(config)  # the index's model may be a directory that is gone
            check_index_model(loaded_index, config)
        quality = load_results(config)
        _set_threads(threads)
        models = load_config_models(config, load_local=lambda source: _served(source, backend, quantize))
        app = create_app(config, models=models, index=loaded_index, quality=quality)
    except (MatryoshkaError, OSError) as exc:
        if sock is not None:
            sock.close()
        fail(str(exc))
    announce = f"serving {', '.join(n for n, _ in config.model_specs())} on http://{host}:{port}  (docs: /docs, demo: /)"
    _run(app, host, port, log_level, announce, sock)


@upstream_options
def demo_command(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model directory or name; default: the packaged all-MiniLM-L6-v2."),
    ] = None,
    limit: Annotated[int, typer.Option(help="WordNet glosses to index (0 = all 117,659).")] = DEMO_LIMIT,
    results: ResultsOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    api_key: ApiKeyOption = None,
    cache_dir: Annotated[Path, typer.Option(help="Where the built index is cached.")] = DEMO_CACHE,
    rebuild: Annotated[bool, typer.Option(help="Rebuild the index even if a cached one exists.")] = False,
    threads: ThreadsOption = None,
    log_level: LogLevelOption = "info",
    also: Annotated[list[str] | None, typer.Option(
        "--also", help="More models for the selector, e.g. a Matryoshka or adapted model directory (repeat).")] = None,
    no_rotation: Annotated[bool, typer.Option("--no-rotation", help="Leave the base+rotation choice out.")] = False,
    backend: ServeBackendOption = "auto",
    quantize: QuantizeOption = None,
    upstream: UpstreamArgs = UpstreamArgs(),  # noqa: B008 - the options of @upstream_options, as one value
    adaptor: AdaptorOption = None,
    strict_dimensions: StrictOption = False,
    safe_share: SafeShareOption = 0.95,
) -> None:
    """Open the interactive demo: search WordNet glosses at any dimension next to full size.

    The model selector offers the model, the model rotated onto the glosses' principal axes (free),
    and every --also model, each searching its own vectors of the same glosses. --upstream URL
    --upstream-model NAME demonstrates an embeddings API's model instead (--limit glosses are sent once,
    then cached), with --adaptor PATH its adapted prefixes.

    Builds (first time, a few minutes on 2 cores) or loads a cached index of WordNet glosses from
    Debian's wordnet-base (apt-get install wordnet-base) or $MATRYOSHKA_DATA, then serves http://HOST:PORT/.
    """
    from matryoshka.models.loading import DEFAULT_MODEL
    from matryoshka.serving.app import create_app
    from matryoshka.serving.config import ServeConfig, served_name
    from matryoshka.serving.demo.index import WORDNET_CORPUS, build_demo_index, demo_cache_path
    from matryoshka.serving.served import served_label
    from matryoshka.serving.startup import (
        bind_socket,
        load_results,
        tune_malloc,
    )

    upstream_config = _upstream_config(upstream, backend, quantize)
    if upstream_config is not None and model is not None:
        fail("demonstrate either --model or --upstream, not both")
    tune_malloc()
    _set_threads(threads)
    name = upstream_config.model if upstream_config is not None else served_name(model) if model else DEFAULT_MODEL
    sock = None
    try:
        config = ServeConfig(
            models=[name], api_key=api_key, results_path=[str(p) for p in results] if results else None,
            strict_dimensions=strict_dimensions, safe_share=safe_share,
        )
        sock = bind_socket(host, port)  # a busy port is reported before the model loads and the index builds
        quality = load_results(config)
        loaded = _demo_model(model, upstream_config, adaptor, backend, quantize, safe_share)
        # the demo index's cache key: the served model's identity (an upstream's or adapted model's own label)
        source_key = served_label(loaded, model or DEFAULT_MODEL)
        index = build_demo_index(loaded, name, limit or None, cache_dir, rebuild, source=None,
                                 model_source=source_key)
        from matryoshka.serving.demo.models import choices_quality, demo_choices

        sources = {served_name(source): source for source in also or []}
        others = [(other_name, _served(source, backend, quantize)) for other_name, source in sources.items()]
        extra_models, extra_indexes = demo_choices(
            loaded, name, index, others, rotation=not no_rotation,
            build=lambda other, other_name: build_demo_index(other, other_name, limit or None, cache_dir, rebuild,
                                                             model_source=sources[other_name]),
        )
        if quality is None:  # the chart works out of the box: every choice measured on its own vectors, cached
            choices = {name: (loaded, index), **{n: (extra_models[n], extra_indexes[n]) for n in extra_models}}
            quality = choices_quality(
                choices, demo_cache_path(cache_dir, source_key, limit or None),
                {n: demo_cache_path(cache_dir, source, limit or None) for n, source in sources.items()},
            )
        config = config.model_copy(update={"models": [name, *extra_models]})
        app = create_app(config, models={name: loaded, **extra_models}, index=index, quality=quality,
                         demo_indexes=extra_indexes, demo_corpus=WORDNET_CORPUS)
    except (MatryoshkaError, OSError) as exc:
        if sock is not None:
            sock.close()
        fail(str(exc))
    _run(app, host, port, log_level, f"demo on http://{host}:{port}/", sock)


def _served(source: str | None, backend: str, quantize: str | None) -> Served:
    from matryoshka.serving.startup import load_served_model

    model, label = load_served_model(source, backend, quantize, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"model {source or 'default'}: backend {label}", err=True)
    return model


def _demo_model(
    model: str | None, upstream: UpstreamConfig | None, adaptor: Path | None, backend: str, quantize: str | None,
    safe_share: float,
) -> Served:
    """The demo's first model: local or the upstream's, then the adaptor if one is given."""
    from matryoshka.models.identity import model_label
    from matryoshka.models.loading import load_model
    from matryoshka.serving.served import with_adaptor

    loaded: Served = load_model(upstream=upstream) if upstream is not None else _served(model, backend, quantize)
    if adaptor is None:
        return loaded
    base = upstream.label if upstream is not None else model_label(model)
    return with_adaptor(loaded, str(adaptor), base, safe_share)


def _upstream_config(upstream: UpstreamArgs, backend: str, quantize: str | None) -> UpstreamConfig | None:
    """The upstream the options name (``None`` without --upstream); one line for options that do not fit it."""
    config = upstream.config()
    if config is not None and (backend != "auto" or quantize is not None):
        fail("--backend and --quantize choose how a local model runs; the --upstream API runs its own")
    return config
