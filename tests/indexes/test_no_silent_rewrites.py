"""Requests that used to be quietly rewritten are refused with a reason: inconsistent stages, filters on
keys no document has, parse errors without a code, NaN vectors in a stored index, binary codes of a dim
that is not a multiple of 8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import matryoshka.retrieval.stages as stages_module
from matryoshka.embeddings.vectors import DimensionError, encode, quantize
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.retrieval import IndexCorruptError, parse_stages
from matryoshka.serving import ServeConfig, ServerThread, create_app

torch.set_num_threads(1)

NAME = "all-MiniLM-L6-v2"
TEXTS = [f"document {i}: {topic}" for i, topic in enumerate(["cats", "dogs", "boats", "trains", "tea"] * 8)]


@pytest.fixture(scope="module")
def index(model) -> FunnelIndex:
    vectors = encode(model, TEXTS)
    metadata = [{"source": "a" if i % 2 else "b"} for i in range(len(TEXTS))]
    return FunnelIndex.from_vectors(
        vectors, [str(i) for i in range(len(TEXTS))], TEXTS, model_name=NAME,
        stages=parse_stages("64:float32:20,full:float32:10"), metadata=metadata,
    )


@pytest.fixture(scope="module")
def server(model, index):
    app = create_app(ServeConfig(models=[NAME]), models={NAME: model}, index=index)
    with ServerThread(app) as running:
        yield running


def search(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/search", json={"query": "a boat", **body}, timeout=60)


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_shortlist_smaller_than_k_is_refused(server):
    stages = [{"dim": 10 * 8, "codec": "float32", "keep": 10}, {"dim": "full", "codec": "float32", "keep": 5}]
    error = error_of(search(server, stages=stages, k=30))
    assert error["code"] == "invalid_stages" and "keeps 10" in error["message"] and "k=30" in error["message"]
    assert search(server, stages=stages, k=10).status_code == 200  # as written, it is fine


def test_growing_keeps_are_refused(server):
    stages = [
        {"dim": 32, "codec": "float32", "keep": 10},
        {"dim": 64, "codec": "float32", "keep": 20},
        {"dim": "full", "codec": "float32", "keep": 5},
    ]
    assert error_of(search(server, stages=stages, k=5))["code"] == "invalid_stages"


def test_index_default_funnel_is_checked_against_k(server):
    error = error_of(search(server, k=25))  # the index's own funnel shortlists 20
    assert error["code"] == "invalid_stages" and "keeps 20" in error["message"]


def test_filter_on_a_key_no_document_has_is_refused(server):
    error = error_of(search(server, filter={"lang": "en"}))
    assert error["code"] == "invalid_filter" and "'lang'" in error["message"] and "'source'" in error["message"]
    ok = search(server, filter={"source": "a"}, k=5)
    assert ok.status_code == 200 and len(ok.json()["hits"]) == 5
    assert search(server, filter={"source": "zzz"}).json()["hits"] == []  # a known key with no match: 200, 0 hits


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": "\xff\xfe caf\xe9"}',
        b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["invalid-utf8", "5000-digit-int", "5000-deep"],
)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/search", "/demo/api/compare"])
def test_parse_errors_have_the_documented_code(server, body, path):
    response = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=60)
    error = error_of(response)
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"


def _poison(path: Path) -> None:
    """Write NaN into the stored vectors and fix the manifest's checksum, as a buggy writer would."""
    manifest = json.loads((path / "manifest.json").read_text())
    vectors = np.fromfile(path / "vectors.bin", dtype="<f4").reshape(manifest["count"], manifest["dim"])
    vectors[3, 5] = np.nan
    vectors.tofile(path / "vectors.bin")
    data = (path / "vectors.bin").read_bytes()
    manifest["files"]["vectors.bin"]["sha256_chunks"] = [hashlib.sha256(data).hexdigest()]
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("mmap", [False, True])
def test_index_with_nan_vectors_is_refused_at_load(index, tmp_path, mmap):
    index.save(tmp_path / "ix")
    _poison(tmp_path / "ix")
    with pytest.raises(IndexCorruptError, match="NaN or infinite values \\(row 3\\)"):
        FunnelIndex.load(tmp_path / "ix", mmap=mmap)


def test_nan_and_inf_vectors_are_refused_at_build_and_add(index):
    bad = np.ones((2, index.dim), dtype=np.float32)
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        FunnelIndex.from_vectors(bad, ["x", "y"])
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        index.add(bad, ["x", "y"])
    assert "x" not in index


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_precision_needs_a_multiple_of_8(model, precision):
    with pytest.raises(DimensionError, match="multiple of 8"):
        encode(model, ["a cat"], dim=12, precision=precision)
    with pytest.raises(DimensionError, match="multiple of 8"):
        quantize(np.ones((1, 12), dtype=np.float32), precision)
    assert encode(model, ["a cat"], dim=16, precision=precision).shape == (1, 2)


def test_cli_encode_refuses_binary_dim_12():
    from matryoshka.cli.app import app

    result = CliRunner().invoke(app, ["encode", "a cat", "--dim", "12", "--precision", "ubinary"])
    assert result.exit_code != 0
    assert "multiple of 8" in result.output


def test_binary_stage_and_demo_compare_follow_the_same_rule(server):
    stages = [{"dim": 12, "codec": "binary", "keep": 20}, {"dim": "full", "codec": "float32", "keep": 5}]
    assert "multiple of 8" in error_of(search(server, stages=stages, k=5))["message"]
    compare = httpx.post(f"{server.url}/demo/api/compare", json={"query": "x", "dim": 12, "codec": "binary"}, timeout=60)
    assert "multiple of 8" in error_of(compare)["message"]


def test_check_keeps():
    stages_module.check_keeps(parse_stages("64:binary:400,full:float32:10"), 400)
    with pytest.raises(ValueError, match="fewer than k=401"):
        stages_module.check_keeps(parse_stages("64:binary:400,full:float32:10"), 401)
