"""Shared fixtures: offline hub, local data, one loaded default model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("MATRYOSHKA_DATA"):
    for candidate in (_REPO.parent / "shared" / "data", _REPO / "shared" / "data"):
        if candidate.is_dir():
            os.environ["MATRYOSHKA_DATA"] = str(candidate)
            break

DATA_DIR = Path(os.environ["MATRYOSHKA_DATA"]) if os.environ.get("MATRYOSHKA_DATA") else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data directory (``MATRYOSHKA_DATA``, default ``../shared/data``)."""
    if DATA_DIR is None or not DATA_DIR.is_dir():
        pytest.fail("set MATRYOSHKA_DATA to the shared data directory (e.g. ../shared/data)")
    return DATA_DIR


@pytest.fixture(scope="session")
def model():
    """The packaged all-MiniLM-L6-v2, loaded once."""
    from matryoshka.models.loading import load_model

    return load_model(device="cpu")


from postgres_server import postgres_url  # noqa: F401, E402  (a real throw-away PostgreSQL server, one per session)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts or uses the PostgreSQL server ``postgres`` (a parameter named
    ``postgresql`` counts: the engine-parametrized suites ask for the server only for that one)."""
    for item in items:
        callspec = item.callspec if isinstance(item, pytest.Function) and hasattr(item, "callspec") else None
        values = {str(v) for v in callspec.params.values()} if callspec is not None else set()
        if "postgres_url" in getattr(item, "fixturenames", ()) or "postgresql" in values:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory, data_dir: Path) -> Path:
    """A small BEIR directory cut from SciFact: 12 test and 24 train queries, their documents and 60 others."""
    import json

    from matryoshka.data.beir import load_beir

    test, train = load_beir("scifact", split="test"), load_beir("scifact", split="train")
    test_q, train_q = sorted(test.qrels)[:12], sorted(train.qrels)[:24]
    judged = {d for q in test_q for d in test.qrels[q]} | {d for q in train_q for d in train.qrels[q]}
    others = [d for d in sorted(test.corpus) if d not in judged][:60]
    root = tmp_path_factory.mktemp("tiny-beir")
    (root / "qrels").mkdir()
    with (root / "corpus.jsonl").open("w") as handle:
        for d in sorted(judged) + others:
            handle.write(json.dumps({"_id": d, "title": "", "text": test.corpus[d]}) + "\n")
    queries = {**{q: test.queries[q] for q in test_q}, **{q: train.queries[q] for q in train_q}}
    with (root / "queries.jsonl").open("w") as handle:
        for q, text in queries.items():
            handle.write(json.dumps({"_id": q, "text": text}) + "\n")
    for split, ids, source in (("test", test_q, test), ("train", train_q, train)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q in ids for d, r in source.qrels[q].items()]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root
