"""The demo's model selector: the base and its free rotation side by side, each on its own vectors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from matryoshka.adapt import fit_rotation
from matryoshka.embeddings import encode, truncate
from matryoshka.retrieval import FunnelIndex
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.demo_models import ROTATION_SUFFIX, demo_choices
from test_serving_support import wordnet_sample

torch.set_num_threads(1)
NAME = "all-MiniLM-L6-v2"
QUERY = "a large animal with a long trunk"


@pytest.fixture(scope="module")
def corpus(model):
    ids, texts = wordnet_sample(200)
    return ids, texts, encode(model, texts, batch_size=32)


@pytest.fixture(scope="module")
def server(model, corpus):
    ids, texts, vectors = corpus
    index = FunnelIndex.from_vectors(vectors, ids, texts, model_name=NAME)
    extra_models, extra_indexes = demo_choices(model, NAME, index)
    models = {NAME: model, **extra_models}
    app = create_app(ServeConfig(models=list(models)), models=models, index=index, demo_indexes=extra_indexes)
    with ServerThread(app) as running:
        yield running


def compare(server, **body):
    return httpx.post(f"{server.url}/demo/api/compare", json={"query": QUERY, "k": 10, **body}, timeout=60)


def test_the_selector_lists_the_base_and_its_rotation(server):
    info = httpx.get(f"{server.url}/demo/api/info").json()
    assert info["models"] == [NAME, NAME + ROTATION_SUFFIX]


def test_the_rotation_keeps_full_size_and_changes_the_prefix(server, model, corpus):
    ids, _, vectors = corpus
    base = compare(server, dim=16).json()
    rotated = compare(server, dim=16, model=NAME + ROTATION_SUFFIX).json()
    assert base["model"] == NAME and rotated["model"] == NAME + ROTATION_SUFFIX
    assert [h["id"] for h in rotated["full"]["hits"]] == [h["id"] for h in base["full"]["hits"]]
    rotation = fit_rotation(vectors)
    docs = truncate(rotation.apply(vectors), 16)
    query = truncate(rotation.apply(encode(model, [QUERY])), 16)[0]
    expected = [ids[i] for i in np.argsort(-(docs @ query), kind="stable")[:10]]
    assert [h["id"] for h in rotated["chosen"]["hits"]] == expected
    assert [h["id"] for h in rotated["chosen"]["hits"]] != [h["id"] for h in base["chosen"]["hits"]]


def test_an_unknown_demo_model_is_404(server):
    answer = compare(server, dim=64, model="no-such-model")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
