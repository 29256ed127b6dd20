"""``matryoshka serve`` start-up failures: one line naming the cause, a non-zero exit, no "serving on" line,
and (for everything that does not need the model) no model load first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from matryoshka.indexes.faiss import FunnelIndex

NAME = "all-MiniLM-L6-v2"


def serve(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "matryoshka.cli", "serve", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output  # no traceback, no JSON log, no model-loading progress bar
    assert lines[0].startswith("error: ") and "serving " not in lines[0]
    assert "on http://" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("startup") / "index"
    FunnelIndex.from_vectors(rng.standard_normal((30, 384)).astype(np.float32), [str(i) for i in range(30)], model_name=NAME).save(path)
    return path


def test_truncated_index(index_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in index_dir.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    vectors = broken / "vectors.bin"
    vectors.write_bytes(vectors.read_bytes()[:1000])
    assert_one_line_failure(serve("--index", str(broken), "--port", str(free_port())), "truncated")


def test_missing_index(tmp_path):
    assert_one_line_failure(serve("--index", str(tmp_path / "nowhere"), "--port", str(free_port())), "no index")


def test_busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_failure(serve("--port", str(port)), "already in use", str(port))


def test_missing_model(tmp_path):
    assert_one_line_failure(serve("--model", str(tmp_path / "no-model"), "--port", str(free_port())), "no-model")


def test_index_whose_model_is_not_served(tmp_path):
    rng = np.random.default_rng(1)
    other = tmp_path / "other"
    FunnelIndex.from_vectors(rng.standard_normal((5, 8)).astype(np.float32), list("abcde"), model_name="someone/else").save(other)
    result = serve("--index", str(other), "--model", NAME, "--port", str(free_port()))
    assert_one_line_failure(result, "someone/else", "not served")


def test_index_whose_model_directory_is_gone(tmp_path):
    """Without --model the index's own model is served; a directory that no longer exists is named."""
    rng = np.random.default_rng(1)
    other = tmp_path / "other"
    gone = str(tmp_path / "gone-model")
    FunnelIndex.from_vectors(rng.standard_normal((5, 8)).astype(np.float32), list("abcde"), model_name=gone).save(other)
    assert_one_line_failure(serve("--index", str(other), "--port", str(free_port())), "no such directory", gone)


def test_serve_index_model_only_when_none_is_named():
    from matryoshka.serving import ServeConfig
    from matryoshka.serving.startup import serve_index_model

    index = FunnelIndex.from_vectors(np.eye(3, dtype=np.float32), list("abc"), model_name="/models/narrow")
    assert serve_index_model(ServeConfig(), index).models == ["/models/narrow"]
    assert serve_index_model(ServeConfig(models=[NAME]), index).models == [NAME]  # asked for: kept (then refused)
    unnamed = FunnelIndex.from_vectors(np.eye(3, dtype=np.float32), list("abc"))
    assert serve_index_model(ServeConfig(), unnamed).models == [NAME]


def test_serve_index_without_model_serves_the_model_the_index_records(tmp_path):
    """`serve --index DIR` loads the index's model by itself, as `index search DIR` does (it refused and
    asked for --model before)."""
    from matryoshka.embeddings.vectors import encode
    from matryoshka.models.identity import model_label
    from matryoshka.models.loading import build_static_model, load_model

    build_static_model(embedding_dim=96, seed=0).save(str(tmp_path / "narrow"))
    narrow = load_model(str(tmp_path / "narrow"))
    texts = ["a cat on a mat", "a dog in the fog", "stars and planets", "a tool for cutting wood", "an old song"]
    index = FunnelIndex.build(narrow, texts, model_name=model_label(str(tmp_path / "narrow")))
    index.save(tmp_path / "index")
    expected = [h.id for h in index.search(encode(narrow, ["cutting wood"]), k=3)[0]]

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka.cli", "serve", "--index", str(tmp_path / "index"), "--port", str(port),
         "--log-level", "warning"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 180
        lines: list[str] = []
        while time.monotonic() < deadline and process.poll() is None:
            lines.append(process.stderr.readline())
            if lines[-1].startswith(("serving ", "error: ")):
                break
        assert lines and lines[-1].startswith(f"serving narrow on http://127.0.0.1:{port}"), "".join(lines)
        url = f"http://127.0.0.1:{port}"
        assert [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]] == ["narrow"]
        body = httpx.post(f"{url}/v1/search", json={"query": "cutting wood", "k": 3}, timeout=60).json()
        assert body["model"] == "narrow" and [h["id"] for h in body["hits"]] == expected
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_good_start_announces_only_when_ready(index_dir):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka.cli", "serve", "--index", str(index_dir), "--port", str(port), "--log-level", "warning"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 180
        line = ""
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stderr.readline()
            if line.startswith("serving "):
                break
        assert line.startswith(f"serving {NAME} on http://127.0.0.1:{port}"), line
        # the announcement comes after start-up: the server answers at once
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["index_size"] == 30
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_malloc_tuning_applies_on_glibc():
    from matryoshka.serving.startup import tune_malloc

    assert tune_malloc() is True
