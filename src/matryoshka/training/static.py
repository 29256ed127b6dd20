"""Build a static Matryoshka model from any sentence-transformer: model2vec distillation, then training.

A static model looks up one vector per token and averages them, so it encodes a text with no
transformer forward pass: tens to hundreds of times faster on a CPU. Two steps, each from the field's
own library:

1. **Distill** with model2vec (``model2vec.distill.distill_from_model``): every token of the
   vocabulary is run through the transformer once, and the token vectors are reduced by PCA to
   ``pca_dims``. PCA orders the output dimensions by variance, so the prefixes are nested from the
   start; this is the "plain distillation" model.
2. **Train** (optional) with :func:`matryoshka.training.train.train`: the ``distill`` objective teaches the
   static student the *transformer's* full-size cosines on local text pairs, and ``MatryoshkaLoss``
   applies that loss at every prefix. Plain PCA nesting loses much of the quality at small sizes;
   this step is what keeps it.

The result is a plain sentence-transformers model with a single ``StaticEmbedding`` module, so
``SentenceTransformer(path)`` loads it without this package and every ``matryoshka`` command takes it.

Example:
    >>> from matryoshka.training.static import StaticConfig, build_static
    >>> built = build_static(None, "runs/static/minilm-static-mrl", StaticConfig())  # doctest: +SKIP
    >>> built.model.encode(["hello"], truncate_dim=64).shape  # doctest: +SKIP
    (1, 64)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.errors import ModelLoadError, StaticBuildError
from matryoshka.files import save_model_atomic
from matryoshka.models.loading import load_model, model_dimension, resolve_model_name
from matryoshka.training import teachers
from matryoshka.training.train import TrainConfig, TrainResult, pair_dataset, train

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

#: Local text-pair sources for the training step. Only train/dev splits: ``snli-dev`` is SNLI's dev
#: split (the toolkit's ``snli`` source also holds SNLI test, which a model chosen on held-out data
#: must not see); ``stsb`` is STS-B train; ``wordnet`` pairs a lemma with its gloss.
STATIC_SOURCES = ("stsb", "snli-dev", "wordnet")
#: The training pairs chosen on STS-B dev (``benchmarks/static_dev.py``).
DEFAULT_SOURCES: tuple[str, ...] = ("stsb", "snli-dev", "wordnet:10000")

# model2vec names its pooling modes after the token it reads; sentence-transformers after the operation.
_POOLING = {"mean": "mean", "cls": "first", "lasttoken": "last"}



@dataclass
class StaticConfig:
    """Settings of ``matryoshka static``: the distillation, then the optional training step.

    Attributes:
        pca_dims: the static model's full size, the components model2vec's PCA keeps (``None``: the
            transformer's own size, a rotation onto the principal axes that drops nothing).
        sif_coefficient: model2vec's SIF down-weighting of frequent tokens (``None``: off).
        vocabulary: extra words for model2vec's tokenizer (``None``: the transformer's own subwords).
        train: run the training step after distillation.
        sources: local pair sources (see :data:`STATIC_SOURCES`, each with an optional ``:cap``) when
            ``rows`` is not given.
        max_pairs: cap on training pairs (``None``: all).
        training: the training run (defaults chosen on STS-B dev); empty ``dims`` mean
            :meth:`dims_for` the full size; it must use the ``distill`` objective.
        cache_dir: where the teacher's embeddings of the training texts are kept between runs.
    """

    pca_dims: int | None = None
    sif_coefficient: float | None = 1e-4
    vocabulary: tuple[str, ...] | None = None
    train: bool = True
    sources: tuple[str, ...] = DEFAULT_SOURCES
    max_pairs: int | None = None
    training: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            objective="distill", distill_loss="inbatch", dims=(), learning_rate=0.03, batch_size=256,
            epochs=10.0, weights=None,
        )
    )
    cache_dir: Path | None = Path("runs/cache")

    def validate(self, full_dim: int) -> None:
        """Raise :class:`StaticBuildError` for settings that cannot build from a ``full_dim`` model."""
        if self.pca_dims is None:
            pass
        elif isinstance(self.pca_dims, bool) or not isinstance(self.pca_dims, int):
            raise StaticBuildError(f"pca_dims must be an integer, got {self.pca_dims!r}")
        elif not 2 <= self.pca_dims <= full_dim:
            raise StaticBuildError(f"pca_dims must be in 2..{full_dim} (the model's size), got {self.pca_dims}")
        if self.sif_coefficient is not None and not 0 < self.sif_coefficient < 1:
            raise StaticBuildError(f"sif_coefficient must be in (0, 1), got {self.sif_coefficient}")
        if self.training.objective != "distill":
            raise StaticBuildError(f"the static training step uses the distill objective, got {self.training.objective!r}")
        for source in self.sources:
            parse_source(source)

    @staticmethod
    def dims_for(full_dim: int) -> tuple[int, ...]:
        """The Matryoshka sizes trained by default: :func:`~matryoshka.embeddings.vectors.dimension_ladder`."""
        return tuple(dimension_ladder(full_dim))


@dataclass
class StaticBuild:
    """The built model, where it was saved, and what each step cost."""

    model: SentenceTransformer
    output_dir: Path
    info: dict[str, Any]


def distill_static(
    teacher: SentenceTransformer,
    pca_dims: int | None = None,
    sif_coefficient: float | None = 1e-4,
    vocabulary: Sequence[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> SentenceTransformer:
    """model2vec's distillation of ``teacher`` as a sentence-transformers ``StaticEmbedding`` model.

    The teacher's first module must be a transformer; its pooling (mean, CLS or last token) is the
    pooling model2vec distills with. ``pca_dims=None`` keeps the teacher's size. ``source`` is only
    recorded as the model's base.

    Raises:
        StaticBuildError: the teacher has no transformer module, or ``pca_dims`` is out of range.
    """
    from model2vec.distill import distill_from_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer

    full_dim = model_dimension(teacher)
    StaticConfig(pca_dims=pca_dims, sif_coefficient=sif_coefficient).validate(full_dim)
    pca_dims = pca_dims or full_dim
    first = teacher[0]
    if not isinstance(first, Transformer) or first.tokenizer is None:
        raise StaticBuildError(f"model2vec distills a transformer; the model's first module is {type(first).__name__}")
    second = teacher[1] if len(teacher) > 1 else None
    pooling = _POOLING.get(str(second.pooling_mode), "mean") if isinstance(second, Pooling) else "mean"
    distilled = distill_from_model(
        model=first.auto_model,
        tokenizer=first.tokenizer,
        vocabulary=list(vocabulary) if vocabulary else None,
        device="cpu",
        pca_dims=pca_dims,
        sif_coefficient=sif_coefficient,
        quantize_to="float32",
        pooling=pooling,
    )
    weights = np.asarray(distilled.embedding, dtype=np.float32)
    if weights.shape[1] != pca_dims:  # model2vec skips PCA, with a warning, when the vocabulary is smaller
        raise StaticBuildError(f"pca_dims={pca_dims} needs more than {weights.shape[0]} vocabulary entries "
                               f"(model2vec kept {weights.shape[1]} dims)")
    static = StaticEmbedding(distilled.tokenizer, embedding_weights=weights,
                             base_model=str(source) if source is not None else None)
    return SentenceTransformer(modules=[static], device="cpu")


def parse_source(source: str) -> tuple[str, int | None]:
    """``"wordnet:10000"`` -> ``("wordnet", 10000)``: a pair source and an optional cap on its pairs."""
    name, _, cap = source.partition(":")
    if name not in STATIC_SOURCES:
        raise StaticBuildError(f"unknown pair source {name!r}; choose from {', '.join(STATIC_SOURCES)}")
    if not cap:
        return name, None
    if not cap.isdigit() or int(cap) == 0:
        raise StaticBuildError(f"a pair source's cap must be a positive integer, got {source!r}")
    return name, int(cap)


def static_training_pairs(
    sources: Sequence[str] = DEFAULT_SOURCES,
    seed: int = 0,
    exclude: Sequence[str] = (),
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """De-duplicated, shuffled local text pairs for the training step; pairs with a text in ``exclude`` are dropped.

    A source may carry a cap, ``"wordnet:10000"`` (the first pairs of its own shuffled order).
    ``exclude`` guards evaluation text (STS-B dev and test sentences) from reaching training through a
    source that shares sentences with it (STS-B's track5 is drawn from SNLI).
    """
    import random

    from matryoshka.data.local import data_root, find_file
    from matryoshka.data.nli import read_nli_file
    from matryoshka.data.pairs import load_distillation_pairs

    banned = set(exclude)
    pairs: list[tuple[str, str]] = []
    for source in sources:
        name, cap = parse_source(source)
        if name == "snli-dev":
            root = data_root()
            if root is None:
                raise StaticBuildError("the snli-dev source needs MATRYOSHKA_DATA (snli/snli_dev.tsv)")
            found = [(p, h) for p, h, _ in read_nli_file(find_file(root / "snli", "snli_dev.tsv"))]
            random.Random(seed).shuffle(found)
        else:
            found = load_distillation_pairs([name], seed=seed)
        found = [p for p in dict.fromkeys(found) if p[0] not in banned and p[1] not in banned]
        pairs.extend(found[:cap])
    unique = list(dict.fromkeys(pairs))
    random.Random(seed).shuffle(unique)
    return unique[:limit] if limit is not None else unique


def evaluation_sentences() -> list[str]:
    """Every STS-B dev and test sentence: text the training step must never see."""
    from matryoshka.data import load_sts

    return [s for split in ("dev", "test") for p in load_sts(split) for s in (p.sentence1, p.sentence2)]


def teacher_table(
    rows: Sequence[tuple[str, str]],
    teacher: SentenceTransformer,
    cache_dir: str | os.PathLike[str] | None,
    teacher_name: str | os.PathLike[str] | None,
) -> torch.Tensor:
    """The teacher's full-size unit vectors of both texts of every pair, ``(pairs, 2, dim)``, cached on disk.

    :func:`~matryoshka.training.teachers.teacher_table` through the cache, under the name tests and
    benchmarks import.
    """
    return teachers.teacher_table(rows, teacher, columns=2, cache=teachers.TeacherCache(cache_dir, teacher_name))


def train_static(
    student: SentenceTransformer,
    teacher: SentenceTransformer,
    rows: Sequence[tuple[str, str]],
    config: TrainConfig,
    output_dir: str | os.PathLike[str],
    table: torch.Tensor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    teacher_name: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> TrainResult:
    """Self-distil ``teacher`` into the static ``student`` on ``rows`` with :func:`matryoshka.training.train.train`.

    ``config.dims`` empty means :meth:`StaticConfig.dims_for` the student's size. ``table`` (the
    teacher's vectors of ``rows``) is computed, through the cache, when not given.
    """
    full_dim = model_dimension(student)
    if not config.dims:
        config = replace(config, dims=StaticConfig.dims_for(full_dim))
    if table is None:
        table = teachers.teacher_table(rows, teacher, columns=2, cache=teachers.TeacherCache(cache_dir, teacher_name))
    dataset = pair_dataset(rows, table, config.distill_loss)
    return train(student, config, output_dir, train_dataset=dataset, teacher_table=table, progress=progress)


def build_static(
    model: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    config: StaticConfig | None = None,
    rows: Sequence[tuple[str, str]] | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> StaticBuild:
    """Distil ``model`` into a static model, train it when ``config.train``, and save it to ``output_dir``.

    Args:
        model: the sentence-transformer (a local directory, or ``None`` for the packaged default).
        output_dir: where the model is saved, atomically; ``SentenceTransformer(output_dir)`` loads it.
        config: the build's settings; defaults to :class:`StaticConfig`'s.
        rows: training text pairs instead of ``config.sources``.
        progress: called as ``progress(step, total_steps, loss)`` during training.
        log: receives one line per finished step.

    Raises:
        matryoshka.models.loading.ModelLoadError: ``model`` cannot be loaded.
        StaticBuildError: the settings do not fit the model.
    """
    config = config or StaticConfig()
    if model is not None and not Path(resolve_model_name(model)).exists() and os.environ.get("HF_HUB_OFFLINE"):
        raise ModelLoadError(f"no model directory at {model} (and HF_HUB_OFFLINE is set, so no hub download)")
    teacher = load_model(model, device="cpu")
    full_dim = model_dimension(teacher)
    config.validate(full_dim)
    pca_dims = config.pca_dims or full_dim
    started = time.perf_counter()
    student = distill_static(teacher, pca_dims, config.sif_coefficient, config.vocabulary,
                             source=resolve_model_name(model))
    distill_seconds = time.perf_counter() - started
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    static_module = student[0]
    assert isinstance(static_module, StaticEmbedding)
    vocabulary = static_module.tokenizer.get_vocab_size()
    log(f"distilled {vocabulary:,} tokens to {pca_dims} dims with model2vec ({distill_seconds:.0f}s)")
    info: dict[str, Any] = {
        "base_model": resolve_model_name(model),
        "pca_dims": pca_dims,
        "sif_coefficient": config.sif_coefficient,
        "vocabulary": vocabulary,
        "distill_seconds": round(distill_seconds, 1),
        "trained": config.train,
    }
    if not config.train:
        save_model_atomic(student, output_dir)
        return StaticBuild(student, Path(output_dir), info)
    info["sources"] = list(config.sources) if rows is None else "rows"
    if rows is None:
        rows = static_training_pairs(config.sources, config.training.seed, exclude=evaluation_sentences(),
                                     limit=config.max_pairs)
    else:
        rows = [(r[0], r[1]) for r in rows][: config.max_pairs]
    result = train_static(student, teacher, rows, config.training, output_dir, cache_dir=config.cache_dir,
                          teacher_name=model, progress=progress)
    log(f"trained {result.steps} steps on {result.examples:,} pairs ({result.seconds:.0f}s)")
    info["train"] = result.summary()
    return StaticBuild(result.model, result.output_dir, info)
