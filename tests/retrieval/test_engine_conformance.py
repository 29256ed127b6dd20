"""One conformance suite run against every backend: same real corpus, same queries, same answers.

The corpus is 400 STS-B test sentences embedded with the packaged all-MiniLM-L6-v2; the queries are
their paired sentences. Every backend must return the brute-force top 10 (ids and order) for exact
search and for funnels whose shortlist keeps the whole corpus, and must agree on add, delete and filter. Two documents whose cosines differ by less than 1e-5 may
swap places (engines sum in different orders); any other difference fails.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from matryoshka.indexes import open_index
from matryoshka.retrieval import Stage, parse_stages

CORPUS_SIZE = 400
K = 10
BACKENDS = ["faiss", "postgresql", "qdrant"]


@pytest.fixture(scope="module")
def corpus(model):
    from matryoshka.data import load_sts
    from matryoshka.embeddings.vectors import encode

    pairs = load_sts("test")
    seen: dict[str, str] = {}
    for pair in pairs:
        seen.setdefault(pair.sentence1, pair.sentence2)
        if len(seen) == CORPUS_SIZE:
            break
    texts = list(seen)
    queries = list(seen.values())[:25]
    vectors = encode(model, texts + queries, batch_size=64, show_progress_bar=False)
    ids = [f"stsb-{i:04d}" for i in range(len(texts))]
    metadata = [{"half": "even" if i % 2 == 0 else "odd", "bucket": i % 5} for i in range(len(texts))]
    return ids, texts, vectors[: len(texts)], metadata, vectors[len(texts) :]


@pytest.fixture(params=BACKENDS)
def opened(request, tmp_path, corpus):
    """(backend, url) loaded with the corpus."""
    ids, texts, vectors, metadata, _ = corpus
    if request.param == "faiss":
        url = f"faiss://{tmp_path / 'index'}"
    elif request.param == "postgresql":
        base = request.getfixturevalue("postgres_url")
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}table=conf_{uuid.uuid4().hex[:8]}"
    else:
        url = f"qdrant+local://{tmp_path / 'qdrant'}?collection=conformance"
    store = open_index(url, dim=vectors.shape[1], model_name="all-MiniLM-L6-v2")
    store.upsert(ids, vectors, texts, metadata)
    yield store, url
    store.close()


@pytest.fixture
def backend(opened):
    return opened[0]


def brute_force(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int = K) -> list[list[str]]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


def hit_ids(results) -> list[list[str]]:
    return [[hit.id for hit in row] for row in results]


TIE = 1e-5  # engines compute cosines in different float orders; closer scores may swap


def assert_same_ranking(got: list[list[str]], expected: list[list[str]], corpus) -> None:
    """Identical ids in identical order, except a swap of two documents whose cosines differ by < TIE."""
    ids, _, vectors, _, queries = corpus
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row = {doc_id: i for i, doc_id in enumerate(ids)}
    for q, (got_row, want_row) in enumerate(zip(got, expected)):
        assert len(got_row) == len(want_row), (q, got_row, want_row)
        query = queries[q] / np.linalg.norm(queries[q])
        for position, (a, b) in enumerate(zip(got_row, want_row)):
            if a != b:
                gap = abs(float(unit[row[a]] @ query) - float(unit[row[b]] @ query))
                assert gap < TIE, f"query {q}, rank {position + 1}: {a} instead of {b} (cosine gap {gap:.2e})"


def test_exact_search_equals_brute_force(backend, corpus):
    ids, texts, vectors, _, queries = corpus
    results = backend.search(queries, k=K)
    assert_same_ranking(hit_ids(results), brute_force(vectors, ids, queries), corpus)
    first = results[0][0]
    assert first.text == texts[ids.index(first.id)]
    assert first.score == pytest.approx(
        float(vectors[ids.index(first.id)] @ queries[0] / np.linalg.norm(queries[0]) / np.linalg.norm(vectors[ids.index(first.id)])),
        abs=1e-4,
    )
    assert len(backend) == CORPUS_SIZE


@pytest.mark.parametrize("spec", ["64:float32:{n},full:float32:10", "128:binary:{n},full:float32:10"])
def test_funnel_that_keeps_everything_equals_exact(backend, corpus, spec):
    ids, _, vectors, _, queries = corpus
    stages = parse_stages(spec.format(n=CORPUS_SIZE))
    assert_same_ranking(hit_ids(backend.search(queries, k=K, stages=stages)), brute_force(vectors, ids, queries), corpus)


def test_short_funnel_keeps_most_of_exact(backend, corpus):
    ids, _, vectors, _, queries = corpus
    funnel = hit_ids(backend.search(queries, k=K, stages=[Stage(64, "float32", 100), Stage(0, "float32", K)]))
    exact = brute_force(vectors, ids, queries)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(funnel, exact)])
    assert recall >= 0.9


def test_add_and_replace(backend, corpus):
    ids, _, vectors, _, queries = corpus
    target = queries[3]
    backend.upsert(["new-doc"], target[None, :], ["a query turned document"], [{"half": "new"}])
    top = backend.search(target[None, :], k=1)[0][0]
    assert (top.id, top.text) == ("new-doc", "a query turned document")
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert len(backend) == CORPUS_SIZE + 1
    # Replacing an existing id moves it instead of duplicating it.
    backend.upsert([ids[0]], target[None, :] * 3.0, ["moved"], [None])
    top_two = backend.search(target[None, :], k=2)[0]
    assert {hit.id for hit in top_two} == {"new-doc", ids[0]}
    assert len(backend) == CORPUS_SIZE + 1
    assert backend.existing(["new-doc", ids[0], "missing"]) == {"new-doc", ids[0]}


def test_delete(backend, corpus):
    ids, _, vectors, _, queries = corpus
    exact = brute_force(vectors, ids, queries[:1])[0]
    assert backend.delete([exact[0], exact[1], "not-there"]) == 2
    after = hit_ids(backend.search(queries[:1], k=K))[0]
    keep = [i for i, doc_id in enumerate(ids) if doc_id not in exact[:2]]
    assert_same_ranking([after], brute_force(vectors[keep], [ids[i] for i in keep], queries[:1]), corpus)
    assert len(backend) == CORPUS_SIZE - 2
    assert backend.existing(exact[:3]) == {exact[2]}


@pytest.mark.parametrize("stages", [None, "64:float32:{n},full:float32:10"])
@pytest.mark.parametrize("wanted", [{"half": "odd"}, {"bucket": [1, 3]}, {"half": "even", "bucket": 4}])
def test_filter(backend, corpus, wanted, stages):
    ids, _, vectors, metadata, queries = corpus
    plan = parse_stages(stages.format(n=CORPUS_SIZE)) if stages else None
    allowed = [
        i for i, meta in enumerate(metadata)
        if all(meta[key] in (value if isinstance(value, list) else [value]) for key, value in wanted.items())
    ]
    expected = brute_force(vectors[allowed], [ids[i] for i in allowed], queries)
    assert_same_ranking(hit_ids(backend.search(queries, k=K, stages=plan, filter=wanted)), expected, corpus)


def test_reopen_reads_back_the_same_data(opened, corpus):
    backend, url = opened
    _, _, vectors, _, queries = corpus
    before = hit_ids(backend.search(queries[:5], k=K))
    backend.close()
    again = open_index(url)
    try:
        assert again.dim == vectors.shape[1]
        assert again.model_name == "all-MiniLM-L6-v2"
        assert len(again) == CORPUS_SIZE
        assert_same_ranking(hit_ids(again.search(queries[:5], k=K)), before, corpus)
        with pytest.raises(ValueError, match="384|dim"):
            open_index(url, dim=128)
    finally:
        again.close()


def test_replace_all(opened, corpus):
    """Every engine swaps in a whole new set of documents: the old ones are gone, the new ones searched
    exactly, the same after reopening; a refused batch changes nothing."""
    backend, url = opened
    ids, texts, vectors, metadata, queries = corpus
    keep = list(range(0, CORPUS_SIZE, 2))  # half the corpus under new ids, texts and metadata
    new_ids = [f"v2-{ids[i]}" for i in keep]
    new_vectors = vectors[keep]
    new_texts = [f"v2 {texts[i]}" for i in keep]
    new_meta = [{"half": "new", "bucket": metadata[i]["bucket"]} for i in keep]
    bad = new_vectors.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        backend.replace_all(new_ids, bad, new_texts, new_meta)
    assert len(backend) == CORPUS_SIZE and backend.existing(ids[:2]) == set(ids[:2])

    backend.replace_all(new_ids, new_vectors, new_texts, new_meta)
    assert len(backend) == len(new_ids)
    assert backend.existing([ids[0], ids[1], new_ids[0]]) == {new_ids[0]}
    expected = brute_force(new_vectors, new_ids, queries)
    renamed = {f"v2-{doc_id}": doc_id for doc_id in ids}  # assert_same_ranking measures gaps by the old ids

    def as_old(rows: list[list[str]]) -> list[list[str]]:
        return [[renamed[doc_id] for doc_id in row] for row in rows]

    assert_same_ranking(as_old(hit_ids(backend.search(queries, k=K))), as_old(expected), corpus)
    assert_same_ranking(as_old(hit_ids(backend.search(queries, k=K, filter={"half": "new", "bucket": [1, 3]}))),
                        as_old(brute_force(new_vectors[[i for i, m in enumerate(new_meta) if m["bucket"] in (1, 3)]],
                                           [d for d, m in zip(new_ids, new_meta) if m["bucket"] in (1, 3)], queries)),
                        corpus)
    top = backend.search(queries[:1], k=1)[0][0]
    assert top.text == new_texts[new_ids.index(top.id)]
    backend.close()
    again = open_index(url, create=False)
    try:
        assert (len(again), again.model_name) == (len(new_ids), "all-MiniLM-L6-v2")
        assert_same_ranking(as_old(hit_ids(again.search(queries, k=K))), as_old(expected), corpus)
    finally:
        again.close()
