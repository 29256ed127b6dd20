"""Qdrant backend in qdrant-client's local mode (no server here): layout, CRUD, exact and funnel search, URLs."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient, models

from matryoshka.errors import EngineError
from matryoshka.indexes.qdrant import (
    DEFAULT_COLLECTION,
    QdrantIndex,
    parse_url,
    point_id,
)
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import FULL, Stage, parse_stages

DIM = 32
COUNT = 300


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    """300 random unit vectors (dim 32), their ids, and 8 queries near some of them."""
    rng = np.random.default_rng(7)
    vectors = _unit(rng.normal(size=(COUNT, DIM)))
    queries = _unit(vectors[:8] + 0.3 * rng.normal(size=(8, DIM)).astype(np.float32))
    return [f"doc-{i}" for i in range(COUNT)], vectors, queries


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[list[int]]:
    rows = np.arange(len(vectors)) if rows is None else rows
    scores = queries @ vectors[rows].T
    return [[int(rows[j]) for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def _meta(i: int) -> dict:
    return {"group": i % 3, "lang": "en" if i % 2 else "de", "weight": i / 4, "flag": i % 5 == 0, "a.b": i % 2}


@pytest.fixture
def loaded(tmp_path: Path, data):
    ids, vectors, _ = data
    backend = QdrantIndex.open(
        f"qdrant+local://{tmp_path}/q?collection=docs", dim=DIM, model_name="test-model", prefix_dims=(8, 16)
    )
    backend.upsert(ids, vectors, texts=[f"text {i}" for i in range(COUNT)], metadata=[_meta(i) for i in range(COUNT)])
    yield backend
    backend.close()


def test_create_and_reopen_reads_layout(tmp_path: Path) -> None:
    url = f"qdrant+local://{tmp_path}/store?collection=c1"
    backend = QdrantIndex.open(url, dim=DIM, model_name="m1", prefix_dims=(16, 8, 16, 64))
    assert isinstance(backend, VectorIndex)
    assert (backend.dim, backend.model_name, backend.prefix_dims, backend.binary) == (DIM, "m1", (8, 16), True)
    assert backend.url == url and len(backend) == 0
    vectors = backend.client.get_collection("c1").config.params.vectors
    assert set(vectors) == {"full", "prefix_8", "prefix_16"}  # 64 >= dim is served by `full`
    assert isinstance(vectors["prefix_8"].quantization_config, models.BinaryQuantization)
    backend.close()

    again = QdrantIndex.open(url)  # no dim: read back, with the model name and prefixes
    assert (again.dim, again.model_name, again.prefix_dims, again.binary) == (DIM, "m1", (8, 16), True)
    again.close()
    with pytest.raises(ValueError, match="32-dim"):
        QdrantIndex.open(url, dim=DIM * 2)
    with pytest.raises(ValueError, match="m1"):
        QdrantIndex.open(url, model_name="other")
    same = QdrantIndex.open(url, dim=DIM, model_name="m1")
    same.close()


def test_missing_collection(tmp_path: Path) -> None:
    url = f"qdrant+local://{tmp_path}/store"
    with pytest.raises(ValueError, match="pass dim"):
        QdrantIndex.open(url)
    with pytest.raises(EngineError, match="create=True"):
        QdrantIndex.open(url, dim=DIM, create=False)
    backend = QdrantIndex.open(url, dim=DIM, binary=False)
    assert backend.collection == DEFAULT_COLLECTION and backend.prefix_dims == () and not backend.binary
    backend.close()


def test_model_name_recorded_when_first_known(tmp_path: Path) -> None:
    url = f"qdrant+local://{tmp_path}/store"
    QdrantIndex.open(url, dim=DIM).close()
    QdrantIndex.open(url, model_name="late").close()
    backend = QdrantIndex.open(url)
    assert backend.model_name == "late"
    backend.close()


def test_foreign_collection_refused(tmp_path: Path) -> None:
    client = QdrantClient(path=str(tmp_path / "store"))
    client.create_collection("plain", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.close()
    with pytest.raises(ValueError, match="not a matryoshka collection"):
        QdrantIndex.open(f"qdrant+local://{tmp_path}/store?collection=plain")


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # qdrant-client leaves its lock file open when locking fails
def test_directory_held_elsewhere_is_a_backend_error(tmp_path: Path) -> None:
    other = QdrantClient(path=str(tmp_path / "store"))  # stands in for another process
    with pytest.raises(EngineError, match="already accessed"):
        QdrantIndex.open(f"qdrant+local://{tmp_path}/store", dim=DIM)
    other.close()
    QdrantIndex.open(f"qdrant+local://{tmp_path}/store", dim=DIM).close()


def test_backends_in_one_process_share_a_directory(tmp_path: Path) -> None:
    first = QdrantIndex.open(f"qdrant+local://{tmp_path}/store?collection=a", dim=16, prefix_dims=(8,))
    second = QdrantIndex.open(f"qdrant+local:{tmp_path}/./store?collection=b", dim=8, prefix_dims=())
    same = QdrantIndex.open(f"qdrant+local://{tmp_path}/store?collection=a")
    assert first.client is second.client is same.client
    first.upsert(["x"], np.ones((1, 16)))
    second.upsert(["y", "z"], np.eye(8)[:2])
    first.close()
    first.close()  # closing twice is harmless
    with pytest.raises(EngineError, match="closed"):
        len(first)
    assert (len(same), len(second)) == (1, 2)  # the shared client stays open for the others
    with pytest.raises(ValueError, match="16-dim"):
        QdrantIndex.open(f"qdrant+local://{tmp_path}/store?collection=a", dim=32)
    same.close()
    second.close()
    again = QdrantIndex.open(f"qdrant+local://{tmp_path}/store?collection=b")
    assert again.client is not first.client and len(again) == 2
    again.close()


def test_upsert_existing_delete(loaded: QdrantIndex, data) -> None:
    _, vectors, _ = data
    assert len(loaded) == COUNT
    assert loaded.existing(["doc-1", "doc-2", "nope", "doc-1"]) == {"doc-1", "doc-2"}
    assert loaded.delete(["doc-1", "doc-2", "nope"]) == 2
    assert loaded.delete(["doc-1"]) == 0
    assert len(loaded) == COUNT - 2 and loaded.existing(["doc-1", "doc-3"]) == {"doc-3"}
    hits = loaded.search(vectors[1:2], k=3)[0]
    assert "doc-1" not in [h.id for h in hits]


def test_upsert_replaces(loaded: QdrantIndex, data) -> None:
    _, vectors, _ = data
    # doc-5 takes doc-9's vector (at any norm), a new text and new metadata; the count stays
    loaded.upsert(["doc-5"], 3 * vectors[9:10], texts=["replaced"], metadata=[{"lang": "fr"}])
    assert len(loaded) == COUNT
    top = loaded.search(vectors[9:10], k=2)[0]
    assert {h.id for h in top} == {"doc-5", "doc-9"}
    assert all(h.score == pytest.approx(1.0, abs=1e-5) for h in top)
    assert [h.text for h in top if h.id == "doc-5"] == ["replaced"]
    assert [h.id for h in loaded.search(vectors[9:10], k=5, filter={"lang": "fr"})[0]] == ["doc-5"]
    loaded.upsert(["doc-5"], vectors[9:10])  # no text or metadata: both are gone
    assert loaded.search(vectors[9:10], k=5, filter={"lang": "fr"})[0] == []
    assert [h.text for h in loaded.search(vectors[9:10], k=2)[0] if h.id == "doc-5"] == [None]


def test_exact_search_equals_brute_force(loaded: QdrantIndex, data) -> None:
    ids, vectors, queries = data
    hits = loaded.search(queries, k=10)
    expected = _brute_force(vectors, queries, 10)
    assert [[h.id for h in row] for row in hits] == [[ids[j] for j in row] for row in expected]
    scores = queries @ vectors.T
    for q, row in enumerate(hits):
        assert [h.score for h in row] == pytest.approx([float(scores[q, int(h.id[4:])]) for h in row], abs=1e-5)
        assert [h.text for h in row] == [f"text {h.id[4:]}" for h in row]


def test_funnel_keep_all_equals_exact(loaded: QdrantIndex, data) -> None:
    _, _, queries = data
    exact = [[h.id for h in row] for row in loaded.search(queries, k=10)]
    for spec in ("8:float32:300", "16:binary:300", "full:binary:300", "16:float16:1000"):
        stages = parse_stages(f"{spec},full:float32:10")
        assert [[h.id for h in row] for row in loaded.search(queries, k=10, stages=stages)] == exact, spec


def test_small_keep_recall(loaded: QdrantIndex, data) -> None:
    _, _, queries = data
    exact = loaded.search(queries, k=10)
    funnel = loaded.search(queries, k=10, stages=parse_stages("16:float32:100,full:float32:10"))
    recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(exact, funnel)])
    assert recall >= 0.7
    for row in funnel:  # re-ranked by the full cosine, best first
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True) and len(row) == 10


def test_one_request_with_prefetch(loaded: QdrantIndex, data, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, queries = data
    calls: list[list[models.QueryRequest]] = []
    real = loaded.client.query_batch_points

    def spy(collection_name: str, requests: list[models.QueryRequest], **kwargs):
        calls.append(list(requests))
        return real(collection_name, requests=requests, **kwargs)

    monkeypatch.setattr(loaded.client, "query_batch_points", spy)
    loaded.search(queries[:3], k=5, stages=[Stage(16, "binary", 40), Stage(FULL, "float32", 10)], filter={"lang": "en"})
    assert len(calls) == 1 and len(calls[0]) == 3
    request = calls[0][0]
    assert request.using == "full" and request.limit == 5 and request.filter is not None
    prefetch = request.prefetch
    assert isinstance(prefetch, models.Prefetch)
    assert prefetch.using == "prefix_16" and prefetch.limit == 40 and prefetch.filter == request.filter
    assert len(prefetch.query) == 16 and np.linalg.norm(prefetch.query) == pytest.approx(1.0, abs=1e-5)
    assert prefetch.params.quantization == models.QuantizationSearchParams(ignore=False, rescore=False)
    assert request.params.quantization.ignore is True

    calls.clear()
    loaded.search(queries[:1], k=5, stages=parse_stages("8:float32:3,full:float32:10"))
    prefetch = calls[0][0].prefetch
    assert prefetch.using == "prefix_8" and prefetch.limit == 5  # the shortlist holds at least k
    assert prefetch.params.quantization.ignore is True

    calls.clear()
    loaded.search(queries[:1], k=5)
    assert calls[0][0].prefetch is None and calls[0][0].params.exact is True


def test_filters(loaded: QdrantIndex, data) -> None:
    ids, vectors, queries = data
    meta = [_meta(i) for i in range(COUNT)]
    cases = [
        {"lang": "en"},
        {"group": [0, 2]},
        {"group": 1, "lang": "de"},
        {"flag": True},
        {"weight": 2.5},
        {"weight": [2.5, 7.0], "lang": ["en", "de"]},
        {"group": [0, "x"]},
        {"a.b": 1},
    ]
    for wanted in cases:
        rows = np.array([i for i in range(COUNT) if all(
            meta[i].get(key) in (value if isinstance(value, list) else [value]) for key, value in wanted.items()
        )])
        expected = [[ids[j] for j in row] for row in _brute_force(vectors, queries, 10, rows)]
        got = [[h.id for h in row] for row in loaded.search(queries, k=10, filter=wanted)]
        assert got == expected, wanted
        funnel = loaded.search(queries, k=10, stages=parse_stages("8:binary:300,full:float32:10"), filter=wanted)
        assert [[h.id for h in row] for row in funnel] == expected, wanted
    assert loaded.search(queries[:1], k=5, filter={"lang": "xx"}) == [[]]
    assert len(loaded.search(queries[:1], k=5, filter={})[0]) == 5


def test_persists_across_reopen(tmp_path: Path, data) -> None:
    ids, vectors, queries = data
    url = f"qdrant+local:{tmp_path}/p"
    with QdrantIndex.open(url, dim=DIM, prefix_dims=(8,)) as backend:
        backend.upsert(ids, vectors, texts=ids)
        before = backend.search(queries, k=10, stages=parse_stages("8:binary:50,full:float32:10"))
    with QdrantIndex.open(url, dim=DIM) as backend:
        assert len(backend) == COUNT
        after = backend.search(queries, k=10, stages=parse_stages("8:binary:50,full:float32:10"))
    # same ids, texts and order; local mode re-normalizes on load, so scores may move in the 8th digit
    assert [[(h.id, h.text) for h in row] for row in after] == [[(h.id, h.text) for h in row] for row in before]
    assert [h.score for row in after for h in row] == pytest.approx([h.score for row in before for h in row], abs=1e-6)


def test_relative_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with QdrantIndex.open("qdrant+local:rel/dir?collection=r", dim=8, prefix_dims=(4,)) as backend:
        backend.upsert(["a"], np.ones((1, 8)))
    assert (tmp_path / "rel" / "dir").is_dir()


def test_empty_collection_and_one_row_query(tmp_path: Path) -> None:
    with QdrantIndex.open(f"qdrant+local:{tmp_path}/e", dim=16, prefix_dims=(8,)) as backend:
        assert backend.search(np.ones((2, 16)), k=3) == [[], []]
        backend.upsert(["a", "b"], np.eye(16)[:2])
        hits = backend.search(np.eye(16)[0], k=5, stages=parse_stages("8:binary:10,full:float32:5"))
        assert [h.id for h in hits[0]] == ["a", "b"] and hits[0][0].score == pytest.approx(1.0)


def test_bad_input(loaded: QdrantIndex, data) -> None:
    _, vectors, queries = data
    with pytest.raises(ValueError, match="shape"):
        loaded.upsert(["x"], np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="zero"):
        loaded.upsert(["x"], np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="repeat"):
        loaded.upsert(["x", "x"], vectors[:2])
    with pytest.raises(ValueError, match="metadata"):
        loaded.upsert(["x"], vectors[:1], metadata=[{"nested": {"a": 1}}])
    with pytest.raises(ValueError, match="32-dim"):
        loaded.search(np.ones((1, DIM - 1)))
    with pytest.raises(ValueError, match="zero"):
        loaded.search(np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="k must"):
        loaded.search(queries, k=0)
    with pytest.raises(ValueError, match="available dims: 8, 16, 32"):
        loaded.search(queries, stages=parse_stages("24:float32:100,full:float32:10"))
    with pytest.raises(ValueError, match="int8"):
        loaded.search(queries, stages=parse_stages("16:int8:100,full:float32:10"))
    with pytest.raises(ValueError, match="stages"):
        loaded.search(queries, stages=parse_stages("8:binary:200,16:float32:50,full:float32:10"))
    with pytest.raises(ValueError, match="last stage"):
        loaded.search(queries, stages=parse_stages("8:binary:200,16:float32:50"))
    with pytest.raises(ValueError, match="filter"):
        loaded.search(queries, filter={"lang": []})
    with pytest.raises(ValueError, match="dim must"):
        QdrantIndex.open("qdrant+local:/tmp/unused", dim=0)
    with pytest.raises(ValueError, match="prefix_dims"):
        QdrantIndex.open("qdrant+local:/tmp/unused", dim=8, prefix_dims=(0,))


def test_binary_stage_needs_binary_collection(tmp_path: Path, data) -> None:
    ids, vectors, queries = data
    with QdrantIndex.open(f"qdrant+local:{tmp_path}/f", dim=DIM, prefix_dims=(16,), binary=False) as backend:
        backend.upsert(ids, vectors)
        assert backend.client.get_collection(DEFAULT_COLLECTION).config.params.vectors["prefix_16"].quantization_config is None
        with pytest.raises(ValueError, match="without binary"):
            backend.search(queries, stages=parse_stages("16:binary:100,full:float32:10"))
        assert len(backend.search(queries, stages=parse_stages("16:float32:100,full:float32:10"))[0]) == 10


def test_point_ids_are_stable_uuids() -> None:
    assert point_id("doc-1") == point_id("doc-1") != point_id("doc-2")
    assert len(point_id("x")) == 36


# --- URLs: parsed and turned into client options; nothing here reaches a server ---


def test_server_urls_build_a_client_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    target = parse_url("qdrant://db.example:7000/docs")
    assert (target.host, target.port, target.https, target.collection, target.local) == ("db.example", 7000, False, "docs", False)
    target = parse_url("qdrants://db.example/docs?timeout=3")
    assert (target.port, target.https, target.timeout) == (6333, True, 3)
    assert parse_url("qdrant://db.example").collection == DEFAULT_COLLECTION
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret")
    options = target.client_options()
    assert options["api_key"] == "s3cret" and options["check_compatibility"] is False
    client = QdrantClient(**options)  # builds an HTTP client; the version check, which would connect, is off
    assert client.init_options["host"] == "db.example" and client.init_options["https"] is True
    assert client._client.rest_uri == "https://db.example:6333"
    client.close()


def test_local_urls() -> None:
    assert parse_url("qdrant+local:///abs/dir?collection=c").path == "/abs/dir"
    target = parse_url("qdrant+local:rel/dir")
    assert (target.path, target.collection, target.local) == ("rel/dir", DEFAULT_COLLECTION, True)


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "empty"),
        ("http://host/c", "scheme"),
        ("qdrant:///c", "no host"),
        ("qdrant://host/a/b", "one non-empty path segment"),
        ("qdrant://host:99999/c", "Port"),
        ("qdrant://host/c?prefer_grpc=1", "unknown parameter"),
        ("qdrant://host/c?timeout=-1", "timeout"),
        ("qdrant+local://relative", "three slashes"),
        ("qdrant+local:", "no directory"),
        ("qdrant+local:/d?collection=a&collection=b", "more than once"),
        ("qdrant+local:/d?collection=", "collection name"),
        ("qdrant://host/c#frag", "fragment"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


@pytest.mark.parametrize("url", ["qdrant://host/c?api_key=s3cret", "qdrants://user:s3cret@host/c", "qdrant://u:s3cret@host:99999/c"])
def test_secrets_in_urls_are_refused_and_not_echoed(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    assert "s3cret" not in str(info.value)


def test_unreachable_server_names_the_url() -> None:
    with socket.socket() as sock:  # a local port that nothing listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"qdrant://127.0.0.1:{port}/docs?timeout=2"
    with pytest.raises(EngineError, match=f"127.0.0.1:{port}"):
        QdrantIndex.open(url, dim=DIM)


# -- replacing every document: a new collection, then the name moved to it --------------------------


def _collections(backend: QdrantIndex) -> tuple[list[str], dict[str, str]]:
    """(concrete collection names, alias -> collection) of the backend's storage."""
    names = sorted(c.name for c in backend.client.get_collections().collections)
    return names, {a.alias_name: a.collection_name for a in backend.client.get_aliases().aliases}


def _new_docs(n: int = 40, seed: int = 5) -> tuple[list[str], np.ndarray, list[str]]:
    vectors = _unit(np.random.default_rng(seed).normal(size=(n, DIM)))
    ids = [f"new-{seed}-{i}" for i in range(n)]
    return ids, vectors, [f"new text {i}" for i in ids]


def test_replace_all_moves_the_name_to_a_complete_new_collection(tmp_path: Path, data) -> None:
    ids, vectors, _ = data
    url = f"qdrant+local://{tmp_path}/q?collection=docs"
    backend = QdrantIndex.open(url, dim=DIM, model_name="test-model", prefix_dims=(8, 16), stages="8:float32:50,full:float32:10")
    backend.upsert(ids, vectors)
    assert _collections(backend) == (["docs"], {})

    new_ids, new_vectors, new_texts = _new_docs()
    backend.replace_all(new_ids, new_vectors, new_texts, [{"lang": "en"}] * len(new_ids))
    names, aliases = _collections(backend)
    assert len(names) == 1 and names[0].startswith("docs--build-") and aliases == {"docs": names[0]}
    assert len(backend) == len(new_ids) and backend.existing([ids[0], new_ids[0]]) == {new_ids[0]}
    hits = backend.search(new_vectors[:4], k=3, filter={"lang": "en"})
    assert [row[0].id for row in hits] == new_ids[:4] and hits[0][0].text == new_texts[0]

    # Now an alias: the next replacement is one atomic alias request, and the old build is deleted.
    again_ids, again_vectors, _ = _new_docs(seed=6)
    backend.replace_all(again_ids, again_vectors)
    names2, aliases2 = _collections(backend)
    assert len(names2) == 1 and names2 != names and aliases2 == {"docs": names2[0]}
    assert len(backend) == len(again_ids)
    backend.close()

    reopened = QdrantIndex.open(url, create=False)
    assert (reopened.dim, reopened.model_name, reopened.prefix_dims) == (DIM, "test-model", (8, 16))
    assert reopened.stages == parse_stages("8:float32:50,full:float32:10")
    assert [h.id for h in reopened.search(again_vectors[7], k=1)[0]] == [again_ids[7]]
    reopened.close()


@pytest.mark.parametrize("aliased", [False, True], ids=["plain", "alias"])
def test_a_replacement_that_fails_midway_leaves_the_old_collection(
    loaded: QdrantIndex, data, monkeypatch: pytest.MonkeyPatch, aliased: bool
) -> None:
    ids, vectors, queries = data
    if aliased:  # the collection is an alias already: the old documents sit in a build collection
        loaded.replace_all(ids, vectors, [f"text {i}" for i in range(COUNT)], [_meta(i) for i in range(COUNT)])
    before = _collections(loaded)
    exact = loaded.search(queries, k=5)
    real = loaded.client.upsert
    writes: list[str] = []

    def fail_on_the_second_batch(collection_name: str, **kwargs):
        writes.append(collection_name)
        if len(writes) == 2:
            raise OSError("No space left on device (injected)")
        return real(collection_name, **kwargs)

    monkeypatch.setattr(loaded.client, "upsert", fail_on_the_second_batch)
    new_ids, new_vectors, _ = _new_docs(n=600)  # three write batches
    with pytest.raises(EngineError, match="No space left"):
        loaded.replace_all(new_ids, new_vectors)
    monkeypatch.undo()

    assert writes[0].startswith("docs--build-") and writes[0] != before[1].get("docs")
    assert _collections(loaded) == before  # the half-loaded collection is gone, the name untouched
    assert len(loaded) == COUNT and loaded.search(queries, k=5) == exact


def test_a_crashed_replacement_leaves_a_build_that_the_next_one_deletes(
    loaded: QdrantIndex, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, _, queries = data
    exact = loaded.search(queries, k=5)
    real = loaded.client.upsert

    def die(collection_name: str, **kwargs):  # as if the process died after the first batch
        real(collection_name, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loaded.client, "upsert", die)
    monkeypatch.setattr(QdrantIndex, "_drop", lambda self, name: None)  # a dead process cleans nothing up
    new_ids, new_vectors, _ = _new_docs()
    with pytest.raises(KeyboardInterrupt):
        loaded.replace_all(new_ids, new_vectors)
    monkeypatch.undo()
    names, aliases = _collections(loaded)
    assert aliases == {} and sorted(names)[0] == "docs" and names[1].startswith("docs--build-")
    assert loaded.search(queries, k=5) == exact  # the name still answers with the old documents

    loaded.replace_all(new_ids, new_vectors)
    names, aliases = _collections(loaded)
    assert len(names) == 1 and aliases == {"docs": names[0]} and len(loaded) == len(new_ids)
    assert loaded.existing([ids[0], new_ids[0]]) == {new_ids[0]}


def test_a_missing_collection_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        QdrantIndex.open(f"qdrant+local://{tmp_path}/q?collection=never", create=False)
    assert "matryoshka index build" in str(info.value) and "create=True" in str(info.value)
