"""The exception tree decides the HTTP answer: an InputError is a 400, an IndexStoreError a 503, anything
else (a bare ValueError included) a 500 with its traceback in the log. An engine that fails is simulated by
replacing one method of a real index."""

from __future__ import annotations

import logging

import httpx
import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.errors import DimensionError, EngineError, IndexCorruptError, InputError, ModelError
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.retrieval import parse_stages
from matryoshka.serving import ServeConfig, ServerThread, create_app

torch.set_num_threads(1)

NAME = "all-MiniLM-L6-v2"
TEXTS = [f"a short text about {w}" for w in ("cats", "boats", "tea", "rain", "chess", "maps")]


@pytest.fixture(scope="module")
def index(model):
    return FunnelIndex.from_vectors(
        encode(model, TEXTS), [str(i) for i in range(len(TEXTS))], TEXTS, model_name=NAME,
        stages=parse_stages("64:float32:6,full:float32:3"),
    )


@pytest.fixture(scope="module")
def server(model, index):
    config = ServeConfig(models=[NAME], log_requests=False)
    with ServerThread(create_app(config, models={NAME: model}, index=index)) as running:
        yield running


def failing(exc: Exception):
    def fail(*args, **kwargs):
        raise exc

    return fail


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


SEARCH = ("/v1/search", {"query": "cats", "k": 2})
COMPARE = ("/demo/api/compare", {"query": "cats", "dim": 64, "k": 2})


@pytest.mark.parametrize("exc", [EngineError("connection refused"), IndexCorruptError("vectors.bin is truncated")])
@pytest.mark.parametrize("path,body", [SEARCH, COMPARE])
def test_an_index_that_fails_is_a_503(server, index, monkeypatch, exc, path, body):
    monkeypatch.setattr(index, "search_with_timings", failing(exc))
    answer = post(server, path, body)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == {
        "message": f"The index is unavailable: {exc}", "type": "server_error", "param": None, "code": "index_unavailable"
    }


@pytest.mark.parametrize("exc", [InputError("no int8 codes"), DimensionError("dim=999 is too large")])
def test_an_engine_refusing_the_request_is_a_400(server, index, monkeypatch, exc):
    monkeypatch.setattr(index, "search_with_timings", failing(exc))
    error = post(server, *SEARCH).json()["error"]
    assert error["message"] == f"Invalid search: {exc}" and error["code"] == "invalid_stages"
    error = post(server, *COMPARE).json()["error"]
    assert error["message"] == f"This index cannot rank by 64:float32:2: {exc}" and error["param"] == "codec"


def test_an_input_error_no_route_answers_itself_is_a_400(server, index, monkeypatch):
    monkeypatch.setattr(index, "scan_codecs", failing(InputError("no such prefix")))
    answer = httpx.get(f"{server.url}/demo/api/info", timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "no such prefix", "type": "invalid_request_error", "param": None, "code": "invalid_request"
    }


@pytest.mark.parametrize("exc", [ValueError("a bug, not bad input"), ModelError("model went away"), KeyError("x")])
def test_anything_else_is_a_500_with_its_traceback(server, index, monkeypatch, caplog, exc):
    caplog.set_level(logging.ERROR, logger="matryoshka.serving")
    monkeypatch.setattr(index, "search_with_timings", failing(exc))
    answer = post(server, *SEARCH)
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": "The server had an error while processing your request.", "type": "server_error", "param": None,
        "code": None,
    }
    crashes = [r for r in caplog.records if getattr(r, "event", None) == "error"]
    assert crashes and crashes[-1].exc_info is not None and crashes[-1].exc_info[1] is exc


def test_serving_no_model_is_an_input_error():
    with pytest.raises(InputError, match="serve at least one model"):
        create_app(ServeConfig(models=[NAME]), models={})
