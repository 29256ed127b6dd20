"""The demo's model selector: the base and its free rotation side by side, each on its own vectors."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from matryoshka.adapt import fit_rotation
from matryoshka.embeddings.vectors import encode, truncate
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.demo.models import ROTATION_SUFFIX, demo_choices
from support import wordnet_sample

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


# -- the quality chart follows the selector ------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(model, corpus, tmp_path_factory):
    """The base and its rotation with the curves ``matryoshka demo`` measures at start-up (cached beside the index)."""
    from matryoshka.serving.demo.models import choices_quality

    ids, texts, vectors = corpus
    path = tmp_path_factory.mktemp("demo") / "index"
    index = FunnelIndex.from_vectors(vectors, ids, texts, model_name=NAME)
    index.save(path)
    extra_models, extra_indexes = demo_choices(model, NAME, index)
    choices = {NAME: (model, index), **{n: (extra_models[n], extra_indexes[n]) for n in extra_models}}
    quality = choices_quality(choices, path)
    return path, {NAME: model, **extra_models}, index, extra_indexes, quality


def test_every_choice_gets_its_own_curve_cached(measured, model):
    from matryoshka.serving.demo.models import choices_quality
    from matryoshka.serving.quality import quality_cache_path

    path, models, index, extra_indexes, quality = measured
    rotated = NAME + ROTATION_SUFFIX
    assert set(quality["models"]) == {NAME, rotated}
    (task,) = quality["models"][NAME]
    (rotated_task,) = quality["models"][rotated]
    assert task == rotated_task  # the same measurement ...
    assert quality["models"][NAME][task] != quality["models"][rotated][task]  # ... of other vectors
    assert quality["models"][NAME][task]["384"] == pytest.approx(quality["models"][rotated][task]["384"])
    base_cache, rotated_cache = quality_cache_path(path), quality_cache_path(path, "all-MiniLM-L6-v2_rotation")
    assert base_cache.is_file() and rotated_cache.is_file()
    stored = json.loads(rotated_cache.read_text())
    stored["quality"]["models"][rotated][task]["16"] = 0.123456  # mark the file: a later start reads it
    rotated_cache.write_text(json.dumps(stored))
    choices = {NAME: (model, index), rotated: (models[rotated], extra_indexes[rotated])}
    assert choices_quality(choices, path)["models"][rotated][task]["16"] == 0.123456


def test_the_chart_data_follows_the_selected_model(measured):
    _, models, index, extra_indexes, quality = measured
    rotated = NAME + ROTATION_SUFFIX
    app = create_app(ServeConfig(models=list(models), log_requests=False), models=models, index=index,
                     quality=quality, demo_indexes=extra_indexes)
    with ServerThread(app) as running:
        info = httpx.get(f"{running.url}/demo/api/info").json()
    assert info["quality_models"] == {NAME: NAME, rotated: rotated}
    curves = {name: info["quality"][key] for name, key in info["quality_models"].items()}
    assert curves[NAME] != curves[rotated]


def test_a_choice_without_a_curve_is_told_apart(measured):
    """Curves for the base only: the rotation maps to none, so the page says so instead of showing the base's."""
    _, models, index, extra_indexes, quality = measured
    base_only = {"models": {NAME: quality["models"][NAME]}}
    app = create_app(ServeConfig(models=list(models), log_requests=False), models=models, index=index,
                     quality=base_only, demo_indexes=extra_indexes)
    with ServerThread(app) as running:
        info = httpx.get(f"{running.url}/demo/api/info").json()
    assert info["quality_models"] == {NAME: NAME, NAME + ROTATION_SUFFIX: None}


def test_an_also_model_caches_its_curve_beside_its_own_index(measured, model, tmp_path):
    """An ``--also`` model indexed the glosses itself: its curve is kept next to that index, not the base's."""
    from matryoshka.serving.demo.models import choices_quality
    from matryoshka.serving.quality import quality_cache_path

    path, _, index, _, _ = measured
    own = tmp_path / "other-index"
    other = index.mapped(lambda vectors: vectors, "other")  # the same vectors, recorded as another model's
    other.save(own)
    quality = choices_quality({NAME: (model, index), "other": (model, other)}, path, {"other": own})
    assert set(quality["models"]) == {NAME, "other"}
    assert quality_cache_path(own).is_file()
    assert json.loads(quality_cache_path(own).read_text())["model"] == "other"
