"""Top-layer tuning: cached inputs replay the model, training moves only the last layer and helps prefixes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from matryoshka.data import load_sts
from matryoshka.errors import InputError
from matryoshka.evaluation.sts import sentence_rows
from matryoshka.models.layers import layer_list
from matryoshka.training.top_layer import TopLayerConfig, cache_layer_inputs, tune_top_layer


@pytest.fixture(scope="module")
def sts_pairs(data_dir):
    """48 STS-B train pairs as texts and (left, right) indices."""
    texts, left, right = sentence_rows(load_sts("train")[:48])
    return texts, np.stack([left, right], axis=1)


@pytest.fixture(scope="module")
def cached(model, sts_pairs):
    return cache_layer_inputs(model, sts_pairs[0], batch_size=16)


def _prefix_gap(model, texts, pairs, teacher, dim: int) -> float:
    """Mean |cosine at ``dim`` - untouched full-size cosine| over ``pairs``."""
    vectors = torch.from_numpy(model.encode(texts, convert_to_numpy=True, normalize_embeddings=False))
    small = torch.nn.functional.normalize(vectors[:, :dim], dim=-1)
    cos = (small[pairs[:, 0]] * small[pairs[:, 1]]).sum(-1)
    target = (teacher[pairs[:, 0]] * teacher[pairs[:, 1]]).sum(-1)
    return float((cos - target).abs().mean())


def test_cached_vectors_are_the_models_own(model, sts_pairs, cached) -> None:
    texts, _ = sts_pairs
    assert len(cached) == len(texts)
    assert all(state.shape[1] == 384 and state.shape[0] >= 3 for state in cached.states)
    own = model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(cached.vectors.numpy(), own, atol=1e-5)


def test_tuning_moves_only_the_last_layer_and_helps_the_trained_prefix(model, sts_pairs, cached, tmp_path) -> None:
    texts, pairs = sts_pairs
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = TopLayerConfig(max_steps=30, batch_size=16, weights=(1, 1, 1, 1, 8, 1))
    losses: list[float] = []
    tuned = tune_top_layer(model, cached, pairs, config, progress=lambda step, total, loss: losses.append(loss))
    assert len(losses) == 30
    # the input model is left as it was; in the copy only the last layer's parameters changed
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    last = len(layer_list(tuned)) - 1
    changed = {name for name, p in tuned.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(f".layer.{last}." in name for name in changed)
    gap_before = _prefix_gap(model, texts, pairs, cached.vectors, 32)
    gap_after = _prefix_gap(tuned, texts, pairs, cached.vectors, 32)
    assert gap_after < 0.9 * gap_before
    # an ordinary sentence-transformers model: saved, loaded without matryoshka, same vectors
    tuned.save(str(tmp_path / "tuned"))
    code = ("import sys, numpy as np; from sentence_transformers import SentenceTransformer; "
            "m = SentenceTransformer(sys.argv[1], device='cpu'); np.save(sys.argv[2], m.encode(sys.argv[3:]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tuned"), str(tmp_path / "v.npy"), *texts[:4]],
                   check=True)
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), tuned.encode(texts[:4]), atol=1e-5)


def test_the_standard_twin_scores_full_size_only(model, sts_pairs, cached) -> None:
    _, pairs = sts_pairs
    assert TopLayerConfig(matryoshka=False).scored(384) == [(1.0, 384)]
    assert TopLayerConfig().scored(384)[-2] == (8, 32)
    tuned = tune_top_layer(model, cached, pairs, TopLayerConfig(max_steps=2, batch_size=8, matryoshka=False))
    assert tuned is not model


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dims": (128, 64)}, "include the full size 384"),
    ({"weights": (1, 2)}, "2 weights for 6 dims"),
    ({"batch_size": 1}, "at least 2"),
    ({"learning_rate": 0.0}, "positive"),
    ({"cosent_weight": 0.0, "inbatch_weight": 0.0}, "not both 0"),
])
def test_bad_settings_are_refused(model, sts_pairs, cached, overrides, message) -> None:
    _, pairs = sts_pairs
    with pytest.raises(InputError, match=message):
        tune_top_layer(model, cached, pairs, TopLayerConfig(**overrides))


def test_bad_pairs_are_refused(model, cached) -> None:
    with pytest.raises(InputError, match="pair indices"):
        tune_top_layer(model, cached, [(0, 1), (2, len(cached))])
    with pytest.raises(InputError, match="at least 2 rows"):
        tune_top_layer(model, cached, [(0, 1)])
    with pytest.raises(InputError, match="no texts"):
        cache_layer_inputs(model, [])
