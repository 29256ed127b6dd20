"""The retrieval table: the base, its rotation, the adaptor twins, the validated adaptor and the
fine-tuned models on one BEIR set."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from matryoshka.adapt import Adaptor, AdaptReport, Judgements, choose_adaptor
from matryoshka.data.beir import BeirDataset, load_beir
from matryoshka.embeddings.cache import cached_encode
from matryoshka.evaluation.retrieval import score_vectors
from matryoshka.experiments.compare.baselines import fit_adaptors
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.saved import save_adaptors
from matryoshka.models.loading import load_model


def _retrieval_set(config: CompareConfig) -> tuple[BeirDataset, list[tuple[str, str]]]:
    """The retrieval test set (on a sub-corpus in quick runs) and the (query, doc id) train pairs."""
    assert config.retrieval is not None
    test = load_beir(config.retrieval, split="test")
    train = load_beir(config.retrieval, split=config.pairs_split)
    pairs = [(train.queries[q], d) for q, judged in train.qrels.items() for d, r in judged.items()
             if r > 0 and d in train.corpus]
    if config.retrieval_corpus is not None:
        judged = {d for qrels in (test.qrels, train.qrels) for judged in qrels.values() for d in judged}
        others = sorted(set(test.corpus) - judged)
        rng = np.random.default_rng(config.seed)
        extra = {others[i] for i in rng.permutation(len(others))[: config.retrieval_corpus]}
        keep = judged | extra
        test = replace(test, corpus={d: t for d, t in test.corpus.items() if d in keep})
    return test, pairs


def _retrieval_scores(
    dataset: BeirDataset, docs: np.ndarray, queries: np.ndarray, dims: tuple[int, ...]
) -> dict[str, dict[int, float]]:
    return score_vectors(dataset.qrels, list(dataset.corpus), docs, list(dataset.queries), queries, dims)


def _validated_adaptor(
    docs: np.ndarray, pairs: list[tuple[str, str]], kept: list[int], pair_queries: np.ndarray, row: dict[str, int],
    config: CompareConfig,
) -> tuple[Adaptor, AdaptReport]:
    """``matryoshka adapt``'s validated choice on the retrieval set's documents and its train pairs."""
    relevant: dict[str, list[int]] = {}
    vectors: dict[str, np.ndarray] = {}
    for i in kept:
        query, doc = pairs[i]
        relevant.setdefault(query, []).append(row[doc])
        vectors[query] = pair_queries[i]
    judged = Judgements(np.stack([vectors[q] for q in relevant]), list(relevant.values()), list(relevant))
    return choose_adaptor(docs, judged, dims=config.dims,
                          config=replace(config.validated_adaptor, seed=config.seed))


def retrieval_rows(
    config: CompareConfig, base: Any, models: dict[str, Path], log: Callable[[str], None],
) -> tuple[dict[str, dict[str, dict[int, float]]], dict[str, Any]]:
    """Retrieval metrics (``{metric: {model: {dim: value}}}``) for the base, its rotation, the
    supervised adaptor twins and the fine-tuned ``models``; and facts about the fit."""
    dataset, pairs = _retrieval_set(config)
    doc_ids = list(dataset.corpus)
    started = time.perf_counter()
    docs = cached_encode(base, [dataset.corpus[d] for d in doc_ids], config.cache_dir, config.base_model)
    queries = cached_encode(base, list(dataset.queries.values()), config.cache_dir, config.base_model)
    row = {d: i for i, d in enumerate(doc_ids)}
    pair_queries = cached_encode(base, [q for q, _ in pairs], config.cache_dir, config.base_model)
    kept = [i for i, (_, d) in enumerate(pairs) if d in row]
    pair_vectors = (pair_queries[kept], docs[[row[pairs[i][1]] for i in kept]])
    encoded = time.perf_counter()
    adaptors = fit_adaptors(docs, config.adaptor, config.dims, pair_vectors)
    log(f"{dataset.name} adaptors fitted on {len(doc_ids):,} documents and {len(kept):,} {config.pairs_split} pairs "
        f"({encoded - started:.0f}s encoding, {time.perf_counter() - encoded:.0f}s fitting)")
    # What `matryoshka adapt --pairs` saves with its defaults: the validated choice between the rotation and
    # the learned map, on the same documents and train pairs.
    validated, report = _validated_adaptor(docs, pairs, kept, pair_queries, row, config)
    adaptors["base+adapt"] = validated
    log(f"{dataset.name} validated adapt: {report.chosen} ({report.reason})")
    per_model = {"base": _retrieval_scores(dataset, docs, queries, config.dims)}
    for label, adaptor in adaptors.items():
        per_model[label] = _retrieval_scores(dataset, adaptor.apply(docs), adaptor.apply(queries), config.dims)
    for label, path in models.items():
        model = load_model(path)
        log(f"encoding {len(doc_ids):,} {dataset.name} documents with {label}")
        model_docs = cached_encode(model, [dataset.corpus[d] for d in doc_ids], config.cache_dir, path)
        model_queries = cached_encode(model, list(dataset.queries.values()), config.cache_dir, path)
        per_model[label] = _retrieval_scores(dataset, model_docs, model_queries, config.dims)
    metrics: dict[str, dict[str, dict[int, float]]] = {}
    for label, by_metric in per_model.items():
        for metric, by_dim in by_metric.items():
            metrics.setdefault(metric, {})[label] = by_dim
    info = {"name": dataset.name, "corpus": len(doc_ids), "queries": len(dataset.queries), "train_pairs": len(kept),
            "sub_corpus": config.retrieval_corpus is not None,
            "seconds": {k: a.info.get("seconds") for k, a in adaptors.items()},
            "adapt": {**report.summary(), "validation": {k: v.means() for k, v in report.rows.items()},
                      "seconds": report.seconds}}
    if config.save_models:
        info["saved"] = save_adaptors(config.out, dataset.name, base, adaptors, reports={"base+adapt": report})
    return metrics, info
