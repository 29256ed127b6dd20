"""The OpenAI-compatible embeddings API, against a real uvicorn server on a loopback port.

The official ``openai`` client must get the same vectors as ``matryoshka.embeddings.vectors.encode``; every
error must come back in OpenAI's shape with the right status; junk must never crash the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.http.middleware import JsonLogFormatter

torch.set_num_threads(1)

NAME = "all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar.", "The weather is lovely today.", "Matryoshka dolls nest inside each other."]
LIMITS = dict(max_inputs=8, max_input_chars=300, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def server(model):
    app = create_app(ServeConfig(models=[NAME], **LIMITS), models={NAME: model})
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(model):
    app = create_app(ServeConfig(models=[NAME], api_key="sk-test-123", **LIMITS), models={NAME: model})
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def post(server, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}/v1/embeddings", content=content, headers=headers, timeout=60, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = "?", code: str | None = "?") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param != "?":
        assert body["error"]["param"] == param, body
    if code != "?":
        assert body["error"]["code"] == code, body
    return body["error"]


# -- the happy path, through the official client ---------------------------------------------------------


def test_openai_client_full_size_matches_encode(client, model):
    response = client.embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, encode(model, TEXTS), atol=1e-5)
    assert [d.index for d in response.data] == [0, 1, 2]
    assert response.model == NAME and response.object == "list"
    expected_tokens = sum(len(ids) for ids in model.tokenizer(TEXTS)["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected_tokens


@pytest.mark.parametrize("dim", [16, 64, 383])
def test_openai_client_dimensions_float(client, model, dim):
    response = client.embeddings.create(model=NAME, input=TEXTS, dimensions=dim, encoding_format="float")
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == (3, dim)
    np.testing.assert_allclose(got, encode(model, TEXTS, dim=dim), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # re-normalized after truncation


def test_openai_client_explicit_base64(client, model):
    response = client.embeddings.create(model=NAME, input=TEXTS, dimensions=32, encoding_format="base64")
    rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data]
    np.testing.assert_allclose(np.stack(rows), encode(model, TEXTS, dim=32), atol=1e-5)


def test_single_string_input(client, model):
    response = client.embeddings.create(model=NAME, input="just one text", encoding_format="float")
    assert len(response.data) == 1
    np.testing.assert_allclose(response.data[0].embedding, encode(model, "just one text"), atol=1e-5)


def test_model_optional_and_user_ignored(server, model):
    response = post(server, {"input": ["hello"], "user": "someone", "encoding_format": "float"})
    assert response.status_code == 200
    assert response.json()["model"] == NAME


def test_models_endpoints(client, server):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [NAME]
    card = client.models.retrieve(NAME)
    assert card.id == NAME and card.object == "model"
    assert httpx.get(f"{server.url}/v1/models/{NAME}").json()["dimensions"] == 384
    assert_openai_error(httpx.get(f"{server.url}/v1/models/nope"), 404, "model", "model_not_found")


def test_health(server):
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok" and body["models"] == [NAME]


# -- errors ------------------------------------------------------------------------------------------------

ERROR_CASES = [
    ({"input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"input": "x", "dimensions": -3}, 400, "dimensions"),
    ({"input": "x", "dimensions": 385}, 400, "dimensions"),
    ({"input": "x", "dimensions": 10**40}, 400, "dimensions"),
    ({"input": "x", "dimensions": "64"}, 400, "dimensions"),
    ({"input": "x", "dimensions": 64.5}, 400, "dimensions"),
    ({"input": "x", "dimensions": True}, 400, "dimensions"),
    ({"input": []}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": ["ok", ""]}, 400, "input"),
    ({"input": ["t"] * 9}, 400, "input"),
    ({"input": "x" * 301}, 400, "input"),
    ({"input": [1, 2, 3]}, 400, "input"),
    ({"input": [[1, 2], [3]]}, 400, "input"),
    ({"input": ["ok", 5]}, 400, "input"),
    ({"input": 5}, 400, "input"),
    ({"input": None}, 400, "input"),
    ({"input": {"text": "x"}}, 400, "input"),
    ({"model": NAME}, 400, "input"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "model": 7}, 400, "model"),
    ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), ERROR_CASES, ids=[str(i) for i in range(len(ERROR_CASES))])
def test_error_cases(server, body, status, param):
    error = assert_openai_error(post(server, body), status, param)
    if status == 404:
        assert error["code"] == "model_not_found"
    else:
        assert error["type"] == "invalid_request_error"


def test_token_arrays_say_unsupported(server):
    error = assert_openai_error(post(server, {"input": [101, 2023]}), 400, "input", "unsupported_input")
    assert "not supported" in error["message"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"input": "x",}', b"\xff\xfe\x00", b""])
def test_malformed_json_is_400(server, raw):
    assert_openai_error(post(server, raw), 400)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_body_must_be_object(server, raw):
    assert_openai_error(post(server, raw), 400)


def test_body_too_large_by_content_length(server):
    assert_openai_error(post(server, {"input": "x" * (70 * 1024)}), 413, None, "request_too_large")


def test_body_too_large_chunked(server):
    def chunks():
        for _ in range(80):
            yield b"x" * 1024

    response = httpx.post(f"{server.url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413)


def test_unknown_url_and_method(server):
    assert_openai_error(httpx.post(f"{server.url}/v1/nothing-here", json={}), 404, None, "unknown_url")
    assert_openai_error(httpx.get(f"{server.url}/v1/embeddings"), 405)


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=NAME, input=TEXTS, dimensions=0)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input=TEXTS)


# -- auth ----------------------------------------------------------------------------------------------------


def test_auth_required_when_key_set(keyed_server):
    url = f"{keyed_server.url}/v1/embeddings"
    assert_openai_error(httpx.post(url, json={"input": "x"}), 401, None, "invalid_api_key")
    assert_openai_error(httpx.post(url, json={"input": "x"}, headers={"Authorization": "Bearer wrong"}), 401)
    assert_openai_error(httpx.post(url, json={"input": "x"}, headers={"Authorization": "Basic sk-test-123"}), 401)
    assert_openai_error(httpx.post(url, content=b"{broken", headers={"Authorization": "Bearer no"}), 401)  # key first
    assert_openai_error(httpx.get(f"{keyed_server.url}/v1/models"), 401)
    ok = httpx.post(url, json={"input": "x"}, headers={"Authorization": "Bearer sk-test-123"})
    assert ok.status_code == 200
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200  # health stays open for probes


def test_auth_with_openai_client(keyed_server, model):
    good = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="sk-test-123", max_retries=0)
    response = good.embeddings.create(model=NAME, input=TEXTS[:1], dimensions=64)
    np.testing.assert_allclose(response.data[0].embedding, encode(model, TEXTS[:1], dim=64)[0], atol=1e-5)
    bad = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=NAME, input=TEXTS[:1])


def test_no_key_configured_needs_no_header(server):
    assert post(server, {"input": "x"}).status_code == 200


# -- robustness ------------------------------------------------------------------------------------------------


def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value: wrong types, huge numbers, long strings, nesting."""
    choices = [
        lambda: rng.randint(-(10**30), 10**30),
        lambda: rng.choice([0, -1, 1e308, -1e308, 1e-308, 2**63, 2**64 + 1, 3.5]),
        lambda: rng.choice(["", "x", "\u0000", "\ud7ff" * 3, "é" * 50, "a" * rng.randint(0, 400)]),
        lambda: rng.choice([None, True, False]),
    ]
    if depth < 4:
        choices += [
            lambda: [_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))],
            lambda: {
                rng.choice(["input", "model", "dimensions", "encoding_format", "x"]): _junk(rng, depth + 1)
                for _ in range(rng.randint(0, 3))
            },
        ]
    return rng.choice(choices)()


def test_fuzz_never_crashes(server):
    rng = random.Random(1234)
    statuses = set()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(300):
            kind = i % 4
            if kind == 0:
                content = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
            elif kind == 1:
                content = json.dumps(_junk(rng)).encode()
            elif kind == 2:
                body = {
                    "input": _junk(rng),
                    "model": rng.choice([NAME, _junk(rng)]),
                    "dimensions": _junk(rng),
                    "encoding_format": rng.choice(["float", "base64", _junk(rng)]),
                }
                content = json.dumps(body).encode()
            else:
                content = b"[" * rng.randint(1, 5000) + b"]" * rng.randint(0, 5000)  # deep nesting
            path = rng.choice(["/v1/embeddings", "/v1/embeddings", "/v1/search", "/demo/api/compare"])
            response = http.post(
                path, content=content, headers={"content-type": rng.choice(["application/json", "text/plain"])}
            )
            statuses.add(response.status_code)
            assert response.status_code < 500, (content[:200], response.text)
            if response.status_code != 200:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get("/health").json()["status"] == "ok"
        assert http.post("/v1/embeddings", json={"input": "still alive"}).status_code == 200
    assert 400 in statuses


def test_request_log_lines(server, caplog):
    caplog.set_level(logging.INFO, logger="matryoshka.serving")
    post(server, {"input": "log me"})
    time.sleep(0.05)
    records = [r for r in caplog.records if getattr(r, "event", None) == "request" and r.path == "/v1/embeddings"]
    assert records
    line = json.loads(JsonLogFormatter().format(records[-1]))
    assert line["method"] == "POST" and line["status"] == 200 and line["ms"] >= 0 and line["path"] == "/v1/embeddings"


# -- micro-batching and shutdown --------------------------------------------------------------------------------


class CountingModel:
    """Wraps a model and counts (and optionally slows) its ``encode`` calls."""

    def __init__(self, model, delay: float = 0.0):
        self._model, self.delay, self.calls, self.sizes = model, delay, 0, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, sentences, *args, **kwargs):
        self.calls += 1
        self.sizes.append(len(sentences))
        if self.delay:
            time.sleep(self.delay)
        return self._model.encode(sentences, *args, **kwargs)


def test_concurrent_requests_are_merged(model):
    counting = CountingModel(model)
    app = create_app(ServeConfig(models=[NAME], batch_max_wait_ms=50, log_requests=False), models={NAME: counting})
    texts = [f"sentence number {i} about dolls" for i in range(16)]
    with ServerThread(app) as running:
        before = counting.calls

        async def fire():
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
                return await asyncio.gather(
                    *[
                        http.post("/v1/embeddings", json={"input": t, "dimensions": 32, "encoding_format": "float"})
                        for t in texts
                    ]
                )

        responses = asyncio.run(fire())
        calls = counting.calls - before
    assert all(r.status_code == 200 for r in responses)
    assert calls <= 4, f"16 concurrent requests took {calls} model calls"
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, encode(model, texts, dim=32), atol=1e-5)  # each caller got its own rows


def test_graceful_shutdown_finishes_request_in_flight(model):
    slow = CountingModel(model)
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: slow})
    running = ServerThread(app).start()
    slow.delay = 1.0
    result = {}

    def call():
        result["response"] = httpx.post(f"{running.url}/v1/embeddings", json={"input": "finish me"}, timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request is inside the model call now
    running.stop()
    caller.join(timeout=30)
    assert result["response"].status_code == 200
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):
        httpx.post(f"{running.url}/v1/embeddings", json={"input": "too late"}, timeout=5)


def test_server_binds_loopback_only(server):
    assert server.host == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
