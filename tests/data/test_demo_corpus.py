"""The demo on a user's own index, on every engine: a neutral title, and only the dimensions and codecs
the engine can rank by (``VectorIndex.scan_codecs``), so no choice the page offers ends in an error."""

from __future__ import annotations

import uuid

import httpx
import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.indexes import open_index
from matryoshka.retrieval import Stage
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.demo.index import NEUTRAL_CORPUS, WORDNET_CORPUS
from matryoshka.serving.schemas import API_CODECS
from support import wordnet_sample

torch.set_num_threads(1)
NAME = "all-MiniLM-L6-v2"
QUERY = "a large animal with a long trunk"
ENGINES = ["faiss", "postgresql", "qdrant"]
#: What each engine can rank a prefix by alone (the demo's chosen side), at a dim that is a multiple of 8.
EXPECTED = {
    "faiss": ["float32", "float16", "int8", "binary"],
    "postgresql": ["float32", "float16", "binary"],  # pgvector has no int8 vectors
    "qdrant": ["float32", "float16"],  # its binary quantization only shortlists for a float re-rank
}


@pytest.fixture(scope="module")
def glosses(model):
    ids, texts = wordnet_sample(120)
    return ids, texts, encode(model, texts, batch_size=32)


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path, glosses):
    """(engine name, an index of the glosses on it)."""
    ids, texts, vectors = glosses
    if request.param == "faiss":
        url = f"faiss://{tmp_path / 'index'}"
    elif request.param == "postgresql":
        base = request.getfixturevalue("postgres_url")
        url = f"{base}{'&' if '?' in base else '?'}table=demo_{uuid.uuid4().hex[:8]}"
    else:
        url = f"qdrant+local://{tmp_path / 'qdrant'}?collection=demo"  # stores 64- and 128-dim prefixes
    index = open_index(url, dim=vectors.shape[1], model_name=NAME)
    index.upsert(ids, vectors, texts)
    yield request.param, index
    index.close()


def test_scan_codecs_are_exactly_what_the_engine_runs(engine, glosses):
    name, index = engine
    query = glosses[2][:1]
    assert list(index.scan_codecs(64)) == EXPECTED[name]
    assert index.scan_codecs(0) == () and index.scan_codecs(index.dim + 1) == ()
    for dim in (12, 16, 64, 128, 384):
        claimed = index.scan_codecs(dim)
        for codec in API_CODECS:
            try:
                stage = Stage(dim, codec, 5)  # type: ignore[arg-type]
            except ValueError:  # binary at 12: no engine can be asked
                assert codec not in claimed, (name, dim, codec)
                continue
            if codec in claimed:
                hits, _ = index.search_with_timings(query, 5, [stage])
                assert len(hits[0]) == 5, (name, dim, codec)
            else:
                with pytest.raises(ValueError):
                    index.search_with_timings(query, 5, [stage])


def test_the_demo_offers_only_what_the_engine_runs(engine, model):
    name, index = engine
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        info = client.get("/demo/api/info").json()
        # a user's own index: nothing WordNet about the page
        assert (info["title"], info["placeholder"], info["examples"]) == (NEUTRAL_CORPUS.title,
                                                                          NEUTRAL_CORPUS.placeholder, [])
        expected_dims = [d for d in (16, 32, 64, 128, 256, 384) if index.scan_codecs(d)]
        assert info["dims"] == expected_dims
        if name == "qdrant":
            assert expected_dims == [64, 128, 384]  # the prefixes the collection stores, and full size
        assert info["codecs"] == EXPECTED[name]
        assert info["dim_codecs"] == {str(d): [c for c in API_CODECS if c in index.scan_codecs(d)] for d in expected_dims}
        for dim in info["dims"]:  # every offered choice answers
            for codec in info["dim_codecs"][str(dim)]:
                answer = client.post("/demo/api/compare", json={"query": QUERY, "dim": dim, "codec": codec, "k": 5})
                assert answer.status_code == 200, (dim, codec, answer.text)
                assert len(answer.json()["chosen"]["hits"]) == 5
        for codec in set(API_CODECS) - set(info["codecs"]):  # and what is not offered is refused plainly
            answer = client.post("/demo/api/compare", json={"query": QUERY, "dim": 64, "codec": codec, "k": 5})
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["code"] == "invalid_stages" and f"cannot rank by {codec} at 64 dimensions" in error["message"]


def test_the_wordnet_demo_says_so(model, glosses):
    from matryoshka.indexes.faiss import FunnelIndex

    ids, texts, vectors = glosses
    index = FunnelIndex.from_vectors(vectors, ids, texts, model_name=NAME)
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index,
                     demo_corpus=WORDNET_CORPUS)
    with ServerThread(app) as running:
        info = httpx.get(f"{running.url}/demo/api/info", timeout=60).json()
    assert info["title"] == "Describe a word, find it" and info["examples"] == list(WORDNET_CORPUS.examples)
