"""The validated choice: fit every candidate, score it on held-out data, keep the best that earns it.

The free rotation is the floor. A learned map replaces it only when, on held-out data, it is at least
the rotation (less ``tolerance``) at every asked dimension, at least the untouched model (less
``full_tolerance``) at full size, and better than the rotation by ``min_gain`` on average over the
asked dimensions, with a 95% interval of that average gain above zero. Otherwise the rotation is saved, and the report says why in one line.

Example:
    >>> adaptor, report = choose_adaptor(corpus_vectors, judgements)   # doctest: +SKIP
    >>> report.chosen, report.reason                                    # doctest: +SKIP
    ('learned', 'learned beats the rotation by 4.1 points on average ...')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from matryoshka.adapt.adaptor import AdaptError, Adaptor, Method, checked_unit_rows
from matryoshka.adapt.learned import LearnedConfig, fit_learned, pair_set_from_judgements
from matryoshka.adapt.report import AdaptReport, CandidateScores
from matryoshka.adapt.rotation import fit_rotation
from matryoshka.adapt.validation import Judgements, NeighbourTask, ValidationConfig, retrieval_scores
from matryoshka.embeddings.vectors import check_dim, dimension_ladder

#: ``progress(stage, step, steps)``: what is being fitted and how far it is.
Progress = Callable[[str, int, int], None]


def choose_adaptor(
    corpus_vectors: np.ndarray,
    judgements: Judgements | None = None,
    method: Method = "auto",
    dims: Sequence[int] | None = None,
    config: LearnedConfig | None = None,
    validation: ValidationConfig | None = None,
    progress: Progress | None = None,
) -> tuple[Adaptor, AdaptReport]:
    """Fit the candidates for ``method``, validate them and return the adaptor to save with its report.

    Args:
        corpus_vectors: the frozen model's vectors of the corpus.
        judgements: labelled queries (supervised); ``None`` validates without labels.
        method: ``auto`` (rotation and a learned map, the validated choice), ``rotation`` (no
            training; still scored), or ``learned`` (the learned map is saved even where it does not
            earn it; the report and ``report.warnings`` say so).
        dims: the prefixes the result must serve (default: the model's ladder).
        config: the learned map's settings (its dims default to ``dims``).
        validation: how candidates are checked.
        progress: ``progress(stage, step, steps)`` while fitting.
    """
    started = time.perf_counter()
    corpus = checked_unit_rows(corpus_vectors, "corpus vectors")
    full = corpus.shape[1]
    asked = sorted({check_dim(int(d), full) for d in (dims or dimension_ladder(full))} | {full}, reverse=True)
    config = config or LearnedConfig()
    if config.dims is None:
        config = replace(config, dims=tuple(asked))
    config.validate(full)
    validation = validation or ValidationConfig()
    validation.check()
    if method not in ("auto", "rotation", "learned"):
        raise AdaptError(f"method must be auto, rotation or learned, got {method!r}")
    rotation = fit_rotation(corpus)
    supervised = judgements is not None and len(judgements.relevant) >= validation.min_queries
    report = AdaptReport(method=method, dims=asked, full_dim=full, corpus_vectors=len(corpus),
                         validation=validation, config=config)
    if judgements is not None and not supervised:
        report.warnings.append(f"{len(judgements.relevant)} labelled queries are too few to validate a supervised "
                               f"map (at least {validation.min_queries}); the learned map and its check use no labels")
    if supervised:
        assert judgements is not None
        learned = _supervised(corpus, judgements, rotation, asked, config, validation, report, method, progress)
    else:
        learned = _unsupervised(corpus, rotation, asked, config, validation, report, method, progress)
    report.decide(method)
    # the refit on all the data runs only for a map that is kept
    chosen = learned() if report.chosen == "learned" and learned is not None else rotation
    report.seconds["total"] = round(time.perf_counter() - started, 3)
    chosen.info["validated"] = report.summary()
    return chosen, report


def _supervised(
    corpus: np.ndarray, judgements: Judgements, rotation: Adaptor, dims: list[int], config: LearnedConfig,
    validation: ValidationConfig, report: AdaptReport, method: str, progress: Progress | None,
) -> Callable[[], Adaptor] | None:
    """Out-of-fold scores of base, rotation and (unless ``rotation`` was asked) the supervised map; returns
    what makes the map to save (the refit on all queries), or ``None`` when there is none."""
    folds = validation.query_folds(len(judgements.relevant))
    everyone = np.arange(len(judgements.relevant))
    report.signal = "nDCG@10 of held-out labelled queries against the whole corpus"
    report.scheme = {"kind": "holdout" if len(folds) == 1 else "cross-validation", "folds": len(folds),
                     "labelled_queries": len(judgements.relevant),
                     "validation_queries": int(sum(len(f) for f in folds)), "seed": validation.seed,
                     "held_out": [[judgements.names[i] for i in fold] for fold in folds]}
    checks = [judgements.subset(fold) for fold in folds]
    names = [check.names for check in checks]
    rotation_scores = [retrieval_scores(rotation.weight, corpus, check, dims) for check in checks]
    report.rows["base"] = CandidateScores.concat([retrieval_scores(None, corpus, check, dims) for check in checks], names)
    report.rows["rotation"] = CandidateScores.concat(rotation_scores, names)
    if method == "rotation":
        return None
    curves: list[list[tuple[int, float]]] = []
    snapshots: list[dict[int, np.ndarray]] = []
    for number, (held, check) in enumerate(zip(folds, checks)):
        train = judgements.subset(np.setdiff1d(everyone, held))
        recorder = _Recorder(corpus, check, dims)
        started = time.perf_counter()
        fitted = fit_learned(
            corpus, config, pair_set_from_judgements(train.queries, train.relevant, corpus), init=rotation,
            progress=_stage(progress, f"fold {number + 1}/{len(folds)}"), monitor=recorder,
        )
        report.seconds[f"fit fold {number + 1}"] = round(time.perf_counter() - started, 3)
        curves.append(fitted.info["monitor_curve"])
        snapshots.append(dict(zip((step for step, _ in curves[-1]), recorder.weights)))
    # Every fold is scored at the one step count the refit will use (chosen on the folds' mean curve),
    # not at its own best step, which its own held-out queries chose.
    steps = _best_steps(curves)
    fold_scores = [retrieval_scores(snapshot[steps], corpus, check, dims) for snapshot, check in zip(snapshots, checks)]
    report.rows["learned"] = CandidateScores.concat(fold_scores, names)
    report.fold_rows = {"learned": [CandidateScores.of(s) for s in fold_scores],
                        "rotation": [CandidateScores.of(s) for s in rotation_scores]}
    report.learned = {"steps_chosen": steps, "curves": curves, "pairs": sum(len(r) for r in judgements.relevant),
                      "refit": False}
    if steps == 0:
        return None
    if not validation.refit and len(folds) == 1:
        kept = Adaptor(weight=snapshots[0][steps], method="learned",
                       info={"steps": steps, "validated_fit": "fitted without the held-out queries; scored on them"})
        return lambda: kept
    pairs = pair_set_from_judgements(judgements.queries, judgements.relevant, corpus)
    return lambda: _timed_refit(report, lambda: fit_learned(
        corpus, replace(config, steps=steps), pairs, init=rotation, progress=_stage(progress, "refit on all queries")))


def _unsupervised(
    corpus: np.ndarray, rotation: Adaptor, dims: list[int], config: LearnedConfig, validation: ValidationConfig,
    report: AdaptReport, method: str, progress: Progress | None,
) -> Callable[[], Adaptor] | None:
    """Scores of base, rotation and the unsupervised map on the label-free signal (held-out texts); returns
    what makes the map to save (the refit on all texts), or ``None`` when there is none."""
    report.signal = f"share of each held-out text's full-size top {validation.neighbours} neighbours a prefix finds"
    try:
        task, fit_rows = NeighbourTask.carve(corpus, validation)
    except AdaptError as exc:
        if method == "learned":
            raise
        report.warnings.append(str(exc))
        report.scheme = {"kind": "none"}
        return None
    report.scheme = {"kind": "held-out texts", "held_out_texts": len(task.held), "fit_texts": len(fit_rows),
                     "seed": validation.seed}
    fit_corpus = corpus[fit_rows]
    fit_rotation_ = fit_rotation(fit_corpus)
    report.rows["base"] = CandidateScores.of(task.scores(None, dims))
    report.rows["rotation"] = CandidateScores.of(task.scores(fit_rotation_.weight, dims))
    if method == "rotation":
        return None
    started = time.perf_counter()
    fitted = fit_learned(fit_corpus, config, init=fit_rotation_, progress=_stage(progress, "fit"),
                         monitor=lambda weight: _mean_score(task.scores(weight, dims)))
    report.seconds["fit"] = round(time.perf_counter() - started, 3)
    report.rows["learned"] = CandidateScores.of(task.scores(fitted.weight, dims))
    steps = int(fitted.info["steps"])
    report.learned = {"steps_chosen": steps, "curves": [fitted.info["monitor_curve"]], "refit": False}
    if steps == 0:
        return None
    return lambda: _timed_refit(report, lambda: fit_learned(
        corpus, replace(config, steps=steps), init=rotation, progress=_stage(progress, "refit on all texts")))


def _timed_refit(report: AdaptReport, fit: Callable[[], Adaptor]) -> Adaptor:
    started = time.perf_counter()
    refitted = fit()
    report.seconds["refit"] = round(time.perf_counter() - started, 3)
    report.learned["refit"] = True
    return refitted


class _Recorder:
    """A fit's monitor: nDCG@10 of held-out queries, averaged over the dims; keeps every map it scored."""

    def __init__(self, corpus: np.ndarray, check: Judgements, dims: list[int]) -> None:
        self.corpus, self.check, self.dims = corpus, check, dims
        self.weights: list[np.ndarray] = []

    def __call__(self, weight: np.ndarray) -> float:
        self.weights.append(weight)
        return _mean_score(retrieval_scores(weight, self.corpus, self.check, self.dims, (10,)))


def _mean_score(scores: dict[str, dict[int, np.ndarray]]) -> float:
    """The early-stopping criterion: the first metric's mean over queries and dims."""
    by_dim = next(iter(scores.values()))
    return float(np.mean([values.mean() for values in by_dim.values()]))


def _best_steps(curves: list[list[tuple[int, float]]]) -> int:
    """The step count whose score, averaged over the folds' curves, is highest (the earliest on ties).

    Only steps every fold reached count: a fold that stopped early (patience) would otherwise leave the
    later steps to the folds that were still improving, an optimistic average.
    """
    lookup = [dict(curve) for curve in curves]
    steps = sorted(set.intersection(*(set(c) for c in lookup)))
    means = [np.mean([c[s] for c in lookup]) for s in steps]
    return int(steps[int(np.argmax(means))])


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int, float], None] | None:
    if progress is None:
        return None
    return lambda step, steps, _loss: progress(stage, step, steps)
