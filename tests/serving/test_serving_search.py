"""``/v1/search`` and the demo's endpoints over a small funnel index of real WordNet glosses."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.app import STATIC_DIR
from matryoshka.serving.quality import clean_quality, demo_dimensions, load_quality
from support import numpy_blas_at, numpy_blas_threads, watch_column_scans, wordnet_sample

torch.set_num_threads(1)

NAME = "all-MiniLM-L6-v2"
QUERY = "a large animal with a long trunk"
QUALITY = {"models": {NAME: {"stsb spearman": {"384": 0.82, "128": 0.80, "64": 0.77, "32": 0.72, "16": 0.64}}}}


@pytest.fixture(scope="module")
def corpus(model):
    ids, texts = wordnet_sample(200)
    return ids, texts, encode(model, texts, batch_size=32)


@pytest.fixture(scope="module")
def retrieval():
    import matryoshka.retrieval as module

    return module


@pytest.fixture(scope="module")
def index(retrieval, corpus):
    ids, texts, vectors = corpus
    stages = retrieval.parse_stages("64:float32:50,full:float32:10")
    return retrieval.FunnelIndex.from_vectors(vectors, ids, texts, model_name=NAME, stages=stages)


@pytest.fixture(scope="module")
def server(model, index):
    app = create_app(ServeConfig(models=[NAME], search_max_k=50), models={NAME: model}, index=index, quality=QUALITY)
    with ServerThread(app) as running:
        yield running


def search(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/search", json={"query": QUERY, **body}, timeout=60)


def brute_force(model, corpus, query: str, k: int, dim: int | None = None) -> list[str]:
    ids, _, vectors = corpus
    docs = vectors[:, :dim] / np.linalg.norm(vectors[:, :dim], axis=1, keepdims=True)
    scores = docs @ encode(model, query, dim=dim)
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_default_funnel(server, model, index):
    body = search(server, k=5).json()
    assert body["object"] == "search.result" and body["model"] == NAME and body["k"] == 5
    assert [s["dim"] for s in body["stages"]] == [64, 384]
    assert body["stages"][0]["candidates"] == 200 and body["stages"][1]["candidates"] == 50
    assert body["bytes_per_vector"] == 64 * 4
    assert all(s["ms"] >= 0 for s in body["stages"])
    direct = index.search(encode(model, [QUERY]), k=5)[0]
    assert [h["id"] for h in body["hits"]] == [h.id for h in direct]
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["text"] for h in body["hits"])
    assert body["usage"]["prompt_tokens"] > 0


def test_exact_preset_is_brute_force(server, model, corpus):
    body = search(server, preset="exact", k=10).json()
    assert [s["dim"] for s in body["stages"]] == [384]
    assert body["bytes_per_vector"] == 384 * 4
    assert [h["id"] for h in body["hits"]] == brute_force(model, corpus, QUERY, 10)


def test_explicit_stages_and_binary_bytes(server):
    stages = [{"dim": 32, "codec": "binary", "keep": 100}, {"dim": "full", "codec": "float32", "keep": 10}]
    body = search(server, stages=stages, k=7).json()
    assert [(s["dim"], s["codec"]) for s in body["stages"]] == [(32, "binary"), (384, "float32")]
    assert body["bytes_per_vector"] == 4 and body["stages"][1]["bytes_per_vector"] == 1536
    assert len(body["hits"]) == 7


def test_dimensions_sets_the_first_stage(server, model, corpus):
    body = search(server, preset="exact", dimensions=48, k=10).json()
    assert [s["dim"] for s in body["stages"]] == [48]
    assert body["bytes_per_vector"] == 48 * 4
    assert [h["id"] for h in body["hits"]] == brute_force(model, corpus, QUERY, 10, dim=48)
    funnel = search(server, dimensions=128).json()
    assert [s["dim"] for s in funnel["stages"]] == [128, 384]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stages": [{"dim": 64, "codec": "float32", "keep": 10}], "preset": "exact"}, "stages"),
        ({"preset": "nope"}, "preset"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": 999}, "dimensions"),
        ({"stages": [{"dim": 999, "codec": "float32", "keep": 10}]}, "stages"),
        ({"stages": [{"dim": 12, "codec": "binary", "keep": 10}]}, "stages"),
        ({"stages": [{"dim": 64, "codec": "pq", "keep": 10}]}, "stages"),
        ({"stages": [{"dim": -1, "codec": "float32", "keep": 10}]}, "stages"),
        ({"stages": [{"dim": 64, "codec": "float32", "keep": 0}]}, "stages"),
        ({"stages": []}, "stages"),
        (
            {
                "stages": [
                    {"dim": 64, "codec": "float32", "keep": 10},
                    {"dim": 128, "codec": "float32", "keep": 50},
                    {"dim": "full", "codec": "float32", "keep": 10},
                ]
            },
            "stages",
        ),
        ({"k": 0}, "k"),
        ({"k": 51}, "k"),
        ({"k": "10"}, "k"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": ["a", "b"]}, "query"),
        ({"model": "other"}, "model"),
    ],
)
def test_search_errors(server, body, param):
    response = search(server, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"stages": [{"dim": "FULL", "codec": "float32", "keep": 10}]}, 'dim must be an integer or "full", got "FULL"'),
        ({"stages": [{"dim": 1.5, "codec": "float32", "keep": 10}]}, 'dim must be an integer or "full", got 1.5'),
        ({"filter": {"lang": {"en": 1}}}, 'filter["lang"] must be a string, a number, a boolean or a list of them'),
        ({"filter": {"lang": [["en"]]}}, 'filter["lang"] must be a string, a number, a boolean or a list of them'),
        ({"filter": {"lang": None}}, 'filter["lang"] must be a string, a number, a boolean or a list of them, got null'),
        ({"filter": "lang=en"}, "filter must be an object of metadata keys and values"),
    ],
)
def test_wrong_types_say_what_is_allowed(server, body, allowed):
    """Not pydantic's union branches (`stages[0].dim.int`, `filter.lang.str`): what the field takes."""
    response = search(server, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == next(iter(body))
    assert allowed in error["message"]
    assert not re.search(r"\.(int|str|float|bool)\b|literal\[|list\[|union\[", error["message"]), error["message"]


@pytest.fixture
def two_blas_threads():
    with numpy_blas_at(2) as n:
        yield n


def test_served_scans_run_numpy_blas_on_one_thread(server, two_blas_threads, monkeypatch):
    """Issue 32: the exact stage took 50-81 ms in the server against 1.5-2 ms in-process, because each
    block of the scan waited for OpenBLAS's second thread on a busy host. Checked by the setting in
    effect inside the scan, in the server's own threads."""
    blas_during_scans = watch_column_scans(monkeypatch)
    body = search(server, preset="exact", k=10).json()
    assert [s["dim"] for s in body["stages"]] == [384] and len(body["hits"]) == 10
    compare = httpx.post(f"{server.url}/demo/api/compare", json={"query": QUERY, "dim": 16, "k": 10}, timeout=60)
    assert compare.status_code == 200, compare.text
    assert blas_during_scans == [[1], [1], [1]]  # the exact stage, then the demo's 16-dim and full-size sides
    assert numpy_blas_threads() == [two_blas_threads]  # given back once the scans are done


def test_no_index_is_404(model):
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model})
    with ServerThread(app) as running:
        response = httpx.post(f"{running.url}/v1/search", json={"query": "x"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "index_not_loaded"
        assert httpx.get(f"{running.url}/demo/api/info").status_code == 404


def test_index_path_in_config(model, index, tmp_path):
    index.save(tmp_path / "idx")
    app = create_app(
        ServeConfig(models=[NAME], index_path=str(tmp_path / "idx"), log_requests=False), models={NAME: model}
    )
    with ServerThread(app) as running:
        body = httpx.post(f"{running.url}/v1/search", json={"query": QUERY, "k": 3}).json()
        assert len(body["hits"]) == 3 and httpx.get(f"{running.url}/health").json()["index_size"] == 200


# -- demo endpoints and page ------------------------------------------------------------------------------


def test_demo_info(server):
    info = httpx.get(f"{server.url}/demo/api/info").json()
    assert info["dims"] == [16, 32, 64, 128, 384]  # the evaluated dimensions
    assert info["full_dim"] == 384 and info["index_size"] == 200
    assert info["quality_model"] == NAME and info["quality"] == QUALITY["models"]
    assert info["codecs"] == ["float32", "float16", "int8", "binary"]


@pytest.mark.parametrize(
    ("dim", "codec", "per_vector"), [(16, "float32", 64), (64, "binary", 8), (128, "int8", 128), (384, "float32", 1536)]
)
def test_demo_compare(server, model, corpus, dim, codec, per_vector):
    body = httpx.post(
        f"{server.url}/demo/api/compare", json={"query": QUERY, "dim": dim, "codec": codec, "k": 10}
    ).json()
    assert body["chosen"]["dim"] == dim and body["chosen"]["bytes_per_vector"] == per_vector
    assert body["full"]["dim"] == 384 and body["full"]["bytes_per_vector"] == 1536
    assert body["chosen"]["index_bytes"] == per_vector * 200
    chosen, full = [h["id"] for h in body["chosen"]["hits"]], [h["id"] for h in body["full"]["hits"]]
    assert full == brute_force(model, corpus, QUERY, 10)
    assert body["overlap"] == len(set(chosen) & set(full))
    if codec == "float32":
        assert chosen == brute_force(model, corpus, QUERY, 10, dim=dim)
    if dim == 384 and codec == "float32":
        assert body["overlap"] == 10


def test_demo_compare_errors(server):
    url = f"{server.url}/demo/api/compare"
    assert httpx.post(url, json={"query": QUERY, "dim": 0}).status_code == 400
    assert httpx.post(url, json={"query": QUERY, "dim": 500}).status_code == 400
    assert httpx.post(url, json={"query": QUERY, "dim": 12, "codec": "binary"}).status_code == 400
    assert httpx.post(url, json={"query": "", "dim": 64}).status_code == 400


def test_demo_page_and_assets_are_local(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(f"{server.url}{asset}").status_code == 200
    for path in STATIC_DIR.iterdir():  # no CDN: nothing is fetched from another host
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)=["']https?://""", text)
        assert not re.search(r"""(fetch|import)\(\s*["']https?://""", text)


def test_demo_without_quality_says_so(model, index):
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
    with ServerThread(app) as running:
        info = httpx.get(f"{running.url}/demo/api/info").json()
    assert info["quality"] is None and info["dims"] == [16, 32, 64, 128, 256, 384]
    assert "No evaluation results" in (STATIC_DIR / "demo.js").read_text(encoding="utf-8")


# -- quality files ------------------------------------------------------------------------------------------


def test_load_quality_merges_both_shapes(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(QUALITY))
    evaluate_shape = {
        "all-MiniLM-L6-v2": {"384": 0.5, "64": 0.4},
        "task": "scifact-test",
        "metric": "ndcg@10",
        "retention": {},
        "metrics": {},
        "metadata": {},
    }
    (tmp_path / "b.json").write_text(json.dumps(evaluate_shape))
    quality = clean_quality(load_quality([tmp_path / "a.json", tmp_path / "b.json"]))
    assert set(quality[NAME]) == {"stsb spearman", "scifact-test ndcg@10"}
    assert quality[NAME]["scifact-test ndcg@10"] == {"64": 0.4, "384": 0.5}


def test_clean_quality_drops_junk():
    assert clean_quality(None) is None
    assert clean_quality({"models": {"m": {"t": {"x": 1, "64": "nan", "32": 0.5, "-1": 2}}}}) == {
        "m": {"t": {"32": 0.5}}
    }
    assert clean_quality({"models": []}) is None


def test_demo_dimensions():
    assert demo_dimensions(384) == [16, 32, 64, 128, 256, 384]
    assert demo_dimensions(384, [768, 64, 16]) == [16, 64, 384]
    assert demo_dimensions(384, [64], configured=[8, 100]) == [8, 100, 384]
