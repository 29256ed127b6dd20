"""One sequence of commands on every engine, same answers: ``index build``, ``add``, ``delete``, ``info``,
``search`` (with metadata filters), then ``serve``'s ``/v1/search``, ``/health`` and the demo's
``/demo/api/info`` and ``/demo/api/compare``, on ``faiss://``, ``postgresql://`` (a real server the tests
start) and ``qdrant+local://``.

Each engine's run records what it saw; the last test checks that all three saw the same ids in the
same order (scores to 1e-4).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from matryoshka.cli.index import index_app
from matryoshka.indexes import open_index
from matryoshka.indexes.faiss.index import FunnelIndex
from matryoshka.retrieval.protocol import VectorIndex
from matryoshka.serving import ServeConfig, ServerThread, create_app

torch.set_num_threads(1)
runner = CliRunner()
NAME = "all-MiniLM-L6-v2"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ENGINES = ["faiss", "postgresql", "qdrant"]
QUERIES = ["vitamin D and bone health", "cancer risk in smokers", "a protein that binds DNA"]
FILTERS = [{"even": True}, {"n": 1}, {"n": 1.0}, {"score": 0.5}, {"kind": ["b", "c"]}, {"even": False, "n": [0, 2]}]
SEEN: dict[str, dict] = {}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """60 SciFact claims with metadata of every type: a bool, an int (0/1/2), a float and a string."""
    import os

    from matryoshka.data.beir import read_queries

    shared = Path(os.environ.get("MATRYOSHKA_DATA") or SHARED)
    claims = list(read_queries(shared / "scifact" / "queries.jsonl.gz").items())[:60]
    path = tmp_path_factory.mktemp("conformance") / "claims.jsonl"
    lines = []
    for n, (doc_id, text) in enumerate(claims):
        meta = {"even": n % 2 == 0, "n": n % 3, "score": [0.5, 1.5][n % 2], "kind": "abc"[n % 3]}
        lines.append(json.dumps({"_id": doc_id, "text": text, "metadata": meta}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def engine_url(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if engine == "faiss":
        return f"faiss://{tmp_path / 'index'}"
    if engine == "postgresql":
        base = request.getfixturevalue("postgres_url")
        return f"{base}{'&' if '?' in base else '?'}table=conf_{uuid.uuid4().hex[:8]}"
    return f"qdrant+local://{tmp_path / 'qdrant'}?collection=conformance"


def cli(*args: object) -> str:
    result = runner.invoke(index_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def search_json(url: str, *extra: str) -> list[dict]:
    out = cli("search", url, *QUERIES, "--k", "5", "--json", *extra)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ids_and_scores(rows: list[dict]) -> list[list[tuple[str, float]]]:
    return [[(h["id"], round(h["score"], 4)) for h in row["hits"]] for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_same_sequence_on_every_engine(engine, tmp_path, request, corpus_file, model) -> None:
    url = engine_url(engine, tmp_path, request)
    seen: dict = {}
    built = runner.invoke(index_app, ["build", "--corpus", str(corpus_file), "--out", url,
                                      "--stages", "64:float32:100,full:float32:10"])
    assert built.exit_code == 0, built.output
    assert "60 vectors × 384" in built.output

    info = json.loads(cli("info", url))
    assert (info["count"], info["dim"], info["model_name"], info["stages"]) == (
        60, 384, NAME, "64:float32:100,full:float32:10")

    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"text": "Whales are large marine mammals.", "metadata": {"even": True, "n": 2}}) + "\n"
                   + json.dumps({"_id": "koala", "text": "Koalas sleep most of the day."}) + "\n")
    added = runner.invoke(index_app, ["add", url, "--texts", str(new)])
    assert added.exit_code == 0 and "added 2 texts" in added.output and "now 62" in added.output, added.output
    again = runner.invoke(index_app, ["add", url, "--texts", str(new)])  # koala is taken now
    assert again.exit_code == 1 and "already in the index" in again.output

    first = search_json(url)
    victim = first[0]["hits"][0]["id"]
    deleted = runner.invoke(index_app, ["delete", url, victim, "koala", "nope"])
    assert deleted.exit_code == 0 and "deleted 2 of 3" in deleted.output and "not in the index: nope" in deleted.output
    assert json.loads(cli("info", url))["count"] == 60

    seen["search"] = ids_and_scores(search_json(url))
    assert victim not in {h for row in seen["search"] for h, _ in row}
    seen["preset"] = ids_and_scores(search_json(url, "--preset", "exact"))
    assert seen["preset"] == seen["search"]  # keep 100 covers the corpus: the funnel answers exactly
    for wanted in FILTERS:
        rows = search_json(url, "--filter", json.dumps(wanted))
        seen[json.dumps(wanted)] = ids_and_scores(rows)
    assert seen['{"n": 1}'] == seen['{"n": 1.0}']  # numbers compare by value
    assert seen['{"even": true}'] != seen['{"n": 1}']  # True is not 1
    bad = runner.invoke(index_app, ["search", url, "x", "--filter", '{"n": NaN}'])
    assert bad.exit_code == 1 and "error:" in bad.output and "Traceback" not in bad.output

    # the server and the demo on the same index
    index = open_index(url, create=False)
    assert isinstance(index, VectorIndex)
    try:
        app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            health = client.get("/health").json()
            assert health["index_size"] == 60
            answer = client.post("/v1/search", json={"query": QUERIES[0], "k": 5, "filter": {"even": True}})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            seen["api"] = [(h["id"], round(h["score"], 4)) for h in body["hits"]]
            assert seen["api"] == seen['{"even": true}'][0]
            assert [s["codec"] for s in body["stages"]] == ["float32", "float32"]
            demo = client.get("/demo/api/info").json()
            assert (demo["index_size"], demo["full_dim"], demo["model"]) == (60, 384, NAME)
            compare = client.post("/demo/api/compare", json={"query": QUERIES[1], "dim": 64, "codec": "float32", "k": 5})
            assert compare.status_code == 200, compare.text
            c = compare.json()
            seen["compare"] = {side: [(h["id"], round(h["score"], 4)) for h in c[side]["hits"]] for side in ("chosen", "full")}
            assert seen["compare"]["full"] == seen["search"][1]
            assert c["chosen"]["dim"] == 64 and c["full"]["dim"] == 384
    finally:
        index.close()
    SEEN[engine] = seen


@pytest.mark.postgres
@pytest.mark.slow
def test_every_engine_gave_the_same_answers() -> None:
    if set(SEEN) != set(ENGINES):
        pytest.skip(f"needs the run on every engine; have {sorted(SEEN)}")
    reference = SEEN["faiss"]
    for engine in ENGINES[1:]:
        for key, value in reference.items():
            assert _same(SEEN[engine][key], value), (engine, key, SEEN[engine][key], value)


def _same(a, b) -> bool:
    """Same ids in the same order and scores within 2e-4 (engines sum in different float orders)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a and isinstance(a[0], list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return [i for i, _ in a] == [i for i, _ in b] and all(abs(x - y) < 2e-4 for (_, x), (_, y) in zip(a, b))


def test_filters_refuse_nan_and_oversized_filters(tmp_path) -> None:
    import numpy as np

    from matryoshka.errors import InputError
    from matryoshka.retrieval.filters import MAX_FILTER_VALUES, check_filter, matches

    index = FunnelIndex.open(tmp_path / "f", dim=4, model_name=NAME)
    index.upsert(["t", "one", "f"], np.eye(4, dtype=np.float32)[:3], metadata=[{"x": True}, {"x": 1}, {"x": 1.0}])
    assert {h.id for h in index.search(np.ones(4, np.float32), k=3, filter={"x": True})[0]} == {"t"}
    assert {h.id for h in index.search(np.ones(4, np.float32), k=3, filter={"x": 1})[0]} == {"one", "f"}
    with pytest.raises(InputError, match="not a finite number"):
        check_filter({"x": float("nan")})
    with pytest.raises(InputError, match="at most"):
        check_filter({"x": list(range(MAX_FILTER_VALUES + 1))})
    with pytest.raises(InputError, match="2\\*\\*53"):
        check_filter({"x": 2**60})
    assert not matches({"x": 1}, check_filter({"x": True}))
    with pytest.raises(ValueError, match="not a finite number"):
        index.upsert(["nan"], np.ones((1, 4), np.float32), metadata=[{"x": float("nan")}])
    assert len(index) == 3  # the refused write stored nothing


def test_an_unreachable_database_answers_503_not_500(postgres_url, model) -> None:
    import numpy as np

    index = open_index(f"{postgres_url}?table=conf_down_{uuid.uuid4().hex[:6]}", dim=384, model_name=NAME)
    index.upsert(["a"], np.ones((1, 384), np.float32))
    index.close()  # every later call fails as a lost server would: EngineError
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
    with ServerThread(app) as server:
        answer = httpx.post(server.url + "/v1/search", json={"query": "a", "k": 1}, timeout=60)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "index_unavailable", answer.text
