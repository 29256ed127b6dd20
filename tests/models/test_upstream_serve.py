"""A second ``matryoshka serve`` process (the packaged model, torch, one thread) as the upstream: vectors
through the API equal the model's own, end to end through the commands, and its key is required."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli.app import app
from matryoshka.models.loading import DEFAULT_MODEL

runner = CliRunner()
KEY = "serve-" + secrets.token_hex(12)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``http://127.0.0.1:PORT/v1`` of a real server that wants ``Authorization: Bearer KEY``."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MATRYOSHKA_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka.cli", "serve", "--backend", "torch", "--threads", "1", "--port", str(port),
         "--log-level", "warning"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        deadline, lines = time.monotonic() + 240, []
        while time.monotonic() < deadline and process.poll() is None:
            lines.append(process.stderr.readline())  # type: ignore[union-attr]
            if lines[-1].startswith(("serving ", "error: ")):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def keyed(served, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_UPSTREAM_KEY", KEY)
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path / "cache"))
    return ["--upstream", served, "--upstream-model", DEFAULT_MODEL, "--upstream-key-env", "SERVE_UPSTREAM_KEY"]


def test_encode_through_a_served_model_equals_the_model(keyed, model, tmp_path):
    from matryoshka.embeddings.vectors import encode

    texts = [f"sentence {i} about {topic}" for i, topic in enumerate(["cats", "the sea", "old songs", "tools"] * 10)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    result = runner.invoke(app, ["encode", "--input", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy"),
                                 *keyed, "--upstream-batch", "16"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), encode(model, texts), atol=1e-5)
    assert KEY not in result.output


def test_evaluate_through_a_served_model_scores_as_the_model(keyed, tiny_beir, tmp_path):
    import json

    from matryoshka.evaluation import Results

    through = runner.invoke(app, ["evaluate", "--task", str(tiny_beir), "--dims", "384,64", "-o", str(tmp_path / "u"),
                                  *keyed])
    assert through.exit_code == 0, through.output
    direct = runner.invoke(app, ["evaluate", "--task", str(tiny_beir), "--dims", "384,64", "-o", str(tmp_path / "d")])
    assert direct.exit_code == 0, direct.output
    upstream = Results.from_dict(json.loads((tmp_path / "u" / "results.json").read_text())).scores[DEFAULT_MODEL]
    local = Results.from_dict(json.loads((tmp_path / "d" / "results.json").read_text())).scores[DEFAULT_MODEL]
    assert upstream.keys() == local.keys() and all(abs(upstream[d] - local[d]) < 1e-4 for d in local)


def test_a_server_that_wants_a_key_refuses_a_call_without_it(served, tmp_path, monkeypatch):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["encode", "a text", "--upstream", served, "--upstream-model", DEFAULT_MODEL])
    assert result.exit_code == 1
    assert "error: upstream" in result.stderr and "refused the call with 401 (check --upstream-key-env)" in result.stderr
