"""One name per model: what an index records, what the server matches, what the demo's cache is keyed by."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.errors import ModelError
from matryoshka.indexes.faiss.index import FunnelIndex
from matryoshka.models.identity import model_fingerprint, model_label, short_name
from matryoshka.models.loading import DEFAULT_MODEL, packaged_model_path
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.demo.index import demo_cache_path
from matryoshka.serving.startup import StartupError, check_index_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """A copy of the packaged model in its own directory: the same weights under another identity."""
    path = tmp_path_factory.mktemp("models") / "second"
    shutil.copytree(packaged_model_path(), path)
    return path


def test_one_label_per_model(second_model, tmp_path, monkeypatch):
    assert model_label(None) == model_label("default") == model_label(DEFAULT_MODEL) == DEFAULT_MODEL
    assert model_label(str(packaged_model_path())) == DEFAULT_MODEL
    assert model_label(str(second_model)) == str(second_model.resolve())
    monkeypatch.chdir(second_model.parent)
    assert model_label("second") == model_label("./second") == str(second_model.resolve())  # relative or not
    assert model_label("org/hub-model") == "org/hub-model"
    assert short_name(model_label(str(second_model))) == "second"


def test_the_server_searches_with_the_model_that_built_the_index(model, second_model):
    """Two models served; the index was built with the second: queries are encoded with the second."""
    label = model_label(str(second_model))
    texts = ["a cat on a mat", "stock markets fell", "heavy rain in town"]
    index = FunnelIndex.from_vectors(encode(model, texts), ["cat", "stock", "rain"], texts, model_name=label)
    config = ServeConfig(models=[DEFAULT_MODEL, f"second={second_model}"], log_requests=False)
    assert check_index_model(index, config) == "second"
    from matryoshka.models.loading import load_model

    models = {DEFAULT_MODEL: model, "second": load_model(str(second_model), device="cpu")}
    app = create_app(config, models=models, index=index)
    assert app.state.serving.search_model.name == "second"
    with ServerThread(app) as server:
        answer = httpx.post(server.url + "/v1/search", json={"query": "a cat", "k": 1}, timeout=60).json()
        assert answer["model"] == "second" and answer["hits"][0]["id"] == "cat"
        refused = httpx.post(server.url + "/v1/search", json={"query": "a cat", "model": DEFAULT_MODEL}, timeout=60)
        assert refused.status_code == 400 and "second" in refused.json()["error"]["message"]


def test_an_index_of_a_model_not_served_is_refused(model):
    index = FunnelIndex.from_vectors(np.eye(3, 384, dtype=np.float32), ["a", "b", "c"], model_name="someone/else")
    with pytest.raises(StartupError, match="someone/else.*not served"):
        check_index_model(index, ServeConfig())
    with pytest.raises(ModelError, match="not served"):
        create_app(ServeConfig(log_requests=False), models={DEFAULT_MODEL: model}, index=index)
    unnamed = FunnelIndex.from_vectors(np.eye(3, 384, dtype=np.float32), ["a", "b", "c"])
    with pytest.raises(StartupError, match="records no model"):
        check_index_model(unnamed, ServeConfig(models=[DEFAULT_MODEL, "other=org/other"]))


def test_the_demo_cache_key_is_the_full_identity(second_model, tmp_path):
    twin = tmp_path / "elsewhere" / "second"
    shutil.copytree(second_model, twin)
    a, b = demo_cache_path(tmp_path, str(second_model), 100), demo_cache_path(tmp_path, str(twin), 100)
    assert a != b and a.name.startswith("second-") and b.name.startswith("second-")  # same name, other model
    before = model_fingerprint(model_label(str(twin)))
    (twin / "README.md").write_text("retrained\n")
    assert model_fingerprint(model_label(str(twin))) != before  # retrained in place: a new cache
    assert demo_cache_path(tmp_path, None, 100) == demo_cache_path(tmp_path, DEFAULT_MODEL, 100)


def test_an_export_cache_beside_the_model_does_not_change_its_fingerprints(tmp_path) -> None:
    # ONNX/OpenVINO exports are cached in <model>/exports; they are copies of the weights, so vectors
    # cached under the model's fingerprint stay valid.
    from matryoshka.embeddings.cache import cache_key as cache_fingerprint

    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    before = (model_fingerprint(str(path)), cache_fingerprint(path))
    (path / "exports" / "onnx").mkdir(parents=True)
    (path / "exports" / "onnx" / "config.json").write_text("{}")
    assert (model_fingerprint(str(path)), cache_fingerprint(path)) == before
    (path / "model.safetensors").write_bytes(b"retrained weights")
    assert model_fingerprint(str(path)) != before[0] and cache_fingerprint(path) != before[1]
