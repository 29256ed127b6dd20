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
from matryoshka.cli.options import QuantizeOption
from matryoshka.errors import MatryoshkaError
from matryoshka.serving.demo.index import DEMO_CACHE, DEMO_LIMIT

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

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
    typer.Option("--results", help="Evaluation results JSON for the demo's quality chart; repeatable."),
]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads for the model, on every backend (default: torch's choice).")
]
ServeBackendOption = Annotated[str, typer.Option(
    "--backend", help="auto (fastest that agrees with torch), torch, onnx or openvino.")]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]


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
    batch_wait_ms: Annotated[float, typer.Option(help="How long a lone request waits for others to batch with.")] = 2.0,
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
) -> None:
    """Serve an OpenAI-compatible embeddings API (with Matryoshka 'dimensions'), search and the demo page.

    --backend auto (the default) serves each model on the fastest backend whose vectors agree with
    torch's (cosine >= 0.99 on fixed texts): OpenVINO, then ONNX int8, ONNX, torch.
    """
    from pydantic import ValidationError

    from matryoshka.serving.app import create_app
    from matryoshka.serving.config import ServeConfig
    from matryoshka.serving.startup import (
        bind_socket,
        check_index_model,
        check_model_sources,
        load_results,
        open_served_index,
        serve_index_model,
        tune_malloc,
    )

    try:
        config = ServeConfig(
            **({"models": model} if model else {}),  # none given: the index's own model, else the default
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
        models = {name: _served(source, backend, quantize) for name, source in config.model_specs()}
        app = create_app(config, models=models, index=loaded_index, quality=quality)
    except (MatryoshkaError, OSError) as exc:
        if sock is not None:
            sock.close()
        fail(str(exc))
    announce = f"serving {', '.join(n for n, _ in config.model_specs())} on http://{host}:{port}  (docs: /docs, demo: /)"
    _run(app, host, port, log_level, announce, sock)


def _served(source: str | None, backend: str, quantize: str | None) -> SentenceTransformer:
    from matryoshka.serving.startup import load_served_model

    model, label = load_served_model(source, backend, quantize, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"model {source or 'default'}: backend {label}", err=True)
    return model


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
) -> None:
    """Open the interactive demo: search WordNet glosses at any dimension next to full size.

    The model selector offers the model, the model rotated onto the glosses' principal axes (free),
    and every --also model, each searching its own vectors of the same glosses.

    Builds (first time, a few minutes on 2 cores) or loads a cached index of WordNet glosses from
    Debian's wordnet-base (apt-get install wordnet-base) or $MATRYOSHKA_DATA, then serves http://HOST:PORT/.
    """
    from matryoshka.models.loading import DEFAULT_MODEL
    from matryoshka.serving.app import create_app
    from matryoshka.serving.config import ServeConfig, served_name
    from matryoshka.serving.demo.index import WORDNET_CORPUS, build_demo_index, demo_cache_path
    from matryoshka.serving.startup import (
        bind_socket,
        load_results,
        tune_malloc,
    )

    tune_malloc()
    _set_threads(threads)
    name = served_name(model) if model else DEFAULT_MODEL
    sock = None
    try:
        config = ServeConfig(
            models=[name], api_key=api_key, results_path=[str(p) for p in results] if results else None
        )
        sock = bind_socket(host, port)  # a busy port is reported before the model loads and the index builds
        quality = load_results(config)
        loaded = _served(model, backend, quantize)
        index = build_demo_index(loaded, name, limit or None, cache_dir, rebuild, source=None,
                                 model_source=model)
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
                choices, demo_cache_path(cache_dir, model, limit or None),
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
