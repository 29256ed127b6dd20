"""``serve_command`` / ``demo_command`` wiring and the demo index cache."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from matryoshka.cli.serve import demo_command, serve_command
from matryoshka.serving.config import ServeConfig, parse_model_specs
from matryoshka.serving.demo.index import build_demo_index, demo_cache_path
from support import wordnet_sample


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    return app


def test_commands_register_and_document_their_options():
    runner = CliRunner()
    serve_help = runner.invoke(make_app(), ["serve", "--help"], env={"COLUMNS": "200"})
    assert serve_help.exit_code == 0, serve_help.output
    for option in (
        "--model",
        "--host",
        "--port",
        "--api-key",
        "--index",
        "--results",
        "--max-inputs",
        "--batch-wait-ms",
    ):
        assert option in serve_help.output
    demo_help = runner.invoke(make_app(), ["demo", "--help"], env={"COLUMNS": "200"})
    assert demo_help.exit_code == 0, demo_help.output
    for option in ("--limit", "--cache-dir", "--rebuild", "--results"):
        assert option in demo_help.output


def test_serve_reports_a_missing_model_cleanly(tmp_path):
    result = CliRunner().invoke(make_app(), ["serve", "--model", str(tmp_path / "nothing-here"), "--port", "1"])
    assert result.exit_code == 1
    assert "error" in result.output


def test_model_specs():
    assert parse_model_specs(["all-MiniLM-L6-v2", "small=/models/x"]) == [
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("small", "/models/x"),
    ]
    with pytest.raises(ValueError):
        ServeConfig(models=["a", "a"])
    with pytest.raises(ValueError):
        ServeConfig(max_inputs=0)


def test_cache_path_depends_on_model_and_limit(tmp_path):
    a = demo_cache_path(tmp_path, "all-MiniLM-L6-v2", 20_000)
    assert a.parent == tmp_path and a.name.startswith("all-MiniLM-L6-v2-wordnet-20000-")
    assert a != demo_cache_path(tmp_path, "all-MiniLM-L6-v2", 300)
    assert a != demo_cache_path(tmp_path, "/models/other", 20_000)


def test_demo_index_is_built_once_then_loaded(model, tmp_path, data_dir):
    messages: list[str] = []
    source = data_dir / "wordnet-glosses" / "wordnet30_glosses.jsonl.gz"
    built = build_demo_index(
        model, "all-MiniLM-L6-v2", 40, tmp_path, source=source if source.exists() else None, log=messages.append
    )
    assert len(built) == 40 and built.model_name == "all-MiniLM-L6-v2"
    assert built.ids == wordnet_sample(40)[0]
    loaded = build_demo_index(model, "all-MiniLM-L6-v2", 40, tmp_path, log=messages.append)
    assert "loaded the demo index" in messages[-1]
    assert loaded.ids == built.ids and len(loaded) == 40
    # A damaged cache is rebuilt rather than fatal.
    for file in demo_cache_path(tmp_path, "all-MiniLM-L6-v2", 40).iterdir():
        if file.name in ("vectors.npy", "vectors.bin"):
            file.write_bytes(b"junk")
    again = build_demo_index(
        model, "all-MiniLM-L6-v2", 40, tmp_path, source=source if source.exists() else None, log=messages.append
    )
    assert "rebuilding" in " ".join(messages) and len(again) == 40


def test_demo_quality_curve_out_of_the_box(model, tmp_path, data_dir):
    """``matryoshka demo`` measures its chart's curve on its own index at first start and caches it."""
    from matryoshka.serving.quality import CACHE_SUFFIX, cached_lemma_recall, clean_quality, lemma_of

    assert lemma_of("bank, depository financial institution (n08420278)") == "bank"
    assert lemma_of("plain-id-7") is None
    source = data_dir / "wordnet-glosses" / "wordnet30_glosses.jsonl.gz"
    index = build_demo_index(model, "all-MiniLM-L6-v2", 60, tmp_path, source=source if source.exists() else None,
                             log=lambda _: None)
    path = demo_cache_path(tmp_path, "all-MiniLM-L6-v2", 60)
    quality = cached_lemma_recall(model, index, "all-MiniLM-L6-v2", path)
    curve = next(iter(clean_quality(quality)["all-MiniLM-L6-v2"].values()))  # the shape the page's chart reads
    assert list(curve) == ["16", "32", "64", "128", "256", "384"]
    assert all(0.0 <= v <= 1.0 for v in curve.values()) and curve["384"] > 0.3  # lemmas do find their glosses
    cache = path.with_name(path.name + CACHE_SUFFIX)
    assert cache.is_file()
    stored = json.loads(cache.read_text())
    task = next(iter(stored["quality"]["models"]["all-MiniLM-L6-v2"]))
    stored["quality"]["models"]["all-MiniLM-L6-v2"][task]["16"] = 0.123456  # mark the file
    cache.write_text(json.dumps(stored))
    again = cached_lemma_recall(model, index, "all-MiniLM-L6-v2", path)
    assert again["models"]["all-MiniLM-L6-v2"][task]["16"] == 0.123456  # a later start reads the cache
