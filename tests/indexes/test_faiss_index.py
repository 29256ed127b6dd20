"""FunnelIndex search maths on small hand-made and random vectors: stages, codecs, ties, add/delete."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.retrieval import FULL, PRESETS, Hit, Stage, parse_stages

EXACT = [Stage(FULL, "float32", 10)]

# 4-dim documents whose 2-dim prefixes rank differently from the full vectors for QUERY:
#   prefix cosines  A 1.0, B 0.6, C 0.0   ->  A first
#   full cosines    A 0.5, B 0.8, C 0.0   ->  B first
DOCS = np.array([[1.0, 0.0, 0.0, 1.0], [0.6, 0.8, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=np.float32)
QUERY = np.array([1.0, 0.0, 1.0, 0.0], dtype=np.float32)


@pytest.fixture
def tiny() -> FunnelIndex:
    return FunnelIndex.from_vectors(DOCS, ["A", "B", "C"], texts=["a", "b", "c"])


@pytest.fixture(scope="module")
def random_index() -> tuple[FunnelIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    return FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(300)]), queries


def ids(hits: list[list[Hit]]) -> list[list[str]]:
    return [[h.id for h in row] for row in hits]


def test_exact_scores_are_cosines(tiny: FunnelIndex) -> None:
    [hits] = tiny.search(QUERY, k=3)
    assert [h.id for h in hits] == ["B", "A", "C"]
    assert [h.score for h in hits] == pytest.approx([0.8, 0.5, 0.0], abs=1e-6)
    assert [h.text for h in hits] == ["b", "a", "c"]


def test_prefix_ranking_differs_and_rerank_fixes_it(tiny: FunnelIndex) -> None:
    prefix_only = tiny.search(QUERY, k=1, stages=[Stage(2, "float32", 1)])
    assert prefix_only[0][0].id == "A"
    assert prefix_only[0][0].score == pytest.approx(1.0)
    funnel = tiny.search(QUERY, k=1, stages=parse_stages("2:float32:2,full:float32:1"))
    assert funnel[0][0].id == "B"
    assert funnel[0][0].score == pytest.approx(0.8)
    # a shortlist too short to hold B cannot recover it
    assert tiny.search(QUERY, k=1, stages=parse_stages("2:float32:1,full:float32:1"))[0][0].id == "A"


def test_middle_stage_reranks_by_its_own_prefix(tiny: FunnelIndex) -> None:
    # stage 1 keeps everything at 2 dims, stage 2 keeps the best 2 at 2 dims (A, B), stage 3 picks B at 4 dims
    hits, timings = tiny.search_with_timings(QUERY, k=1, stages=parse_stages("2:float32:3,2:float32:2,full:float32:1"))
    assert hits[0][0].id == "B"
    assert [(t["dim"], t["candidates"], t["keep"]) for t in timings] == [(2, 3, 3), (2, 3, 2), (4, 2, 1)]
    assert all(t["seconds"] >= 0 for t in timings)


@pytest.mark.parametrize(
    "spec",
    [
        "8:float32:300,full:float32:10",
        "16:binary:300,full:float32:10",
        "8:int8:300,full:float32:10",
        "full:float16:300,full:float32:10",
        "32:binary:300,16:float32:300,full:float32:10",
    ],
)
def test_funnel_keeping_everything_equals_exact(random_index, spec: str) -> None:
    index, queries = random_index
    exact = index.search(queries, k=10, stages=EXACT)
    funnel = index.search(queries, k=10, stages=parse_stages(spec))
    assert ids(funnel) == ids(exact)
    np.testing.assert_allclose([[h.score for h in r] for r in funnel], [[h.score for h in r] for r in exact], atol=1e-5)


def test_default_stages_are_exact_and_settable(random_index) -> None:
    index, queries = random_index
    assert index.stages == PRESETS["exact"]
    assert ids(index.search(queries, k=5)) == ids(index.search(queries, k=5, stages=EXACT))
    with pytest.raises(ValueError, match="reads 64 dims"):
        index.stages = [Stage(64, "float32", 10)]


def test_binary_scores_follow_hamming_distance() -> None:
    signs = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, -1, -1, -1, -1], [-1] * 8], dtype=np.float32)
    index = FunnelIndex.from_vectors(signs, ["same", "half", "opposite"])
    [hits] = index.search(np.ones(8, dtype=np.float32), k=3, stages=[Stage(8, "binary", 3)])
    # score = cos(pi * hamming / bits): 0 bits differ -> 1, 4 of 8 -> 0, all 8 -> -1
    assert [h.id for h in hits] == ["same", "half", "opposite"]
    assert [h.score for h in hits] == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)


def test_binary_rerank_stage_matches_binary_first_stage(random_index) -> None:
    index, queries = random_index
    first = index.search(queries, k=5, stages=[Stage(32, "binary", 5)])
    rerank = index.search(queries, k=5, stages=parse_stages("full:float32:300,32:binary:5"))
    np.testing.assert_allclose([[h.score for h in r] for r in rerank], [[h.score for h in r] for r in first], atol=1e-6)
    assert ids(rerank) == ids(first)


def test_int8_and_float16_scores_approximate_cosine(random_index) -> None:
    index, queries = random_index
    exact = index.search(queries, k=10, stages=EXACT)
    for codec, tolerance in (("int8", 0.03), ("float16", 1e-3)):
        approx = index.search(queries, k=10, stages=[Stage(FULL, codec, 10)])  # type: ignore[arg-type]
        assert approx[0][0].score == pytest.approx(exact[0][0].score, abs=tolerance)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(approx), ids(exact))])
        assert overlap >= 0.8


def test_float16_storage_matches_float32(random_index) -> None:
    index, queries = random_index
    vectors = np.stack([index._vectors[i] for i in range(len(index))])
    half = FunnelIndex.from_vectors(vectors, index.ids, storage="float16")
    assert half._vectors.dtype == np.float16
    for spec in ("full:float32:10", "8:float32:100,full:float32:10"):
        a = half.search(queries, k=10, stages=parse_stages(spec))
        b = index.search(queries, k=10, stages=parse_stages(spec))
        assert np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ids(a), ids(b))]) >= 0.95


def test_ties_break_by_insertion_order() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((1, 16)).astype(np.float32)
    others = rng.standard_normal((20, 16)).astype(np.float32)
    vectors = np.concatenate([others[:10], np.repeat(base, 5, axis=0), others[10:]])
    names = [f"o{i}" for i in range(10)] + [f"dup{i}" for i in range(5)] + [f"o{i}" for i in range(10, 20)]
    index = FunnelIndex.from_vectors(vectors, names)
    for spec in (
        "full:float32:3",
        "8:float32:10,full:float32:3",
        "16:binary:3",
        "16:binary:25,full:float32:3",
        "full:float32:25,16:binary:3",
        "full:float32:25,16:binary:4,full:float32:3",  # an unsorted middle stage cuts through the tie
        "16:binary:25,full:float32:4,full:float32:3",
    ):
        [hits] = index.search(base, k=3, stages=parse_stages(spec))
        assert [h.id for h in hits] == ["dup0", "dup1", "dup2"], spec


def test_query_shapes_and_limits(tiny: FunnelIndex) -> None:
    assert len(tiny.search(np.stack([QUERY, QUERY]), k=2)) == 2
    assert len(tiny.search(QUERY, k=50)[0]) == 3  # k larger than the index
    with pytest.raises(ValueError, match="queries have 3 dims"):
        tiny.search(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        tiny.search(QUERY, k=0)
    with pytest.raises(ValueError, match="NaN"):
        tiny.search(np.array([np.nan, 0, 0, 0], dtype=np.float32))


def test_empty_index_returns_no_hits() -> None:
    index = FunnelIndex.from_vectors(np.zeros((0, 8), dtype=np.float32), [])
    hits, timings = index.search_with_timings(
        np.ones((2, 8), dtype=np.float32), k=5, stages=parse_stages("8:binary:10,full:float32:5")
    )
    assert hits == [[], []]
    assert len(timings) == 2
    assert len(index) == 0


def test_from_vectors_validation() -> None:
    vectors = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="got 1 ids for 2 vectors"):
        FunnelIndex.from_vectors(vectors, ["a"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        FunnelIndex.from_vectors(vectors, ["a", "a"])
    with pytest.raises(ValueError, match="non-empty strings"):
        FunnelIndex.from_vectors(vectors, ["a", 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="got 1 texts for 2 vectors"):
        FunnelIndex.from_vectors(vectors, ["a", "b"], texts=["x"])
    with pytest.raises(ValueError, match="2-d array"):
        FunnelIndex.from_vectors(np.ones(4), ["a"])
    with pytest.raises(ValueError, match="storage"):
        FunnelIndex.from_vectors(vectors, ["a", "b"], storage="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or infinity"):
        FunnelIndex.from_vectors(np.array([[np.inf, 0, 0, 0], [1, 0, 0, 0]]), ["a", "b"])


def test_vectors_are_stored_once_at_unit_length(tiny: FunnelIndex) -> None:
    np.testing.assert_allclose(np.linalg.norm(tiny._vectors, axis=1), 1.0, rtol=1e-6)
    assert tiny.dim == 4
    assert len(tiny) == 3
    assert "B" in tiny and "Z" not in tiny


def test_add_extends_cached_views_and_finds_new_vectors(tiny: FunnelIndex) -> None:
    funnel = parse_stages("2:float32:2,full:float32:1")
    quantized = [Stage(FULL, "int8", 2), Stage(FULL, "float32", 1)]
    tiny.search(QUERY, k=1, stages=funnel)
    tiny.search(QUERY, k=1, stages=quantized)  # views are cached now
    tiny.add(QUERY[None, :] * 3, ["Q"], texts=["query itself"])
    assert len(tiny) == 4
    for stages in (funnel, quantized, EXACT):
        [hits] = tiny.search(QUERY, k=1, stages=stages)
        assert hits[0] == Hit("Q", pytest.approx(1.0), "query itself")


@pytest.mark.parametrize("reservable", [True, False])
def test_appends_fill_one_reserved_buffer_and_searches_keep_their_rows(monkeypatch, reservable: bool) -> None:
    """Appends write each row once into address space reserved up front (no copy as the index grows); where
    the mapping is refused they fall back to a doubling array. Either way an array handed out earlier keeps
    its rows."""
    from matryoshka.indexes.faiss import buffer

    if not reservable:
        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError("mapping refused")

        monkeypatch.setattr(buffer.mmap, "mmap", refuse)
    rng = np.random.default_rng(5)
    index = FunnelIndex.from_vectors(rng.standard_normal((3, 8)).astype(np.float32), ["a", "b", "c"])
    index.add(rng.standard_normal((2, 8)).astype(np.float32), ["d", "e"])
    first, held = index._buffer, index._vectors.copy()
    earlier = index._vectors
    for step in range(40):
        index.add(rng.standard_normal((100, 8)).astype(np.float32), [f"n{step}-{i}" for i in range(100)])
    assert len(index) == 4005
    assert (index._buffer is first) == reservable
    np.testing.assert_array_equal(earlier, held)
    np.testing.assert_array_equal(index._vectors[:5], held)
    [hits] = index.search(index._vectors[4004], k=1)
    assert hits[0].id == "n39-99"


def test_add_rejects_existing_and_repeated_ids(tiny: FunnelIndex) -> None:
    with pytest.raises(ValueError, match="id 'A' is already in the index"):
        tiny.add(DOCS[:1], ["A"])
    with pytest.raises(ValueError, match="'N' appears more than once"):
        tiny.add(DOCS[:2], ["N", "N"])
    with pytest.raises(ValueError, match=r"shape \(count, 4\)"):
        tiny.add(np.ones((1, 5)), ["N"])
    assert len(tiny) == 3


def test_add_without_texts_to_index_with_texts_and_back() -> None:
    index = FunnelIndex.from_vectors(DOCS, ["A", "B", "C"])
    index.add(QUERY, ["Q"], texts=["q"])
    hits = {h.id: h.text for h in index.search(QUERY, k=4)[0]}
    assert hits == {"Q": "q", "A": None, "B": None, "C": None}
    index.add(DOCS[:1], ["A2"])
    assert {h.id: h.text for h in index.search(QUERY, k=5)[0]}["A2"] is None


def test_delete_by_id(tiny: FunnelIndex) -> None:
    tiny.search(QUERY, k=1, stages=[Stage(FULL, "float16", 3)])
    assert tiny.delete(["B", "nope"]) == 1
    assert tiny.delete("nope") == 0
    assert len(tiny) == 2 and "B" not in tiny
    for stages in (EXACT, [Stage(FULL, "float16", 3)], parse_stages("2:int8:2,full:float32:1")):
        assert "B" not in {h.id for h in tiny.search(QUERY, k=3, stages=stages)[0]}
    assert tiny.search(QUERY, k=3)[0][0].id == "A"
    tiny.add(DOCS[1:2], ["B"], texts=["b again"])  # the id is free again
    assert tiny.search(QUERY, k=1)[0][0] == Hit("B", pytest.approx(0.8), "b again")
    assert tiny.ids == ["A", "C", "B"]


class _FakeModel:
    """Stands in for a SentenceTransformer: a fixed vector per text (hash-seeded)."""

    def get_embedding_dimension(self) -> int:
        return 16

    def encode(self, texts, **_: object) -> np.ndarray:
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(16) for t in texts]).astype(
            np.float32
        )


def test_build_encodes_and_keeps_texts() -> None:
    texts = [f"text number {i}" for i in range(30)]
    model = _FakeModel()
    index = FunnelIndex.build(model, texts, model_name="fake", show_progress_bar=False)  # type: ignore[arg-type]
    assert index.ids == [str(i) for i in range(30)] and index.model_name == "fake" and index.dim == 16
    query = model.encode(["text number 7"])
    [hits] = index.search(query, k=1, stages=parse_stages("8:float32:10,full:float32:1"))
    assert hits[0].id == "7" and hits[0].text == "text number 7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_concurrent_searches_and_updates_stay_consistent() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    index = FunnelIndex.from_vectors(rng.standard_normal((200, 16)), [f"d{i}" for i in range(200)])
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    additions = rng.standard_normal((20, 16)).astype(np.float32)
    stages = parse_stages("16:binary:50,8:float32:20,full:float32:5")

    def task(i: int) -> int:
        if i % 4:
            return sum(len(row) for row in index.search(queries, k=5, stages=stages))
        index.add(additions[i // 4 : i // 4 + 1], [f"new{i}"])
        if i % 12 == 0:
            index.delete([f"d{i}"])
        return 20

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(task, range(80))) == [20] * 80
    assert len(index) == 200 + 20 - 7
    assert all(f"new{i}" in index for i in range(0, 80, 4))


def falling_variance(rng: np.random.Generator, rows: int) -> np.ndarray:
    """32-dim Gaussian rows whose spread falls from 3 to 0.3 across the dimensions, as a Matryoshka model's does."""
    return (rng.standard_normal((rows, 32)) * np.linspace(3, 0.3, 32)).astype(np.float32)


def test_hnsw_first_stage_finds_the_prefix_neighbours_and_takes_appends() -> None:
    rng = np.random.default_rng(3)
    vectors, queries = falling_variance(rng, 4000), falling_variance(rng, 30)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(4000)])
    graph = parse_stages("16:hnsw:300:400,full:float32:10")
    flat = parse_stages("16:float32:300,full:float32:10")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(index.search(queries, 10, graph)),
                                                                ids(index.search(queries, 10, flat)))])
    assert overlap >= 0.95  # the graph finds (nearly) the flat scan's shortlist
    assert index.view_bytes(graph) > 4000 * 16 * 4  # the graph holds its prefixes and its links
    extra = falling_variance(rng, 50)
    index.add(extra, [f"n{i}" for i in range(50)])
    hits = index.search(extra[:5], 1, graph)  # rows appended after the graph was built are searched too
    assert [row[0].id for row in hits] == [f"n{i}" for i in range(5)]


def test_filtered_search_scans_instead_of_building_a_graph() -> None:
    vectors = np.random.default_rng(4).standard_normal((200, 16)).astype(np.float32)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(200)],
                                     metadata=[{"even": i % 2 == 0} for i in range(200)])
    graph = parse_stages("8:hnsw:50,full:float32:5")
    hits = index.search(vectors[:1], 5, graph, filter={"even": True})
    exact = index.search(vectors[:1], 5, parse_stages("8:float32:50,full:float32:5"), filter={"even": True})
    assert ids(hits) == ids(exact) and all(int(h.id[1:]) % 2 == 0 for h in hits[0])


def test_ivf_first_stage_probes_lists_and_takes_appends() -> None:
    rng = np.random.default_rng(5)
    vectors, queries = falling_variance(rng, 8000), falling_variance(rng, 30)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(8000)])
    flat = ids(index.search(queries, 10, parse_stages("16:float32:300,full:float32:10")))
    every = ids(index.search(queries, 10, parse_stages("16:ivf:300:1000,full:float32:10")))  # probes every list
    assert every == flat
    # 200 lists of ~40 vectors: one list cannot fill a shortlist of 300, so the probe widens until it can
    few = ids(index.search(queries, 10, parse_stages("16:ivf:300:1,full:float32:10")))
    assert all(len(row) == 10 for row in few)
    assert 0.5 < np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few, flat)]) < 1.0
    extra = falling_variance(rng, 20)
    index.add(extra, [f"n{i}" for i in range(20)])
    hits = index.search(extra[:5], 1, parse_stages("16:ivf:300:1000,full:float32:10"))
    assert [row[0].id for row in hits] == [f"n{i}" for i in range(5)]


def test_ivfpq_first_stage_scans_4bit_codes_and_grows_from_an_exact_tail() -> None:
    rng = np.random.default_rng(6)
    vectors, queries = falling_variance(rng, 20_000), falling_variance(rng, 40)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(20_000)])
    flat = ids(index.search(queries, 10, parse_stages("16:float32:300,full:float32:10")))
    codes = parse_stages("16:ivfpq:300:1000,full:float32:10")  # probes every list: only the 4-bit codes differ
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(index.search(queries, 10, codes)), flat)])
    assert overlap >= 0.97
    one_list = ids(index.search(queries, 10, parse_stages("16:ivfpq:300:1,full:float32:10")))
    assert all(len(row) == 10 for row in one_list)  # the probe widens until the shortlist fills
    view = index.view_bytes(codes)
    assert 20_000 * (8 + 8) <= view < 20_000 * 16 * 4  # 16 dims of 4 bits and an id per vector, not float prefixes

    small = FunnelIndex.from_vectors(vectors[:1000], [f"d{i}" for i in range(1000)])
    # too few rows to train codebooks: the view scans its prefixes exactly, so it equals the flat scan
    assert ids(small.search(queries, 10, codes)) == ids(small.search(queries, 10, parse_stages("16:float32:300,full:float32:10")))
    small.add(vectors[1000:], [f"d{i}" for i in range(1000, 20_000)])  # a tail this long is trained into an index
    grown = ids(small.search(queries, 10, codes))
    assert small._cache.views[("ivfpq", 16)].index is not None
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(grown, flat)]) >= 0.97


def test_int8_rerank_scores_the_stored_codes() -> None:
    import faiss

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = rng.standard_normal((5, 24)).astype(np.float32)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(3000)])
    hits = index.search(queries, 50, parse_stages("full:float32:3000,16:int8:50"))
    view = index._cache.views[("int8", 16)]
    prefix = vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True)
    decoded = view.sa_decode(view.sa_encode(prefix))  # FAISS's own decoding of the same codes
    for query, row in zip(queries, hits):
        q = query[:16] / np.linalg.norm(query[:16])
        expected = decoded @ q
        got = np.array([h.score for h in row])
        np.testing.assert_allclose(got, expected[[int(h.id[1:]) for h in row]], atol=1e-5)
        assert got[-1] >= np.sort(expected)[-50] - 1e-5  # the 50 best by the decoded codes
    assert isinstance(view, faiss.IndexScalarQuantizer)


def clustered(rng: np.random.Generator, rows: int, centres: np.ndarray) -> np.ndarray:
    """Rows scattered around ``centres`` (structure a neighbour graph can find, as real embeddings have)."""
    return (centres[rng.integers(0, len(centres), rows)] + 0.35 * rng.standard_normal((rows, centres.shape[1]))).astype(np.float32)


def test_neighbour_graph_links_each_vector_to_its_nearest_others() -> None:
    from matryoshka.indexes.faiss.neighbours import GRAPH_DEGREE, NeighbourGraph

    rng = np.random.default_rng(8)
    vectors = clustered(rng, 12_000, rng.standard_normal((40, 32)))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    graph = NeighbourGraph.build(vectors)
    assert graph.links.shape == (12_000, GRAPH_DEGREE) and graph.nbytes == 12_000 * GRAPH_DEGREE * 4
    sample = np.arange(0, 12_000, 40)
    exact = np.argsort(-(vectors[sample] @ vectors.T), axis=1)[:, 1:5]  # column 0 is the vector itself
    assert not (graph.links[sample] == sample[:, None]).any()  # a vector is never its own neighbour
    found = np.mean([len(set(a) & set(b)) / 4 for a, b in zip(graph.links[sample, :4].tolist(), exact.tolist())])
    assert found >= 0.8  # an approximate graph: most of each vector's 4 nearest
    scores = np.einsum("nd,ngd->ng", vectors[sample], vectors[graph.links[sample]])
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first

    few = NeighbourGraph.build(vectors[:5])  # one list: an exact graph, padded where fewer than 16 others exist
    assert (few.links[:, :4] >= 0).all() and (few.links[:, 4:] == -1).all()
    assert set(few.links[0, :4].tolist()) == {1, 2, 3, 4}
    grown = few.extended(1)  # 6 rows: the new one has no neighbours and a rebuild is not due yet
    assert grown is not None and grown.neighbours(np.array([5, 0]))[0].tolist() == [-1] * GRAPH_DEGREE
    assert few.extended(2) is None  # more than a quarter of the graph would have none: build it again


def test_graph_stage_adds_the_neighbours_a_prefix_shortlist_lost() -> None:
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((40, 32))
    vectors, queries = clustered(rng, 6000, centres), clustered(rng, 40, centres)
    index = FunnelIndex.from_vectors(vectors, [f"d{i}" for i in range(6000)])
    exact = ids(index.search(queries, 10, PRESETS["exact"]))
    short = parse_stages("4:float32:40,full:float32:10")
    widened = parse_stages("4:float32:40,full:float32:10,full:graph:10")

    def recall(found: list[list[str]]) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]))

    hits, timings = index.search_with_timings(queries, 10, widened)
    # a 4-dim prefix finds 0.28 of the true top 10; their neighbours hold most of the rest (0.855)
    assert recall(ids(hits)) >= recall(ids(index.search(queries, 10, short))) + 0.4
    assert recall(ids(hits)) >= 0.8
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = queries[0] / np.linalg.norm(queries[0])
    assert [h.score for h in hits[0]] == pytest.approx([float(unit[int(h.id[1:])] @ query) for h in hits[0]], abs=1e-5)
    assert [t["codec"] for t in timings] == ["float32", "float32", "graph"] and timings[-1]["candidates"] == 10
    assert index.view_bytes(widened) >= 6000 * 16 * 4  # the graph's links count as the funnel's structure

    index.add(vectors[:10] * 1.01, [f"n{i}" for i in range(10)])  # the graph keeps its links; new rows have none
    assert ("graph", 32) in index._cache.views
    assert ids(index.search(vectors[:1], 10, widened))[0][:2] in (["d0", "n0"], ["n0", "d0"])
    index.add(clustered(rng, 2000, centres), [f"m{i}" for i in range(2000)])  # over a quarter new: dropped, rebuilt on use
    assert ("graph", 32) not in index._cache.views
    index.search(queries[:1], 10, widened)
    assert index._cache.views[("graph", 32)].built == len(index)


def test_search_refuses_what_is_not_a_stage_and_repeats_plans():
    # plans are remembered per (stages, k, count): a bad or unhashable stage must still get its error
    rng = np.random.default_rng(5)
    index = FunnelIndex.from_vectors(rng.standard_normal((50, 16)).astype(np.float32), [str(i) for i in range(50)])
    query = rng.standard_normal((1, 16)).astype(np.float32)
    for bad in ([{"dim": 8}], ["8:float32:10"]):
        with pytest.raises(ValueError, match="expected Stage objects"):
            index.search(query, k=5, stages=bad)  # type: ignore[arg-type]
    funnel = [Stage(8, "float32", 20), Stage(0, "float32", 5)]
    first = index.search(query, k=5, stages=funnel)
    assert index.search(query, k=5, stages=funnel) == first
    assert [len(row) for row in index.search(query, k=3, stages=funnel)] == [3]  # another k, another plan
    assert [len(row) for row in index.search(query, k=30, stages=funnel)] == [30]  # keeps lifted to k
    index.add(query, ["query"])  # another count, another plan: the new row is found
    assert index.search(query, k=5, stages=funnel)[0][0].id == "query"
