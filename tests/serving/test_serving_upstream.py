"""Serving through an upstream embeddings API, with an adaptor and safe dimensions, over real HTTP.

End to end, a second ``matryoshka serve`` process (the packaged model on torch, behind a key) is the
upstream of a ``matryoshka serve --upstream ... --adaptor ...`` process, and the official ``openai``
client must get ``truncate(adaptor.apply(model vectors), dim)``. A stand-in that misbehaves on purpose
(``tests/upstream_server.py``) shows every upstream failure reaching clients as a 502, 503 or 504 in
OpenAI's shape; the upstream's key reaches the upstream and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from matryoshka.adapt import Adaptor, choose_adaptor
from matryoshka.embeddings.vectors import truncate
from matryoshka.errors import StartupError
from matryoshka.evaluation.results import Results, safe_dimensions
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.models.upstream import UpstreamConfig
from matryoshka.serving import ServeConfig, ServerThread, create_app
from upstream_server import StandIn, vector_of

NAME = "all-MiniLM-L6-v2"
KEY = "sk-upstream-" + secrets.token_hex(12)  # a fresh secret per run: it can only be found if it leaked
KEY_ENV = "MATRYOSHKA_TEST_UPSTREAM_KEY"
SHARE = 0.9  # the adaptor below keeps 90% of full-size quality from 64 dims up, not at 32
TEXTS = ["A man is playing a guitar.", "The weather is lovely today.", "Matryoshka dolls nest inside each other."]
DOCS = [f"{subject} {verb} {thing}." for subject in ("A cat", "The bank", "A violinist", "Rain", "The heart")
        for verb in ("sits near", "moves") for thing in ("the river", "a warm mat", "old money", "the concert hall")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "matryoshka.cli", "serve", *args]


def process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "MATRYOSHKA_API_KEY")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


@contextlib.contextmanager
def serve_process(args: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> Iterator[str]:
    """A ``matryoshka serve`` process on a free port (its output in ``log``), until ``/health`` answers."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(command(*args, "--port", str(port)), env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve {' '.join(args)} exited {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code in (200, 401):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"serve {' '.join(args)} did not start in {timeout} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


@pytest.fixture(scope="module")
def adaptor_file(tmp_path_factory) -> tuple[Path, Adaptor, list[int]]:
    """A 384-d adaptor file with its report, as ``adapt --vectors --out api.safetensors`` saves them; the
    vectors it is fitted on put most of their variance in few directions, so 64 dims are safe at 90%."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(384, 384)))[0]
    vectors = ((rng.normal(size=(2000, 384)) * np.geomspace(8.0, 0.001, 384)) @ basis.T).astype(np.float32)
    adaptor, report = choose_adaptor(vectors, method="rotation")
    folder = tmp_path_factory.mktemp("adaptor")
    path = adaptor.save(folder / "api.safetensors")
    report.save(folder, stem="api.adapt-report")
    report.safe_share = SHARE
    safe = report.matryoshka_dimensions
    assert safe is not None and 64 in safe and 32 not in safe
    return path, adaptor, safe


# -- an adaptor on a local model, in process --------------------------------------------------------------


def test_local_model_with_adaptor_serves_its_prefixes_and_safe_dimensions(model, adaptor_file):
    path, adaptor, safe = adaptor_file
    config = ServeConfig(adaptor=str(path), safe_share=SHARE, strict_dimensions=True)
    with ServerThread(create_app(config)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        got = client.embeddings.create(model=NAME, input=TEXTS, dimensions=64)
        expected = truncate(adaptor.apply(model.encode(TEXTS)), 64)
        np.testing.assert_allclose([d.embedding for d in got.data], expected, atol=1e-5)
        card = client.models.retrieve(NAME)
        assert card.model_extra is not None and card.model_extra["matryoshka_dimensions"] == safe
        assert len(client.embeddings.create(model=NAME, input=TEXTS[0]).data[0].embedding) == 384  # full size
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model=NAME, input=TEXTS, dimensions=32)
        message = refused.value.body["message"]  # type: ignore[index]
        assert refused.value.body["code"] == "unsafe_dimensions" and ", ".join(map(str, safe)) in message  # type: ignore[index]


def test_results_file_states_safe_dimensions_and_strict_needs_some(model, tmp_path):
    scores = {384: 0.62, 256: 0.61, 128: 0.60, 64: 0.55, 32: 0.40}
    Results("scifact", "ndcg@10", {NAME: scores}).save(tmp_path)
    config = ServeConfig(models=[NAME], results_path=str(tmp_path / "results.json"), strict_dimensions=True)
    with ServerThread(create_app(config, models={NAME: model})) as server:
        listed = httpx.get(f"{server.url}/v1/models").json()["data"][0]["matryoshka_dimensions"]
        assert listed == safe_dimensions(scores) == [128, 256, 384]
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x", "dimensions": 64})
        assert "128, 256, 384" in assert_openai_error(answer, 400, "unsafe_dimensions")
    with ServerThread(create_app(ServeConfig(models=[NAME]), models={NAME: model})) as server:  # nothing known
        assert httpx.get(f"{server.url}/v1/models/{NAME}").json()["matryoshka_dimensions"] is None
    with pytest.raises(StartupError, match="no known safe dimensions"):
        create_app(ServeConfig(models=[NAME], strict_dimensions=True), models={NAME: model})


# -- the upstream's failures, in OpenAI's shape ------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Iterator[tuple[StandIn, ServerThread, Path]]:
    """A server whose model is the stand-in API (one retry, half-second timeout, a vector cache)."""
    cache = tmp_path_factory.mktemp("upstream-cache")
    os.environ[KEY_ENV] = KEY
    try:
        with StandIn(dim=32) as api:
            config = UpstreamConfig(api.url, "stand-in", key_env=KEY_ENV, retries=1, timeout=0.5, cache_dir=cache)
            with ServerThread(create_app(ServeConfig(upstream=config))) as server:
                yield api, server, cache
    finally:
        os.environ.pop(KEY_ENV, None)


FAILURES = [  # mode, misbehave() arguments, status, code
    ("500", {}, 502, "upstream_error"),
    ("429", {"retry_after": "0"}, 503, "upstream_unavailable"),
    ("slow", {"delay": 2.0}, 504, "upstream_timeout"),
    ("wrong_dim", {}, 502, "upstream_error"),
    ("fewer", {}, 502, "upstream_error"),
    ("malformed", {}, 502, "upstream_error"),
    ("nan", {}, 502, "upstream_error"),
    ("drop", {}, 502, "upstream_error"),
    ("echo_key", {}, 502, "upstream_error"),
]


@pytest.mark.parametrize(("mode", "how", "status", "code"), FAILURES, ids=[f[0] for f in FAILURES])
def test_upstream_failures_are_openai_errors(stand_in, mode, how, status, code, caplog):
    api, server, _ = stand_in
    api.misbehave(mode, **how)
    try:
        with caplog.at_level(logging.INFO):
            answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": [f"a text for {mode}"]}, timeout=30)
    finally:
        api.reset()
    message = assert_openai_error(answer, status, code)
    assert answer.json()["error"]["type"] == "server_error"
    assert message.startswith("The upstream embeddings API failed: upstream http://127.0.0.1:")
    assert KEY not in answer.text and KEY not in caplog.text
    calls = api.calls
    again = httpx.post(f"{server.url}/v1/embeddings", json={"input": [f"a text for {mode}"]}, timeout=30)
    assert again.status_code == 200 and api.calls == calls + 1  # nothing of the failed call was cached: sent again
    np.testing.assert_allclose(again.json()["data"][0]["embedding"], vector_of(f"a text for {mode}", 32), atol=1e-6)


def test_openai_client_raises_on_upstream_failures(stand_in):
    api, server, _ = stand_in
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="a-client-key", max_retries=0, timeout=30)
    api.misbehave("500")
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            client.embeddings.create(model="stand-in", input=["the openai client sees a 502"])
    finally:
        api.reset()
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_error"  # type: ignore[index]


def test_the_key_goes_to_the_upstream_and_nowhere_else(stand_in):
    api, server, cache = stand_in
    answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["where does the key go?"]},
                        headers={"Authorization": "Bearer a-client-key"})
    assert answer.status_code == 200
    assert api.authorizations and set(api.authorizations) == {f"Bearer {KEY}"}  # never the client's own
    health = httpx.get(f"{server.url}/health").json()
    assert health["upstream"]["stand-in"]["calls"] > 0 and KEY not in json.dumps(health)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)


def test_a_repeated_text_is_answered_from_memory_without_the_batcher(stand_in):
    """Texts the cache holds in memory skip the batcher's queue and thread: same rows, no call, no batch."""
    api, server, _ = stand_in
    api.reset()
    texts = ["remembered once", "and remembered twice"]
    first = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts, "dimensions": 16}).json()
    def batches() -> int:
        return int(httpx.get(f"{server.url}/health").json()["batches"]["stand-in"]["calls"])

    calls, before = api.calls, batches()
    again = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts[::-1], "dimensions": 16}).json()
    assert [d["embedding"] for d in again["data"]] == [d["embedding"] for d in first["data"]][::-1]
    assert again["usage"] == first["usage"] and api.calls == calls and batches() == before
    expected = truncate(np.stack([vector_of(t, 32) for t in texts]), 16)
    np.testing.assert_allclose([d["embedding"] for d in first["data"]], expected, atol=1e-6)
    mixed = httpx.post(f"{server.url}/v1/embeddings", json={"input": [texts[0], "a new text"]})
    assert mixed.status_code == 200 and api.calls == calls + 1 and batches() == before + 1


def test_concurrent_requests_reach_the_upstream_concurrently(stand_in):
    """The proxy's batcher keeps up to --upstream-concurrency calls in flight: a slow API is not called one at a time."""
    import concurrent.futures

    api, server, _ = stand_in
    api.reset()
    api.misbehave("slow", delay=0.3)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: httpx.post(f"{server.url}/v1/embeddings", json={"input": f"slow text {i}"},
                                                         timeout=30), range(4)))
        peak = api.peak_in_flight
    finally:
        api.reset()
    assert all(a.status_code == 200 for a in answers)
    assert peak >= 2, peak


def test_embeddings_come_in_the_products_precisions(stand_in):
    """``precision``: float16, and sign bits packed 8 to a byte (binary as int8, ubinary as uint8), as numbers
    or base64 bytes; int8/uint8 (which need a calibration set) and bits that do not fill bytes are 400s."""
    _, server, _ = stand_in
    texts = ["a text in bits", "another one"]
    full = truncate(np.stack([vector_of(t, 32) for t in texts]), 24)

    def embeddings(**extra: object) -> list:
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts, "dimensions": 24, **extra})
        assert answer.status_code == 200, answer.text
        return [d["embedding"] for d in answer.json()["data"]]

    bits = np.packbits(full > 0, axis=1)
    assert embeddings(precision="ubinary") == bits.tolist()
    assert embeddings(precision="binary") == (bits.astype(int) - 128).tolist()
    assert [base64.b64decode(e) for e in embeddings(precision="ubinary", encoding_format="base64")] == [r.tobytes() for r in bits]
    half = [np.frombuffer(base64.b64decode(e), dtype="<f2") for e in embeddings(precision="float16", encoding_format="base64")]
    np.testing.assert_array_equal(half, full.astype(np.float16))
    np.testing.assert_allclose(embeddings(precision="float16"), full, atol=1e-3)
    for bad, status in (({"precision": "int8"}, 400), ({"precision": "binary", "dimensions": 12}, 400)):
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts, "dimensions": 24, **bad})
        assert answer.status_code == status and answer.json()["error"]["param"] in ("precision", "dimensions"), answer.text


# -- end to end: a second `matryoshka serve` is the upstream -----------------------------------------------


@pytest.fixture(scope="module")
def e2e(model, adaptor_file, tmp_path_factory) -> Iterator[dict[str, object]]:
    """The packaged model served (torch, behind KEY) as the upstream, and ``serve --upstream ... --adaptor
    ... --strict-dimensions --index DIR`` over it; DIR holds the upstream's (unadapted) vectors of DOCS."""
    work = tmp_path_factory.mktemp("e2e")
    path, _, _ = adaptor_file
    upstream_args = ["--backend", "torch", "--log-level", "warning"]
    with serve_process(upstream_args, process_env(MATRYOSHKA_API_KEY=KEY), work / "upstream.log") as upstream:
        label = UpstreamConfig(f"{upstream}/v1", NAME).label  # what `index build --upstream` records
        ids = [f"d{i}" for i in range(len(DOCS))]
        FunnelIndex.from_vectors(model.encode(DOCS), ids, DOCS, model_name=label).save(work / "index")
        proxy_args = ["--upstream", f"{upstream}/v1", "--upstream-model", NAME, "--upstream-key-env", KEY_ENV,
                      "--adaptor", str(path), "--safe-share", str(SHARE), "--strict-dimensions",
                      "--index", str(work / "index")]
        env = process_env(**{KEY_ENV: KEY, "MATRYOSHKA_CACHE": str(work / "cache")})
        with serve_process(proxy_args, env, work / "proxy.log") as url:
            yield {"url": url, "work": work, "log": work / "proxy.log"}


def test_openai_client_gets_the_adapted_prefixes_of_the_upstream(e2e, model, adaptor_file):
    _, adaptor, _ = adaptor_file
    client = openai.OpenAI(base_url=f"{e2e['url']}/v1", api_key="a-client-key", max_retries=0, timeout=120)
    adapted = adaptor.apply(model.encode(TEXTS))
    got = client.embeddings.create(model=NAME, input=TEXTS, dimensions=64)
    np.testing.assert_allclose([d.embedding for d in got.data], truncate(adapted, 64), atol=1e-5)
    raw = client.embeddings.create(model=NAME, input=TEXTS, dimensions=128, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]  # type: ignore[arg-type]
    np.testing.assert_allclose(decoded, truncate(adapted, 128), atol=1e-5)
    assert got.model == NAME


def test_models_list_the_safe_dimensions_and_strict_refuses_others(e2e, adaptor_file):
    _, _, safe = adaptor_file
    client = openai.OpenAI(base_url=f"{e2e['url']}/v1", api_key="unused", max_retries=0, timeout=60)
    [card] = client.models.list().data
    assert card.id == NAME and card.model_extra is not None and card.model_extra["matryoshka_dimensions"] == safe
    answer = httpx.post(f"{e2e['url']}/v1/embeddings", json={"input": "x", "dimensions": 32}, timeout=60)
    message = assert_openai_error(answer, 400, "unsafe_dimensions")
    assert ", ".join(map(str, safe)) in message and "32" in message
    # the same sizes bound search and the demo: a funnel's every stage, and the demo's slider
    unsafe = [{"dim": 32, "codec": "float32", "keep": 10}, {"dim": "full", "codec": "float32", "keep": 5}]
    answer = httpx.post(f"{e2e['url']}/v1/search", json={"query": "q", "k": 5, "stages": unsafe}, timeout=60)
    assert_openai_error(answer, 400, "unsafe_dimensions")
    answer = httpx.post(f"{e2e['url']}/v1/search", json={"query": "q", "k": 5, "dimensions": 32}, timeout=60)
    assert_openai_error(answer, 400, "unsafe_dimensions")
    answer = httpx.post(f"{e2e['url']}/demo/api/compare", json={"query": "q", "dim": 32, "k": 5}, timeout=60)
    assert_openai_error(answer, 400, "unsafe_dimensions")
    dims = httpx.get(f"{e2e['url']}/demo/api/info", timeout=60).json()["dims"]
    assert dims and set(dims) <= set(safe) and 32 not in dims


def test_search_and_demo_run_on_an_index_of_the_same_upstream(e2e, model, adaptor_file):
    _, adaptor, _ = adaptor_file
    query = "a musician in a concert hall"
    stages = [{"dim": 64, "codec": "float32", "keep": 5}]
    answer = httpx.post(f"{e2e['url']}/v1/search", json={"query": query, "k": 5, "stages": stages}, timeout=60)
    assert answer.status_code == 200, answer.text
    # the index holds the upstream's vectors; the server maps them by the adaptor, as it maps the query
    docs, asked = truncate(adaptor.apply(model.encode(DOCS)), 64), truncate(adaptor.apply(model.encode([query])), 64)
    expected = [f"d{i}" for i in np.argsort(-(docs @ asked[0]), kind="stable")[:5]]
    assert [hit["id"] for hit in answer.json()["hits"]] == expected
    compare = httpx.post(f"{e2e['url']}/demo/api/compare", json={"query": query, "dim": 64, "k": 5}, timeout=60)
    assert compare.status_code == 200 and compare.json()["model"] == NAME
    assert [hit["id"] for hit in compare.json()["chosen"]["hits"]] == expected


def test_repeats_come_from_the_cache_and_the_key_is_nowhere(e2e):
    url = e2e["url"]
    texts = ["a text sent twice", "and its companion"]
    httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60).raise_for_status()
    before = httpx.get(f"{url}/health").json()["upstream"][NAME]
    httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60).raise_for_status()
    after = httpx.get(f"{url}/health").json()["upstream"][NAME]
    assert after["calls"] == before["calls"] and after["cache_hits"] == before["cache_hits"] + len(texts)
    work = Path(str(e2e["work"]))
    files = [p for p in (work / "cache").rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)
    log = Path(str(e2e["log"])).read_text()
    assert '"event": "ready"' in log and '"path": "/v1/embeddings"' in log  # the log is there, and has no key
    assert KEY not in log


def test_kept_alive_answers_do_not_wait_for_a_delayed_ack(e2e, stand_in):
    """Both ways of serving (``matryoshka serve``'s socket, ``ServerThread``'s) set TCP_NODELAY: without it each
    answer on a kept-alive connection waited for the client's delayed ACK, 40 ms on Linux."""
    for url in (str(e2e["url"]), stand_in[1].url):
        with httpx.Client() as client:
            times = []
            for _ in range(21):
                started = time.perf_counter()
                client.get(f"{url}/health").raise_for_status()
                times.append(time.perf_counter() - started)
        assert float(np.median(times)) < 0.025, (url, times)


def test_demo_through_an_upstream(tmp_path, data_dir):
    """``matryoshka demo --upstream``: the glosses are encoded through the API; the base and its rotation search."""
    with StandIn(dim=128) as api:  # the demo's funnel starts at 64 dims
        port = free_port()
        args = [sys.executable, "-m", "matryoshka.cli", "demo", "--upstream", api.url, "--upstream-model", "stand-in",
                "--limit", "300", "--cache-dir", str(tmp_path / "demo"), "--port", str(port), "--log-level", "warning"]
        env = process_env(MATRYOSHKA_CACHE=str(tmp_path / "cache"), MATRYOSHKA_DATA=str(data_dir))
        with (tmp_path / "demo.log").open("w") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
            while True:
                assert proc.poll() is None, (tmp_path / "demo.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
                time.sleep(0.5)
            info = httpx.get(f"{url}/demo/api/info").json()
            assert info["models"] == ["stand-in", "stand-in+rotation"] and info["index_size"] == 300
            assert api.texts >= 300  # every gloss went through the API (and the lemma queries too)
            for choice in info["models"]:
                compare = httpx.post(f"{url}/demo/api/compare", json={"query": "a large animal", "dim": 16,
                                                                      "model": choice}, timeout=60)
                assert compare.status_code == 200 and compare.json()["model"] == choice
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# -- start-up: one line, no traceback -------------------------------------------------------------------


def one_line_failure(args: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command(*args, "--port", str(free_port())), capture_output=True, text=True,
                            timeout=120, env=env or process_env())
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_unreachable_upstream_fails_at_start():
    line = one_line_failure(["--upstream", f"http://127.0.0.1:{free_port()}/v1", "--upstream-model", "m",
                             "--upstream-retries", "0"])
    assert "cannot be reached" in line


def test_a_missing_key_variable_is_named_not_shown():
    line = one_line_failure(["--upstream", "http://127.0.0.1:9/v1", "--upstream-model", "m",
                             "--upstream-key-env", KEY_ENV])
    assert KEY_ENV in line


@pytest.mark.parametrize("url", ["http://me:{key}@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api_key={key}",
                                 "http://127.0.0.1:9/v1#{key}"])
def test_a_url_that_carries_a_secret_is_refused_without_showing_it(url):
    """The URL becomes the model's label (index metadata, /v1/models, logs), so it may hold no secret."""
    line = one_line_failure(["--upstream", url.format(key=KEY), "--upstream-model", "m"])
    assert "--upstream-key-env" in line and "127.0.0.1:9/v1" in line and KEY not in line
    with pytest.raises(ValueError, match="plain base URL") as caught:
        UpstreamConfig(url.format(key=KEY), "m")
    assert KEY not in str(caught.value)


def test_an_index_of_an_upstream_asks_for_it(tmp_path):
    label = UpstreamConfig("http://127.0.0.1:9/v1", "bge-small").label
    FunnelIndex.from_vectors(np.eye(8, dtype=np.float32), [str(i) for i in range(8)], model_name=label).save(tmp_path / "i")
    line = one_line_failure(["--index", str(tmp_path / "i")])
    assert "--upstream http://127.0.0.1:9/v1 --upstream-model bge-small" in line


def test_an_unreadable_adaptor_fails_before_the_model_loads(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors at all")
    line = one_line_failure(["--adaptor", str(tmp_path / "broken.safetensors")])
    assert "--adaptor" in line and "broken.safetensors" in line
