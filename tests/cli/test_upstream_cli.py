"""The commands with ``--upstream``: encode, index build/search/add, encode --corpus --index, adapt and evaluate
through a stand-in API over real HTTP; the cost line, the cache between commands, one-line failures, an
interrupted build, and the key that appears nowhere."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli.app import app
from matryoshka.embeddings.vectors import truncate
from matryoshka.indexes.faiss import FunnelIndex
from upstream_server import StandIn, vector_of

runner = CliRunner()
DIM = 32
DOCS = [f"document {i}: {' '.join(['cats', 'stars', 'rivers', 'tools', 'songs'][j % 5] for j in range(i % 7 + 1))}"
        for i in range(80)]


@pytest.fixture(scope="module")
def server():
    with StandIn(dim=DIM) as api:
        yield api


@pytest.fixture
def api(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path / "cache"))  # the default cache, per test
    server.reset()
    yield server
    server.reset()


def up(api: StandIn, *extra: str) -> list[str]:
    return ["--upstream", api.url, "--upstream-model", api.model, *extra]


def corpus(path: Path, texts: list[str] = DOCS, prefix: str = "d") -> Path:
    path.write_text("".join(json.dumps({"_id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def top(index: FunnelIndex, text: str) -> tuple[str, float]:
    """The id and score of the nearest document to the stand-in's vector of ``text``."""
    hit = index.search(vector_of(text, DIM)[None, :], k=1)[0][0]
    return hit.id, hit.score


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress lines before it, nothing after
    return errors[0]


def test_encode_through_the_upstream_then_from_the_cache_then_without_it(api):
    texts = ["a cat on a mat", "stars over the sea", "a cat on a mat"]
    first = runner.invoke(app, ["encode", *texts, "--dim", "8", *up(api)])
    assert first.exit_code == 0, first.output
    rows = np.array([json.loads(line) for line in first.stdout.splitlines()])
    np.testing.assert_allclose(rows, truncate(np.stack([vector_of(t, DIM) for t in texts]), 8), atol=1e-5)
    # one call asks the width (the probe), one sends the two distinct texts
    assert api.calls == 2 and "upstream stand-in: 2 calls, 3 texts embedded; cache 0 hits, 3 misses" in first.stderr

    again = runner.invoke(app, ["encode", *texts, "--dim", "8", *up(api)])
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert api.calls == 2 and "0 calls, 0 texts embedded; cache 2 hits, 0 misses (100.0% hit rate)" in again.stderr

    uncached = runner.invoke(app, ["encode", *texts, "--dim", "8", *up(api, "--no-cache")])
    assert uncached.exit_code == 0 and uncached.stdout == first.stdout
    assert api.calls == 4 and "cache off" in uncached.stderr


@pytest.mark.parametrize(("mode", "words"), [
    ("500", "answered 500: upstream exploded"),
    ("429", "kept answering 429"),
    ("malformed", "the body is not JSON"),
    ("wrong_dim", "answered badly"),
    ("slow", "timed out after 0.3s"),
])
def test_a_failing_upstream_is_one_error_line(api, mode, words):
    if mode == "wrong_dim":  # a size is wrong only against one seen before
        assert runner.invoke(app, ["encode", "first", *up(api)]).exit_code == 0
    api.misbehave(mode, delay=1.0)
    result = runner.invoke(app, ["encode", "some text", *up(api, "--upstream-retries", "0", "--upstream-timeout", "0.3")])
    line = one_error_line(result)
    assert words in line and api.url in line


def test_options_that_do_not_go_together_are_refused(api, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    cases = [
        (["encode", "x", "--upstream", api.url], "needs --upstream-model"),
        (["encode", "x", "--upstream-model", "m"], "--upstream-model needs --upstream URL"),
        (["encode", "x", "--no-cache"], "--no-cache needs --upstream URL"),
        (["encode", "x", "--model", "all-MiniLM-L6-v2", *up(api)], "drop --model"),
        (["encode", "x", "--backend", "onnx", *up(api)], "drop --backend"),
        (["encode", "x", *up(api, "--upstream-key-env", "NO_SUCH_KEY_VAR")], "NO_SUCH_KEY_VAR"),
        (["encode", "--corpus", "c.jsonl", "--index", "faiss://x", "--ray", *up(api)], "drop --ray"),
        (["encode", "x", "--upstream", "ftp://host/v1", "--upstream-model", "m"], "http:// or https://"),
    ]
    for args, words in cases:
        assert words in one_error_line(runner.invoke(app, args)), args
    assert api.calls == 0


def test_index_build_records_the_upstream_and_search_and_add_go_through_it(api, tmp_path):
    out = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", "--corpus", str(corpus(tmp_path / "c.jsonl")), "--out", str(out),
                                 *up(api, "--upstream-batch", "7")])
    assert result.exit_code == 0, result.output
    label = f"{api.url}#{api.model}"
    index = FunnelIndex.load(out)
    assert index.model_name == label and len(index) == len(DOCS)
    assert max(len(batch) for batch in api.inputs) <= 7
    assert f"upstream stand-in: {api.calls} calls" in result.stderr

    found = runner.invoke(app, ["index", "search", str(out), DOCS[11], "--json", *up(api)])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["hits"][0]["id"] == "d11"
    refused = runner.invoke(app, ["index", "search", str(out), "anything"])
    assert f"--upstream {api.url} --upstream-model {api.model}" in one_error_line(refused)

    other = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(out),
                                "--upstream", api.url, "--upstream-model", "another"])
    assert f"or pass --upstream {api.url} --upstream-model {api.model}" in one_error_line(other)

    (tmp_path / "new.txt").write_text("a brand new text\n")
    added = runner.invoke(app, ["index", "add", str(out), "--texts", str(tmp_path / "new.txt"), *up(api)])
    assert added.exit_code == 0, added.output
    assert top(FunnelIndex.load(out), "a brand new text") == (str(len(DOCS)), pytest.approx(1.0, abs=1e-5))


def test_encode_corpus_into_an_index_through_the_upstream(api, tmp_path):
    out = tmp_path / "streamed"
    result = runner.invoke(app, ["encode", "--corpus", str(corpus(tmp_path / "c.jsonl")), "--index", f"faiss://{out}",
                                 *up(api)])
    assert result.exit_code == 0, result.output
    index = FunnelIndex.load(out)
    assert index.model_name == f"{api.url}#{api.model}" and len(index) == len(DOCS)
    assert top(index, DOCS[5]) == ("d5", pytest.approx(1.0, abs=1e-5))


def test_adapt_then_index_build_makes_no_call_for_texts_already_seen(api, tmp_path):
    from matryoshka.adapt import Adaptor

    path = corpus(tmp_path / "c.jsonl")
    fitted = runner.invoke(app, ["adapt", "--corpus", str(path), "--method", "rotation", "--out",
                                 str(tmp_path / "adapted"), *up(api)])
    assert fitted.exit_code == 0, fitted.output
    adaptor = Adaptor.load(tmp_path / "adapted" / "adaptor.safetensors")
    assert adaptor.dim == DIM and adaptor.info["upstream"] == f"{api.url}#{api.model}"
    assert (tmp_path / "adapted" / "adapt-report.json").is_file()
    assert api.texts == len(DOCS) + 1  # the corpus and the width probe, each text once

    api.reset()
    built = runner.invoke(app, ["index", "build", "--corpus", str(path), "--out", str(tmp_path / "index"), *up(api)])
    assert built.exit_code == 0, built.output
    assert api.calls == 0
    assert f"0 calls, 0 texts embedded; cache {len(DOCS)} hits, 0 misses (100.0% hit rate)" in built.stderr


def test_an_interrupted_build_leaves_the_old_index_or_none(api, tmp_path):
    flaky = up(api, "--upstream-batch", "4", "--upstream-concurrency", "1", "--upstream-retries", "0", "--no-cache")
    out = tmp_path / "index"
    api.misbehave("500", after=3)  # the width probe and two batches answer, then the upstream breaks
    line = one_error_line(runner.invoke(app, ["index", "build", "--corpus", str(corpus(tmp_path / "a.jsonl")),
                                              "--out", str(out), *flaky]))
    assert "answered 500" in line and api.calls == 4
    assert not out.exists()

    api.reset()
    assert runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "a.jsonl"), "--out", str(out),
                               *up(api)]).exit_code == 0
    before = snapshot(out)
    api.reset()
    api.misbehave("500", after=3)
    other = corpus(tmp_path / "b.jsonl", [f"other text {i}" for i in range(40)], prefix="b")
    one_error_line(runner.invoke(app, ["index", "build", "--corpus", str(other), "--out", str(out), *flaky]))
    assert snapshot(out) == before and api.calls == 4
    assert FunnelIndex.load(out).ids == [f"d{i}" for i in range(len(DOCS))]


def test_evaluate_scores_the_upstream_beside_a_local_model(api, tmp_path, tiny_beir):
    result = runner.invoke(app, ["evaluate", "--task", str(tiny_beir), "--dims", "32,16", "--out", str(tmp_path / "ev"),
                                 *up(api)])
    assert result.exit_code == 0, result.output
    from matryoshka.evaluation import Results

    saved = Results.from_dict(json.loads((tmp_path / "ev" / "results.json").read_text()))
    assert list(saved.scores) == ["stand-in"] and sorted(saved.scores["stand-in"]) == [16, 32]
    assert saved.metadata["models"] == [f"{api.url}#{api.model}"]
    assert "upstream stand-in:" in result.stderr
    layers = runner.invoke(app, ["evaluate", "--task", str(tiny_beir), "--layers", "2", *up(api)])
    assert "--layers" in one_error_line(layers)


def test_the_key_is_sent_to_the_upstream_and_printed_nowhere(api, tmp_path, monkeypatch):
    key = "sk-" + secrets.token_hex(20)
    monkeypatch.setenv("CLI_UPSTREAM_KEY", key)
    keyed = up(api, "--upstream-key-env", "CLI_UPSTREAM_KEY", "--upstream-retries", "0")
    outputs = []
    for args in (["encode", "a text", *keyed],
                 ["index", "build", "--corpus", str(corpus(tmp_path / "c.jsonl")), "--out", str(tmp_path / "i"), *keyed]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    api.misbehave("echo_key")
    failed = runner.invoke(app, ["encode", "another text", *keyed])
    assert "***" in one_error_line(failed)
    outputs.append(failed.output)
    assert set(api.authorizations) == {f"Bearer {key}"}
    assert all(key not in output for output in outputs)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("vectors.sqlite3") for p in files)
    assert all(key.encode() not in p.read_bytes() for p in files)
