"""Retrieval metrics per dimension (hand-checked against ranx and BEIR's definitions) and the advisor."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import pytest
from rich.console import Console

from matryoshka.data.beir import BeirDataset, load_beir
from matryoshka.embeddings.vectors import DimensionError
from matryoshka.evaluation.retrieval import evaluate_retrieval, ranx_scores
from matryoshka.experiments.advise import advise, candidate_configs, memory_per_vector
from matryoshka.retrieval.stages import FULL, Stage, parse_stages

SHARED = Path(os.environ.get("MATRYOSHKA_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


class LookupModel:
    """A stand-in for a SentenceTransformer that returns a fixed vector per text."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {text: np.asarray(v, dtype=np.float32) for text, v in vectors.items()}
        self.dim = len(next(iter(self.vectors.values())))

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, **_: object) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


# Same geometry as the index tests: the 2-dim prefix ranks A above B for q1, the full vector B above A.
HAND = LookupModel(
    {
        "doc a": [1.0, 0.0, 0.0, 1.0],
        "doc b": [0.6, 0.8, 1.0, 0.0],
        "doc c": [0.0, 1.0, 0.0, 1.0],
        "query one": [1.0, 0.0, 1.0, 0.0],
        "query two": [0.0, 1.0, 0.0, 1.0],
    }
)
HAND_DATA = BeirDataset(
    corpus={"A": "doc a", "B": "doc b", "C": "doc c"},
    queries={"q1": "query one", "q2": "query two"},
    qrels={"q1": {"B": 1}, "q2": {"C": 1}},
    name="hand",
)


def test_hand_made_case_matches_the_definitions() -> None:
    scores = evaluate_retrieval(HAND, HAND_DATA, dims=[4, 2], k_values=(1, 10))  # type: ignore[arg-type]
    assert set(scores) == {f"{m}@{k}" for m in ("ndcg", "recall", "mrr") for k in (1, 10)}
    # dim 4: both relevant docs at rank 1
    assert scores["ndcg@10"][4] == pytest.approx(1.0)
    assert scores["mrr@10"][4] == pytest.approx(1.0)
    # dim 2: q1's relevant doc drops to rank 2 -> nDCG 1/log2(3), reciprocal rank 1/2; q2 stays at rank 1
    assert scores["ndcg@10"][2] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert scores["mrr@10"][2] == pytest.approx((0.5 + 1) / 2)
    assert scores["recall@10"][2] == pytest.approx(1.0)
    assert scores["recall@1"][2] == pytest.approx(0.5)
    assert scores["ndcg@1"][2] == pytest.approx(0.5)


def test_graded_relevance_agrees_with_ranx_and_trec_ndcg() -> None:
    qrels = {"q1": {"a": 2, "b": 1, "z": 1}, "q2": {"c": 1}}
    run = {"q1": {"b": 0.9, "x": 0.8, "a": 0.7}, "q2": {"y": 0.5, "c": 0.4}}
    got = ranx_scores(qrels, run, ["ndcg@3", "recall@3", "mrr@3"])
    # trec_eval / BEIR nDCG: gain = relevance, discount log2(rank + 1)
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    q2 = (1 / math.log2(3)) / 1
    assert got["ndcg@3"] == pytest.approx((dcg / ideal + q2) / 2)
    assert got["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert got["mrr@3"] == pytest.approx((1 + 0.5) / 2)
    from ranx import Qrels, Run, evaluate

    expected = evaluate(Qrels(qrels), Run(run), ["ndcg@3", "recall@3", "mrr@3"])
    assert got == pytest.approx(expected)


def test_queries_without_results_count_as_zero() -> None:
    assert ranx_scores({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}}, ["mrr@10"]) == {
        "mrr@10": pytest.approx(0.5)
    }
    assert ranx_scores({"q1": {"a": 1}}, {}, ["ndcg@10"]) == {"ndcg@10": 0.0}


def test_depth_is_clamped_and_dims_are_checked() -> None:
    scores = evaluate_retrieval(HAND, HAND_DATA, dims=[4], k_values=(100,))  # type: ignore[arg-type]
    assert scores["recall@100"][4] == pytest.approx(1.0)
    with pytest.raises(DimensionError, match="larger than"):
        evaluate_retrieval(HAND, HAND_DATA, dims=[8])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one dimension"):
        evaluate_retrieval(HAND, HAND_DATA, dims=[])  # type: ignore[arg-type]


def clustered_dataset(docs: int = 300, dim: int = 32, seed: int = 0) -> tuple[LookupModel, BeirDataset]:
    """Documents with a strong leading block (a Matryoshka-like prefix); each query is a noisy copy of one doc."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.3, dim)
    doc_vectors = rng.standard_normal((docs, dim)) * scale
    picked = rng.choice(docs, 40, replace=False)
    query_vectors = doc_vectors[picked] + rng.standard_normal((40, dim)) * scale * 0.3
    vectors = {f"doc {i}": v.tolist() for i, v in enumerate(doc_vectors)}
    vectors |= {f"query {j}": v.tolist() for j, v in enumerate(query_vectors)}
    data = BeirDataset(
        corpus={f"d{i}": f"doc {i}" for i in range(docs)},
        queries={f"q{j}": f"query {j}" for j in range(40)},
        qrels={f"q{j}": {f"d{i}": 1} for j, i in enumerate(picked)},
        name="clustered",
    )
    return LookupModel(vectors), data


def test_advisor_picks_the_cheapest_config_that_keeps_quality() -> None:
    model, data = clustered_dataset()
    report = advise(model, data, dims=[32, 16, 8], target=0.99, shortlists=(20, 100), repeats=1, model_name="lookup")  # type: ignore[arg-type]
    assert report.exact.name == "32:float32:10"
    assert report.exact.relative == 1.0 and report.exact.meets_target
    assert report.exact.ndcg > 0.8
    names = {row.name for row in report.rows}
    assert {
        "16:float32:10",
        "8:binary:20,32:float32:10",
        "16:int8:100,32:float32:10",
        "32:binary:100,32:float32:10",
    } <= names
    assert len(names) == len(report.rows) == 1 + len(candidate_configs([32, 16, 8], 32, 10, 300, (20, 100)))
    chosen = report.chosen
    assert chosen is not None and chosen.meets_target
    assert chosen.ndcg >= 0.99 * report.exact.ndcg
    qualified = [row for row in report.rows if row.meets_target]
    assert chosen.scan_bytes == min(row.scan_bytes for row in qualified)
    assert chosen.scan_bytes < report.exact.scan_bytes
    assert report.fastest is not None and report.fastest.meets_target
    assert report.fastest.qps == max(row.qps for row in qualified)
    for row in report.rows:
        assert row.qps > 0 and 0 <= row.overlap <= 1 and row.memory_bytes >= 32 * 4

    console = Console(record=True, width=200)
    console.print(report.table())
    text = console.export_text()
    assert "32:float32:10  (exact)" in text and "Advice:" in text and chosen.name in text
    assert json.loads(json.dumps(report.to_dict()))["chosen"]["name"] == chosen.name
    assert chosen.name in report.to_markdown()
    if report.fastest is not chosen:
        assert f"Fastest within the target here: {report.fastest.name}" in report.to_markdown()


def test_advisor_with_explicit_configs_and_an_unreachable_target() -> None:
    model, data = clustered_dataset(seed=1)
    configs = [parse_stages("8:float32:10"), parse_stages("8:float32:20,full:float32:10")]
    report = advise(model, data, dims=[], configs=configs, target=1.0, repeats=1)  # type: ignore[arg-type]
    assert {row.name for row in report.rows} == {"32:float32:10", "8:float32:10", "8:float32:20,32:float32:10"}
    assert report.chosen is not None  # exact always qualifies at target 1.0
    with pytest.raises(ValueError, match="target"):
        advise(model, data, dims=[8], target=1.5)  # type: ignore[arg-type]


def test_memory_per_vector() -> None:
    assert memory_per_vector([Stage(FULL, "float32", 10)], 384) == 1536
    assert memory_per_vector(parse_stages("64:binary:400,full:float32:10"), 384) == 1536 + 8
    assert (
        memory_per_vector(parse_stages("64:float32:400,128:int8:50,full:float32:10"), 384, "float16") == 768 + 256 + 128
    )


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "npl-vaswani").is_dir(), reason=f"no shared data at {SHARED}")
def test_real_model_on_an_npl_slice(monkeypatch) -> None:
    """The packaged model on 5 NPL queries and 150 documents: sane, ordered scores."""
    import torch

    from matryoshka.models.loading import load_model

    torch.set_num_threads(1)
    monkeypatch.setenv("MATRYOSHKA_DATA", str(SHARED))
    full = load_beir("npl")
    queries = dict(list(full.queries.items())[:5])
    relevant = {doc for q in queries for doc in full.qrels[q]}
    others = [doc for doc in full.corpus if doc not in relevant][: max(0, 150 - len(relevant))]
    corpus = {doc: full.corpus[doc] for doc in [*sorted(relevant), *others]}
    data = BeirDataset(corpus=corpus, queries=queries, qrels={q: full.qrels[q] for q in queries}, name="npl-slice")
    scores = evaluate_retrieval(load_model(), data, dims=[384, 32], k_values=(10,), batch_size=32)
    assert 0.2 < scores["ndcg@10"][384] <= 1.0
    assert scores["ndcg@10"][32] < scores["ndcg@10"][384]
    assert 0 < scores["recall@10"][384] <= 1.0
