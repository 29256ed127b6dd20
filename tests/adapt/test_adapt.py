"""Adaptors: the rotation keeps cosines, the learned map improves prefixes, saved models load plainly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matryoshka.adapt import (
    AdaptError,
    Adaptor,
    LearnedConfig,
    adapted_model,
    checked_unit_rows,
    fit_learned,
    fit_rotation,
    nearest_neighbours,
    save_adapted_model,
)
from matryoshka.embeddings.vectors import truncate, unit_rows


def _clustered(rows: int = 400, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Vectors whose variance sits in directions spread over all coordinates (so truncation hurts)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    scales = np.geomspace(4.0, 0.05, dim)
    raw = (rng.normal(size=(rows, dim)) * scales) @ basis.T + 0.3 * rng.normal(size=(1, dim))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def _prefix_error(vectors: np.ndarray, dim: int) -> float:
    full = vectors @ vectors.T
    small = truncate(vectors, dim)
    return float(np.abs(small @ small.T - full).mean())


def test_rotation_preserves_full_size_cosines_and_orders_axes() -> None:
    vectors = _clustered()
    adaptor = fit_rotation(vectors)
    rotated = adaptor.apply(vectors)
    np.testing.assert_allclose(rotated @ rotated.T, vectors @ vectors.T, atol=1e-5)
    np.testing.assert_allclose(adaptor.weight @ adaptor.weight.T, np.eye(vectors.shape[1]), atol=1e-5)
    assert _prefix_error(rotated, 4) < 0.75 * _prefix_error(vectors, 4)


def test_learned_adaptor_lowers_its_loss_and_keeps_the_geometry() -> None:
    vectors = _clustered()
    rotation = fit_rotation(vectors)
    learned = fit_learned(vectors, LearnedConfig(dims=(48, 8, 4), steps=150, batch_size=128, top_k=5, threads=1))
    assert learned.method == "learned" and learned.info["corpus_vectors"] == 400
    assert learned.info["final_loss"] < learned.info["initial_loss"]
    rotated, mapped = rotation.apply(vectors), learned.apply(vectors)
    assert not np.allclose(mapped, rotated, atol=1e-4)
    # on Gaussian data the rotation is already the least-squares optimum: the map may not lose to it
    assert _prefix_error(mapped, 8) <= 1.02 * _prefix_error(rotated, 8)
    assert float(np.abs(mapped @ mapped.T - vectors @ vectors.T).mean()) < 0.01


def test_supervised_pairs_bring_what_queries_match_on_into_the_prefix() -> None:
    # Documents vary most along 24 "topic" axes; what a query shares with its document lives in 8
    # low-variance axes. The rotation puts the topic axes first, so an 8-d prefix misses the match;
    # pairs teach the adaptor to move the shared axes to the front.
    rng = np.random.default_rng(1)
    topic, shared = rng.normal(size=(300, 24)) * 3.0, rng.normal(size=(300, 8)) * 0.5
    docs = np.hstack([topic, shared]).astype(np.float32)
    queries = np.hstack([rng.normal(size=(300, 24)) * 0.3, shared + 0.05 * rng.normal(size=(300, 8))]).astype(np.float32)
    config = LearnedConfig(dims=(32, 8), steps=300, batch_size=64, pair_batch_size=64, top_k=5, learning_rate=1e-2,
                           threads=1)

    def hits(adaptor: Adaptor) -> float:
        q, d = truncate(adaptor.apply(queries[200:]), 8), truncate(adaptor.apply(docs), 8)
        return float(np.mean((q @ d.T).argmax(1) == np.arange(200, 300)))

    unsupervised = fit_learned(docs, config)
    supervised = fit_learned(docs, config, pairs=(queries[:200], docs[:200]))
    assert supervised.info["pairs"] == 200
    assert hits(supervised) > hits(unsupervised) + 0.3


def test_adaptor_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    adaptor = fit_rotation(_clustered(50, 16))
    path = adaptor.save(tmp_path / "a.safetensors")
    loaded = Adaptor.load(path)
    np.testing.assert_array_equal(loaded.weight, adaptor.weight)
    assert loaded.method == "rotation" and loaded.info["corpus_vectors"] == 50
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdaptError, match="safetensors"):
        Adaptor.load(tmp_path / "junk.safetensors")
    with pytest.raises(AdaptError, match="no adaptor file"):
        Adaptor.load(tmp_path / "missing.safetensors")
    with pytest.raises(AdaptError, match="16-d"):
        adaptor.apply(np.ones((2, 8), dtype=np.float32))
    with pytest.raises(AdaptError, match="NaN"):
        adaptor.apply(np.full((2, 16), np.nan, dtype=np.float32))
    with pytest.raises(AdaptError, match="square"):
        Adaptor(weight=np.ones((4, 3)))


def test_checked_unit_rows_are_the_packages_unit_rows_after_the_checks() -> None:
    raw = np.random.default_rng(0).normal(size=(20, 16)) * 3
    np.testing.assert_array_equal(checked_unit_rows(raw), unit_rows(raw))
    assert checked_unit_rows(raw).dtype == np.float32
    with pytest.raises(AdaptError, match="corpus vectors hold an all-zero row"):
        checked_unit_rows(np.vstack([raw, np.zeros((1, 16))]), "corpus vectors")
    with pytest.raises(AdaptError, match="non-empty 2-d array"):
        checked_unit_rows(np.zeros((0, 16)))


def test_nearest_neighbours_skip_self() -> None:
    vectors = _clustered(30, 8)
    nbrs = nearest_neighbours(vectors, 3, block=7)
    assert nbrs.shape == (30, 3)
    assert not (nbrs == np.arange(30)[:, None]).any()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    assert set(nbrs[0]) == set(np.argsort(-sims[0])[:3])


def test_config_is_validated() -> None:
    with pytest.raises(AdaptError, match="dims"):
        fit_learned(_clustered(20, 8), LearnedConfig(dims=(16,)))
    with pytest.raises(AdaptError, match="weights"):
        fit_learned(_clustered(20, 8), LearnedConfig(dims=(8, 4), weights=(1.0,)))


def test_saved_adapted_model_loads_in_plain_sentence_transformers(tmp_path: Path, model) -> None:
    texts = ["a cat sits on the mat", "stock markets fell sharply", "the kitten sleeps", "bonds and equities",
             "a dog runs in the park", "interest rates rise again"]
    base_vectors = model.encode(texts, convert_to_numpy=True)
    adaptor = fit_learned(base_vectors, LearnedConfig(dims=(384, 64), steps=5, batch_size=6, top_k=2, threads=1))
    out = save_adapted_model(model, adaptor, tmp_path / "adapted")
    assert (out / "adaptor.safetensors").is_file()
    expected = adaptor.apply(base_vectors)
    np.testing.assert_allclose(adapted_model(model, adaptor).encode(texts), expected, atol=1e-5)
    script = (
        "import sys, json, numpy as np\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(sys.argv[1], device='cpu')\n"
        "print(json.dumps(m.encode(json.loads(sys.argv[2])).tolist()))\n"
        "assert 'matryoshka' not in sys.modules\n"
    )
    import json

    result = subprocess.run([sys.executable, "-c", script, str(out), json.dumps(texts)], capture_output=True,
                            text=True, check=True)
    plain = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(plain, expected, atol=1e-5)


def test_scored_pairs_teach_the_prefix_what_the_scores_rank() -> None:
    # Both texts of a pair share a topic (high variance); how similar they are is graded along 8 low-variance
    # axes, which an unsupervised 8-d prefix leaves out.
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    topic, shared = rng.normal(size=(400, 24)) * 3.0, rng.normal(size=(400, 8))
    noise = rng.uniform(0, 1.5, size=(400, 1))
    a = np.hstack([topic, shared]).astype(np.float32)
    b = np.hstack([topic + 0.3 * rng.normal(size=(400, 24)), shared + noise * rng.normal(size=(400, 8))]).astype(np.float32)
    scores = -noise[:, 0]
    config = LearnedConfig(dims=(32, 8), steps=300, batch_size=64, pair_batch_size=64, top_k=5, learning_rate=1e-2,
                           threads=1)

    def spearman_at_8(adaptor: Adaptor) -> float:
        x, y = truncate(adaptor.apply(a[300:]), 8), truncate(adaptor.apply(b[300:]), 8)
        return float(spearmanr((x * y).sum(1), scores[300:]).statistic)

    corpus = np.vstack([a, b])
    unsupervised = fit_learned(corpus, config)
    supervised = fit_learned(corpus, config, scored_pairs=(a[:300], b[:300], scores[:300]))
    assert spearman_at_8(supervised) > spearman_at_8(unsupervised) + 0.5
    with pytest.raises(AdaptError, match="scored_pairs"):
        fit_learned(corpus, config, scored_pairs=(a[:10], b[:9], scores[:10]))


def test_masked_negatives_are_exactly_the_querys_other_judged_documents() -> None:
    import torch

    from matryoshka.adapt.learned import PairSet, _RankingTerm

    # query 0 judges corpus rows 1 and 2, query 1 judges row 3; the corpus batch holds rows 2, 3 and 4
    pairs = PairSet(np.eye(3, 4, dtype=np.float32), np.ones((3, 4), np.float32), groups=np.array([0, 0, 1]),
                    doc_rows=np.array([1, 2, 3])).checked(4)
    term = _RankingTerm(pairs, corpus_size=10, mask=True)
    generator = torch.Generator().manual_seed(0)
    rows = torch.tensor([2, 3, 4])
    for _ in range(5):
        queries, docs, mask = term.batch(3, torch.ones((3, 4)), rows, generator)
        chosen = queries.argmax(dim=1)  # each pair's query is a distinct unit vector
        groups, own_rows = term.groups[chosen], term.doc_rows[chosen]
        for i in range(3):
            judged = {1, 2} if groups[i] == 0 else {3}
            expected_pairs = [j != i and (groups[j] == groups[i] or int(own_rows[j]) in judged) for j in range(3)]
            expected_corpus = [int(r) in judged for r in rows]
            assert mask[i].tolist() == expected_pairs + expected_corpus
    unmasked = _RankingTerm(pairs, corpus_size=10, mask=False).batch(3, torch.ones((3, 4)), rows, generator)[2]
    assert not unmasked.any()
