"""The backends behind the same CLI and HTTP API: load a corpus, search it, filter it, serve it."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import torch
from typer.testing import CliRunner

from matryoshka.cli.app import app
from matryoshka.embeddings.vectors import encode
from matryoshka.indexes import backend_kind, open_index
from matryoshka.serving import ServeConfig, ServerThread, create_app

torch.set_num_threads(1)
runner = CliRunner()
NAME = "all-MiniLM-L6-v2"
DOCS = [
    ("cat", "A cat sleeps on the warm windowsill.", "animals"),
    ("dog", "The dog barks at the postman every morning.", "animals"),
    ("stock", "Stock markets fell sharply after the announcement.", "finance"),
    ("bank", "The central bank raised interest rates again.", "finance"),
    ("rain", "Heavy rain flooded the streets of the old town.", "weather"),
    ("sun", "A sunny afternoon with a light breeze from the sea.", "weather"),
]


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"_id": i, "text": t, "metadata": {"topic": topic}}) for i, t, topic in DOCS]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(params=["faiss", "postgresql", "qdrant"])
def url(request, tmp_path):
    if request.param == "faiss":
        return f"faiss://{tmp_path / 'index'}"
    if request.param == "postgresql":
        base = request.getfixturevalue("postgres_url")
        return f"{base}{'&' if '?' in base else '?'}table=cli_{uuid.uuid4().hex[:8]}"
    return f"qdrant+local://{tmp_path / 'qdrant'}?collection=cli"


def test_backend_kind_from_url():
    assert backend_kind("runs/index") == "faiss"
    assert backend_kind("faiss:///tmp/x") == "faiss"
    assert backend_kind("postgresql://u@h/db") == "postgresql"
    assert backend_kind("qdrant://localhost:6333/docs") == "qdrant"
    assert backend_kind("qdrant+local:///tmp/q?collection=a") == "qdrant"
    with pytest.raises(ValueError, match="unknown index scheme"):
        backend_kind("mysql://h/db")


def test_encode_loads_a_corpus_into_a_backend_and_resumes(url, corpus_file, model):
    first = runner.invoke(app, ["encode", "--corpus", str(corpus_file), "--index", url, "--write-batch", "4"])
    assert first.exit_code == 0, first.output
    assert "wrote 6 of 6 documents (0 already stored)" in first.output
    again = runner.invoke(app, ["encode", "--corpus", str(corpus_file), "--index", url])
    assert again.exit_code == 0, again.output
    assert "wrote 0 of 6 documents (6 already stored)" in again.output

    store = open_index(url, create=False)
    try:
        assert len(store) == 6 and store.model_name == NAME
        query = encode(model, ["interest rates and inflation"])
        hits = store.search(query, k=2)[0]
        assert hits[0].id == "bank"
        filtered = store.search(query, k=2, filter={"topic": "weather"})[0]
        assert {h.id for h in filtered} == {"rain", "sun"}
    finally:
        store.close()

    found = runner.invoke(
        app, ["index", "search", url, "a pet animal", "--k", "2", "--json", "--filter", '{"topic": "animals"}']
    )
    assert found.exit_code == 0, found.output
    row = json.loads(found.stdout.strip().splitlines()[-1])
    assert {h["id"] for h in row["hits"]} == {"cat", "dog"}


def test_encode_refuses_half_a_load_command(corpus_file):
    result = runner.invoke(app, ["encode", "--corpus", str(corpus_file)])
    assert result.exit_code == 1 and "--index" in result.output
    result = runner.invoke(app, ["encode", "--corpus", str(corpus_file), "--index", "mysql://x/y"])
    assert result.exit_code == 1 and "unknown index scheme" in result.output


def test_search_api_on_a_database_backend(postgres_url, model):
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}table=api_{uuid.uuid4().hex[:8]}"
    store = open_index(url, dim=384, model_name=NAME)
    texts = [t for _, t, _ in DOCS]
    store.upsert([i for i, _, _ in DOCS], encode(model, texts), texts, [{"topic": t} for _, _, t in DOCS])
    store.close()
    served = create_app(ServeConfig(models=[NAME], index_path=url), models={NAME: model})
    with ServerThread(served) as server:
        response = httpx.post(f"{server.url}/v1/search", json={"query": "rates at the central bank", "k": 3}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["hits"][0]["id"] == "bank"
        funnel = {"query": "a dog", "k": 2, "stages": [{"dim": 64, "codec": "float32", "keep": 6},
                                                       {"dim": "full", "codec": "float32", "keep": 2}]}
        response = httpx.post(f"{server.url}/v1/search", json=funnel, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["hits"][0]["id"] == "dog"
        filtered = {"query": "a dog", "k": 2, "filter": {"topic": ["finance", "weather"]}}
        hits = httpx.post(f"{server.url}/v1/search", json=filtered, timeout=60).json()["hits"]
        assert {h["id"] for h in hits} <= {"stock", "bank", "rain", "sun"} and len(hits) == 2
        bad = httpx.post(f"{server.url}/v1/search", json={"query": "x", "filter": {"topic": {"a": 1}}}, timeout=60)
        assert bad.status_code == 400
        three = {"query": "x", "stages": [{"dim": 128, "codec": "float32", "keep": 6},
                                          {"dim": 64, "codec": "float32", "keep": 4},
                                          {"dim": "full", "codec": "float32", "keep": 2}]}
        refused = httpx.post(f"{server.url}/v1/search", json=three, timeout=60)
        assert refused.status_code == 400 and "stage" in refused.json()["error"]["message"]
