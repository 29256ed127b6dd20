"""The PostgreSQL + pgvector backend against a real throw-away server (see ``postgres_server.py``)."""

from __future__ import annotations

import itertools
import re
import threading

import numpy as np
import psycopg
import pytest

from matryoshka.errors import EngineError
from matryoshka.indexes.pgvector import META_TABLE, SCHEMA_VERSION, PgVectorIndex
from matryoshka.indexes.pgvector.connection import parse_url as _parse_url
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.retrieval.stages import FULL, Stage, parse_stages
from postgres_server import EmbeddedPostgres, postgres_url  # noqa: F401  (postgres_url is a fixture)

pytestmark = pytest.mark.postgres

DIM = 32
COUNT = 300


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray, list[str], list[dict]]:
    """300 random unit vectors (seeded) plus hand-made ones: two basis vectors and an exact duplicate pair."""
    rng = np.random.default_rng(7)
    vectors = _unit(rng.standard_normal((COUNT, DIM)))
    basis = np.eye(DIM, dtype=np.float32)[:2]
    twin = _unit(rng.standard_normal((1, DIM)))
    vectors = np.concatenate([vectors, basis, twin, twin])
    ids = [f"doc{i}" for i in range(COUNT)] + ["e0", "e1", "twin-a", "twin-b"]
    texts = [f"text of {i}" for i in ids]
    metadata = [{"group": ["red", "green", "blue"][i % 3], "n": i % 7} for i in range(len(ids))]
    return ids, vectors, texts, metadata


@pytest.fixture
def url(postgres_url: str, request: pytest.FixtureRequest) -> str:  # noqa: F811
    """The session server with a table named after the test."""
    name = re.sub(r"[^a-z0-9]", "_", request.node.name.lower().removeprefix("test_"))[:30]
    return f"{postgres_url}?table=t_{name}"


@pytest.fixture
def loaded(url: str, corpus) -> PgVectorIndex:
    ids, vectors, texts, metadata = corpus
    backend = PgVectorIndex.open(url, dim=DIM, model_name="test-model")
    backend.upsert(ids, vectors, texts, metadata)
    yield backend
    backend.close()


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[list[int]]:
    """Exact top-k row numbers by cosine, ties by row order (insertion order)."""
    rows = np.arange(len(vectors)) if rows is None else rows
    scores = _unit(queries) @ vectors[rows].T
    return [[int(rows[j]) for j in np.lexsort((rows, -s))[:k]] for s in scores]


def _queries(n: int = 8, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# -- URL and schema ------------------------------------------------------------------------------


def test_url_parsing_takes_out_table_and_masks_password() -> None:
    conninfo, masked, table = _parse_url("postgresql://app:s3cret@db.example:6543/search?sslmode=require&table=docs_v2")
    assert table == "docs_v2"
    assert conninfo == "postgresql://app:s3cret@db.example:6543/search?sslmode=require"
    assert masked == "postgresql://app:***@db.example:6543/search?sslmode=require&table=docs_v2"
    assert _parse_url("postgres://h/db")[2] == "matryoshka_documents"
    assert "pw" not in _parse_url("postgresql://h/db?password=pw")[1]
    for bad in ("postgresql://h/db?table=1abc", "postgresql://h/db?table=a;drop", "postgresql://h/db?table=" + "x" * 41,
                "mysql://h/db", "postgresql://h/db?table=a&table=b"):
        with pytest.raises(ValueError):
            _parse_url(bad)


def test_create_reopen_and_mismatch(url: str) -> None:
    with PgVectorIndex.open(url, dim=DIM, model_name="m1") as backend:
        assert isinstance(backend, VectorIndex)
        assert (backend.dim, backend.model_name, len(backend)) == (DIM, "m1", 0)
        assert backend.pgvector_version >= (0, 7, 0)
    with PgVectorIndex.open(url) as backend:  # dim and model read back from the meta table
        assert (backend.dim, backend.model_name) == (DIM, "m1")
    with PgVectorIndex.open(url, dim=DIM, model_name="m1", create=False) as backend:
        assert backend.dim == DIM
    with pytest.raises(ValueError, match="32-dim"):
        PgVectorIndex.open(url, dim=16)
    with pytest.raises(ValueError, match="m1"):
        PgVectorIndex.open(url, model_name="other-model")
    missing = url.replace("?table=t_", "?table=m_")
    with pytest.raises(ValueError, match="dim"):
        PgVectorIndex.open(missing)
    with pytest.raises(EngineError, match="create=True"):
        PgVectorIndex.open(missing, dim=DIM, create=False)


def test_foreign_table_is_refused(postgres_url: str) -> None:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE not_ours (id int)")
    with pytest.raises(EngineError, match="not created by matryoshka"):
        PgVectorIndex.open(f"{postgres_url}?table=not_ours", dim=DIM)


def test_schema_migrates_older_and_refuses_newer(url: str, postgres_url: str) -> None:  # noqa: F811
    table = _parse_url(url)[2]
    PgVectorIndex.open(url, dim=DIM).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {table}_metadata_gin")
        conn.execute(f"UPDATE {META_TABLE} SET schema_version = 1 WHERE table_name = %s", [table])
        with pytest.raises(EngineError, match="migrate"):
            PgVectorIndex.open(url, create=False)
        PgVectorIndex.open(url).close()
        version = conn.execute(f"SELECT schema_version FROM {META_TABLE} WHERE table_name = %s", [table]).fetchone()
        assert version == (SCHEMA_VERSION,)
        assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{table}_metadata_gin"]).fetchone() == (True,)
        conn.execute(f"UPDATE {META_TABLE} SET schema_version = 99 WHERE table_name = %s", [table])
        with pytest.raises(EngineError, match="newer"):
            PgVectorIndex.open(url)


def test_connection_failure_names_server_not_password() -> None:
    with pytest.raises(EngineError) as info:
        PgVectorIndex.open("postgresql://app:hunter2@127.0.0.1:1/db?connect_timeout=3", dim=DIM)
    assert "127.0.0.1:1" in str(info.value) and "hunter2" not in str(info.value)


# -- writes --------------------------------------------------------------------------------------


def test_upsert_replaces_delete_and_existing(loaded: PgVectorIndex, corpus) -> None:
    ids, vectors, _, _ = corpus
    assert len(loaded) == len(ids)
    assert loaded.existing(["doc1", "nope", "e0"]) == {"doc1", "e0"}
    loaded.upsert(["doc1"], vectors[2:3], ["replaced"], [{"group": "new"}])
    assert len(loaded) == len(ids)
    top = loaded.search(vectors[2], k=2)[0]
    assert {hit.id for hit in top} == {"doc1", "doc2"} and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert [hit.text for hit in loaded.search(vectors[2], k=5, filter={"group": "new"})[0]] == ["replaced"]
    assert loaded.delete(["doc1", "doc3", "nope"]) == 2
    assert loaded.delete("doc4") == 1
    assert len(loaded) == len(ids) - 3
    assert loaded.existing(["doc1", "doc3", "doc4", "doc5"]) == {"doc5"}
    assert loaded.existing([]) == set() and loaded.delete([]) == 0


def test_direct_copy_falls_back_to_merge_on_a_racing_id(loaded: PgVectorIndex, corpus, monkeypatch) -> None:
    """A batch of 'new' ids that another writer stored meanwhile is merged, not refused."""
    ids, vectors, _, _ = corpus
    monkeypatch.setattr(PgVectorIndex, "_any_stored", lambda self, conn, batch: False)
    loaded.upsert(["fresh", "doc7"], vectors[[8, 9]], ["fresh text", "doc7 again"])
    assert len(loaded) == len(ids) + 1
    assert [h.text for h in loaded.search(vectors[9], k=2)[0]] == ["text of doc9", "doc7 again"]  # tie: older first


def test_ties_break_by_insertion_order(loaded: PgVectorIndex, corpus) -> None:
    _, vectors, _, _ = corpus
    twin = vectors[-1]
    assert [hit.id for hit in loaded.search(twin, k=2)[0]] == ["twin-a", "twin-b"]
    loaded.upsert(["twin-a"], twin[None, :])  # a replaced document counts as newly added
    assert [hit.id for hit in loaded.search(twin, k=2)[0]] == ["twin-b", "twin-a"]


def test_bulk_copy_round_trips_exactly(url: str) -> None:
    rng = np.random.default_rng(3)
    count = 4000
    vectors = rng.standard_normal((count, DIM)).astype(np.float32) * 5  # stored at unit length
    ids = [f"bulk-{i}" for i in range(count)]
    texts = [None if i % 5 == 0 else f"tab\there\nnewline \\ backslash ünïcødé {i}" for i in range(count)]
    metadata = [None if i % 4 == 0 else {"i": i, "ok": i % 2 == 0, "s": "x\ty"} for i in range(count)]
    with PgVectorIndex.open(url, dim=DIM) as backend:
        backend.upsert(ids, vectors, texts, metadata)
        assert len(backend) == count
        with psycopg.connect(backend._conninfo) as conn:
            rows = conn.execute(
                f"SELECT id, embedding::real[], text, metadata FROM {backend.table} ORDER BY seq"
            ).fetchall()
    assert [r[0] for r in rows] == ids
    np.testing.assert_array_equal(np.array([r[1] for r in rows], dtype=np.float32), _unit(vectors))
    assert [r[2] for r in rows] == texts
    assert [r[3] for r in rows] == metadata


def test_bad_input_is_refused(loaded: PgVectorIndex, corpus) -> None:
    _, vectors, _, _ = corpus
    with pytest.raises(ValueError):
        loaded.upsert(["a"], np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        loaded.upsert(["a", "a"], vectors[:2])
    with pytest.raises(ValueError):
        loaded.upsert(["a"], np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(ValueError):
        loaded.upsert(["a"], vectors[:1], metadata=[{"nested": {"x": 1}}])
    for nul in ({"ids": ["a\x00b"]}, {"texts": ["a\x00b"]}, {"metadata": [{"k": "a\x00b"}]}):
        with pytest.raises(ValueError, match="NUL"):
            loaded.upsert(**{"ids": ["a"], "vectors": vectors[:1], **nul})
    query = vectors[:1]
    for kwargs in (
        {"k": 0},
        {"stages": parse_stages("16:int8:50,full:float32:10")},
        {"stages": parse_stages("16:float32:100,8:float32:50,full:float32:10")},
        {"stages": [Stage(16, "int8", 10)]},  # a prefix alone ranks only in float or binary codes
        {"filter": {"group": {"nested": 1}}},
    ):
        with pytest.raises(ValueError):
            loaded.search(query, **kwargs)
    with pytest.raises(ValueError):
        loaded.search(np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        loaded.search(np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="int8"):
        loaded.ensure_index(Stage(16, "int8", 100))
    assert len(loaded) == len(corpus[0])  # nothing was written by the refused calls


# -- search --------------------------------------------------------------------------------------


def test_exact_search_equals_brute_force(loaded: PgVectorIndex, corpus) -> None:
    ids, vectors, texts, _ = corpus
    queries = np.concatenate([_queries(), vectors[:2] + 0.01])
    hits = loaded.search(queries, k=10)
    for row, expected in zip(hits, _brute_force(vectors, queries, 10)):
        assert [hit.id for hit in row] == [ids[i] for i in expected]
        assert [hit.text for hit in row] == [texts[i] for i in expected]
    scores = _unit(queries[:1]) @ vectors[_brute_force(vectors, queries[:1], 10)[0]].T
    np.testing.assert_allclose([hit.score for hit in hits[0]], scores[0], atol=1e-5)
    assert isinstance(hits[0][0].score, float)
    assert len(loaded.search(queries[:1], k=1000)[0]) == len(ids)
    assert loaded.search(np.empty((0, DIM), dtype=np.float32)) == []


def test_funnel_with_keep_covering_the_corpus_is_exact(loaded: PgVectorIndex, corpus) -> None:
    ids = corpus[0]
    loaded.ensure_index(Stage(8, "float32", 10))
    queries = _queries()
    exact = loaded.search(queries, k=10)
    for spec in (f"8:float32:{len(ids)}", f"8:binary:{len(ids)}", f"8:float16:{len(ids) + 50}"):
        funnel = loaded.search(queries, k=10, stages=[*parse_stages(spec), Stage(FULL, "float32", 10)])
        assert [[h.id for h in row] for row in funnel] == [[h.id for h in row] for row in exact], spec


def test_funnel_with_small_keep_has_good_recall(loaded: PgVectorIndex, corpus) -> None:
    ids, vectors, _, _ = corpus
    queries = _queries(20)
    truth = [{ids[i] for i in row} for row in _brute_force(vectors, queries, 10)]
    for spec in ("16:float32:120,full:float32:10", "32:binary:120,full:float32:10", "16:float16:120,full:float32:10"):
        stages = parse_stages(spec)
        loaded.ensure_index(stages[0])
        hits = loaded.search(queries, k=10, stages=stages)
        recall = np.mean([len({h.id for h in row} & want) / 10 for row, want in zip(hits, truth)])
        assert recall >= 0.8, (spec, recall)
        for row in hits:  # final scores are the full cosine, best first
            assert len(row) == 10 and all(a.score >= b.score for a, b in itertools.pairwise(row))


def test_query_with_a_zero_prefix_is_answered_exactly(loaded: PgVectorIndex, corpus) -> None:
    """A query whose prefix is all zeros gives the prefix nothing to rank by; it gets the exact answer."""
    stages = parse_stages("8:float32:50,full:float32:3")
    loaded.ensure_index(stages[0])
    query = np.eye(DIM, dtype=np.float32)[-1]
    assert loaded.search(query, k=3, stages=stages) == loaded.search(query, k=3)


def test_binary_stage(loaded: PgVectorIndex, corpus) -> None:
    ids, vectors, _, _ = corpus
    name = loaded.ensure_index(Stage(FULL, "binary", 50))
    assert name == f"{loaded.table}_p{DIM}_bin_hnsw"
    assert loaded.ensure_index(Stage(FULL, "binary", 50)) == name  # idempotent
    query = vectors[5]
    hits = loaded.search(query, k=5, stages=parse_stages("binary"))[0]
    assert hits[0].id == "doc5" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = {ids[i]: float(s) for i, s in enumerate(vectors @ _unit(query[None])[0])}
    assert all(h.score == pytest.approx(expected[h.id], abs=1e-5) for h in hits)


def test_filter_restricts_results(loaded: PgVectorIndex, corpus) -> None:
    ids, vectors, _, metadata = corpus
    queries = _queries(4)
    wanted = [i for i, m in enumerate(metadata) if m["group"] in ("red", "blue") and m["n"] == 3]
    hits = loaded.search(queries, k=5, filter={"group": ["red", "blue"], "n": 3})
    for row, expected in zip(hits, _brute_force(vectors, queries, 5, np.array(wanted))):
        assert [h.id for h in row] == [ids[i] for i in expected]
    stages = parse_stages("16:float32:20,full:float32:5")
    loaded.ensure_index(stages[0])
    for row in loaded.search(queries, k=5, stages=stages, filter={"group": "green"}):
        assert len(row) == 5 and all(metadata[ids.index(h.id)]["group"] == "green" for h in row)
    assert loaded.search(queries[:1], k=5, filter={"group": "purple"}) == [[]]


def test_funnel_is_one_statement_on_the_expression_index(url: str, postgres_url: str) -> None:  # noqa: F811
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    metadata = [{"g": i % 10} for i in range(len(vectors))]
    with PgVectorIndex.open(url, dim=DIM) as backend:
        backend.upsert([str(i) for i in range(len(vectors))], vectors, metadata=metadata)
        reopened = PgVectorIndex.open(url, index_stages="16:float32:40,full:float32:10")  # builds after the load
        reopened.close()
        binary = backend.ensure_index(Stage(16, "binary", 40), m=8, ef_construction=32)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"ANALYZE {backend.table}")
        query = rng.standard_normal(DIM).astype(np.float32)
        funnel = parse_stages("16:float32:40,full:float32:10")
        plan = backend.explain(query, k=10, stages=funnel)
        assert f"Index Scan using {backend.table}_p16_f32_hnsw" in plan, plan
        assert plan.count("Limit") == 2  # shortlist and re-rank in one statement
        plan = backend.explain(query, k=10, stages=parse_stages("16:binary:40,full:float32:10"))
        assert f"Index Scan using {binary}" in plan, plan
        plan = backend.explain(query, k=10)
        assert "Index" not in plan and "Seq Scan" in plan, plan  # exact search never goes through an index

        # With a filter that 1 row in 10 passes, the index scan still fills the shortlist (iterative scan).
        with backend._transaction() as conn:
            params = backend._prepare(conn, 10, funnel, {"g": 3})
            for setting in [*params.settings, "SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off"]:
                conn.execute(setting)
            unit = query / np.linalg.norm(query)
            statement = params.statement(unit)
            plan = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + statement.as_bytes(conn), params.params(unit)))
            assert f"Index Scan using {backend.table}_p16_f32_hnsw" in plan and "Filter" in plan, plan
            shortlist = statement.as_string(conn).replace("LIMIT 10", "LIMIT 1000")  # the re-rank keeps all
            rows = conn.execute(shortlist, params.params(unit)).fetchall()
        assert len(rows) == 40 and all(int(doc_id) % 10 == 3 for doc_id, _, _ in rows)


# -- kill test -----------------------------------------------------------------------------------


def test_load_resumes_after_the_server_is_killed(tmp_path) -> None:
    """Stop PostgreSQL abruptly mid-load; after a restart the load resumes and every id is stored once."""
    rng = np.random.default_rng(9)
    total, batch = 24_000, 300
    vectors = rng.standard_normal((total, DIM)).astype(np.float32)
    ids = [f"k{i}" for i in range(total)]
    with EmbeddedPostgres() as server:
        url = f"{server.url}?table=kill_test"
        backend = PgVectorIndex.open(url, dim=DIM)
        committed = threading.Semaphore(0)
        failure: list[BaseException] = []

        def load() -> None:
            try:
                for start in range(0, total, batch):
                    backend.upsert(ids[start : start + batch], vectors[start : start + batch])
                    committed.release()
            except EngineError as exc:  # the server went away
                failure.append(exc)

        loader = threading.Thread(target=load)
        loader.start()
        for _ in range(3):
            assert committed.acquire(timeout=60), "the load did not start"
        server.stop("immediate")  # a crash: no checkpoint, recovery at the next start
        loader.join(timeout=60)
        assert failure and isinstance(failure[0], EngineError), failure

        server.start()
        stored = backend.refresh_count()  # the same index reconnects (its pool replaces broken connections)
        assert 3 * batch <= stored < total and stored % batch == 0  # whole batches only
        done = backend.existing(ids)
        todo = [i for i, doc_id in enumerate(ids) if doc_id not in done]
        assert len(todo) == total - stored
        for start in range(0, len(todo), 2000):
            rows = todo[start : start + 2000]
            backend.upsert([ids[i] for i in rows], vectors[rows])
        assert len(backend) == total
        with psycopg.connect(server.url) as conn:
            count, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM kill_test").fetchone()
            stored_ids = {row[0] for row in conn.execute("SELECT id FROM kill_test")}
        assert count == distinct == total and stored_ids == set(ids)
        hit = backend.search(vectors[12345], k=1)[0][0]
        assert hit.id == "k12345" and hit.score == pytest.approx(1.0, abs=1e-5)
        backend.close()


def test_a_prefix_alone_ranks_exactly_by_the_prefix(loaded: PgVectorIndex, corpus) -> None:
    """One stage on a prefix (the demo's "at this dimension" side): the exact top k by the prefix's cosine."""
    ids, vectors, _, _ = corpus
    query = vectors[5]
    prefix = _unit(vectors[:, :16])
    expected = [ids[i] for i in np.argsort(-(prefix @ (query[:16] / np.linalg.norm(query[:16]))), kind="stable")[:10]]
    hits = loaded.search(query, k=10, stages=[Stage(16, "float32", 10)])[0]
    assert [h.id for h in hits][:3] == expected[:3]
    assert hits[0].score == pytest.approx(float(prefix[ids.index(hits[0].id)] @ prefix[5]), abs=1e-5)
    binary = loaded.search(query, k=10, stages=[Stage(16, "binary", 10)])[0]
    assert binary[0].id == ids[5] and binary[0].score == pytest.approx(1.0)  # all 16 sign bits agree


# -- replacing every document (index build on an existing table) ---------------------------------


def _fail_after(count: int):
    """A ``PgVectorIndex._copy`` that copies the first ``count`` rows, then fails as a full disk would."""
    original = PgVectorIndex._copy

    def copy(conn, target, ids, unit, texts, metadata, staged):
        original(conn, target, ids[:count], unit[:count], texts[:count], metadata[:count], staged)
        raise psycopg.errors.DiskFull("could not extend file: No space left on device (injected)")

    return staticmethod(copy)


def _stored(postgres_url: str, table: str) -> tuple[int, set[str], list[str]]:  # noqa: F811
    """Rows, ids and leftover rebuild tables, read on a fresh connection (what another process sees)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        ids = {row[0] for row in conn.execute(f"SELECT id FROM {table}")}
        stray = [row[0] for row in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'matryoshka_rebuild%'")]
    return len(ids), ids, stray


def _table_facts(postgres_url: str, table: str) -> dict:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        return {
            "indexes": conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY 1",
                                    [table]).fetchall(),
            "constraints": conn.execute(f"SELECT conname, contype FROM pg_constraint WHERE conrelid = '{table}'::regclass "
                                        "ORDER BY 1").fetchall(),
            "acl": conn.execute("SELECT relacl::text[], obj_description(oid, 'pg_class') FROM pg_class WHERE relname = %s",
                                [table]).fetchone(),
            "meta": conn.execute(f"SELECT dim, model_name, schema_version, stages FROM {META_TABLE} WHERE table_name = %s",
                                 [table]).fetchone(),
            "sequence": conn.execute("SELECT pg_get_serial_sequence(%s, 'seq')", [table]).fetchone(),
        }


def _new_corpus(n: int = 40) -> tuple[list[str], np.ndarray, list[str], list[dict]]:
    vectors = _unit(np.random.default_rng(21).standard_normal((n, DIM)))
    ids = [f"new{i}" for i in range(n)]
    return ids, vectors, [f"new text {i}" for i in ids], [{"group": "new", "n": i % 7} for i in range(n)]


def test_replace_all_swaps_in_a_table_with_the_same_indexes_grants_and_meta(
    url: str, postgres_url: str, corpus  # noqa: F811
) -> None:
    ids, vectors, texts, metadata = corpus
    funnel = "16:float32:60,full:float32:10"
    with PgVectorIndex.open(url, dim=DIM, model_name="test-model", stages=funnel) as backend:
        backend.upsert(ids, vectors, texts, metadata)
        backend.prepare()
        backend.ensure_index(Stage(8, "binary", 50))
        table = backend.table
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DO $$ BEGIN CREATE ROLE matryoshka_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            conn.execute(f"GRANT SELECT ON {table} TO matryoshka_reader")
            conn.execute(f"COMMENT ON TABLE {table} IS 'the test corpus'")
            last_seq = conn.execute(f"SELECT max(seq) FROM {table}").fetchone()[0]
        before = _table_facts(postgres_url, table)

        new_ids, new_vectors, new_texts, new_meta = _new_corpus()
        backend.replace_all(new_ids, new_vectors, new_texts, new_meta)

        assert len(backend) == len(new_ids)
        assert _stored(postgres_url, table) == (len(new_ids), set(new_ids), [])
        assert _table_facts(postgres_url, table) == before  # same index names and definitions, grants, meta row
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            first_seq = conn.execute(f"SELECT min(seq) FROM {table}").fetchone()[0]
        assert first_seq > last_seq  # the id sequence carried on: insertion order stays global
        queries = _queries()
        for row, expected in zip(backend.search(queries, k=5), _brute_force(new_vectors, queries, 5)):
            assert [hit.id for hit in row] == [new_ids[i] for i in expected]
        assert backend.search(new_vectors[3], k=1, filter={"group": "new"})[0][0].text == new_texts[3]
    with PgVectorIndex.open(url, create=False) as again:
        assert (len(again), again.model_name, again.stages) == (len(new_ids), "test-model", parse_stages(funnel))
        again.replace_all([], np.empty((0, DIM), dtype=np.float32))  # an empty corpus empties it, in one step too
        assert len(again) == 0 and _stored(postgres_url, table)[0] == 0


@pytest.mark.parametrize("in_place", [False, True], ids=["swap", "in-place"])
def test_failed_rebuild_keeps_rows(
    loaded: PgVectorIndex, url: str, corpus, postgres_url: str, monkeypatch, in_place: bool  # noqa: F811
) -> None:
    """The fault the issue hit: the new rows stop half way (here a full disk); the old ones must stay."""
    ids = corpus[0]
    if in_place:  # a view on the table: replaced in place (DELETE + COPY) rather than swapped
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE VIEW {loaded.table}_view AS SELECT id FROM {loaded.table}")
    monkeypatch.setattr(PgVectorIndex, "_copy", _fail_after(10))
    new_ids, new_vectors, new_texts, new_meta = _new_corpus()
    with pytest.raises(EngineError, match="No space left"):
        loaded.replace_all(new_ids, new_vectors, new_texts, new_meta)
    monkeypatch.undo()

    assert _stored(postgres_url, loaded.table) == (len(ids), set(ids), [])
    assert len(loaded) == len(ids)
    with PgVectorIndex.open(url, create=False) as reader:
        assert reader.search(corpus[1][5], k=1)[0][0].id == "doc5"
    loaded.replace_all(new_ids, new_vectors, new_texts, new_meta)  # and a second try goes through
    assert _stored(postgres_url, loaded.table)[1] == set(new_ids)


@pytest.mark.parametrize("in_place", [False, True], ids=["swap", "in-place"])
def test_readers_see_old_rows(
    loaded: PgVectorIndex, corpus, postgres_url: str, monkeypatch, in_place: bool  # noqa: F811
) -> None:
    """While the new rows load, another connection reads the old ones, without waiting for the load
    (a lock wait past 5 s fails the read instead of hanging the test)."""
    ids, vectors, _, _ = corpus
    if in_place:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE VIEW {loaded.table}_view AS SELECT id FROM {loaded.table}")
    seen: list[tuple[int, str]] = []
    original = PgVectorIndex._copy

    def copy_then_look(conn, target, *args, **kwargs):
        original(conn, target, *args, **kwargs)
        with psycopg.connect(postgres_url, autocommit=True) as reader:
            reader.execute("SET lock_timeout = '5s'")
            count = reader.execute(f"SELECT count(*) FROM {loaded.table}").fetchone()[0]
            nearest = reader.execute(
                f"SELECT id FROM {loaded.table} ORDER BY embedding <=> %s::vector LIMIT 1",
                ["[" + ",".join(map(str, vectors[5].tolist())) + "]"],
            ).fetchone()[0]
        seen.append((count, nearest))

    monkeypatch.setattr(PgVectorIndex, "_copy", staticmethod(copy_then_look))
    new_ids, new_vectors, new_texts, new_meta = _new_corpus()
    loaded.replace_all(new_ids, new_vectors, new_texts, new_meta)
    assert seen == [(len(ids), "doc5")]
    assert _stored(postgres_url, loaded.table)[1] == set(new_ids)


def test_index_build_on_a_table_keeps_its_rows_when_the_new_load_fails(url: str, tmp_path, monkeypatch) -> None:
    """``matryoshka index build --out postgresql://...`` twice; the second load fails half way. Before
    replace_all, build ran clear() (committed on its own) and then upsert, which left 0 rows and a
    search that found nothing with exit status 0."""
    from typer.testing import CliRunner

    from matryoshka.cli.index import index_app

    runner = CliRunner()
    old = tmp_path / "old.jsonl"
    old.write_text("".join(f'{{"_id": "old{i}", "text": "an old sentence about topic {i}"}}\n' for i in range(6)))
    new = tmp_path / "new.jsonl"
    new.write_text("".join(f'{{"_id": "new{i}", "text": "a new sentence about subject {i}"}}\n' for i in range(30)))
    first = runner.invoke(index_app, ["build", "--corpus", str(old), "--out", url, "--stages", "funnel"])
    assert first.exit_code == 0, first.output

    monkeypatch.setattr(PgVectorIndex, "_copy", _fail_after(7))
    second = runner.invoke(index_app, ["build", "--corpus", str(new), "--out", url, "--stages", "funnel"])
    assert second.exit_code == 1 and "No space left" in second.output, second.output
    monkeypatch.undo()

    with PgVectorIndex.open(url, create=False) as index:
        assert index.refresh_count() == 6 and index.existing([f"old{i}" for i in range(6)]) == {f"old{i}" for i in range(6)}
    found = runner.invoke(index_app, ["search", url, "an old sentence about topic 3", "--k", "3", "--format", "tsv"])
    assert found.exit_code == 0, found.output
    assert found.stdout.splitlines()[1].split("\t")[2] == "old3"


def test_a_missing_table_says_how_to_build_it(postgres_url: str) -> None:  # noqa: F811
    with pytest.raises(EngineError) as info:
        PgVectorIndex.open(f"{postgres_url}?table=never_built", create=False)
    assert "matryoshka index build" in str(info.value) and "create=True" in str(info.value)
