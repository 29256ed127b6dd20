"""Train Matryoshka models, and the same model the standard way, with sentence-transformers.

Three recipes share one code path, so that a Matryoshka run and its standard baseline differ only in
the loss wrapper (same seed, data, order and hyper-parameters):

- ``nli``: ``MultipleNegativesRankingLoss`` on NLI triplets (anchor, entailment, contradiction), the
  experiment of the Matryoshka article.
- ``distill``: self-distillation on unlabelled text pairs: every prefix of the student learns the
  similarities of the untouched full-size model (the teacher). With ``distill_loss="cosent"`` each
  pair's label is the teacher's cosine and ``CoSENTLoss`` ranks the pairs of a batch by it; with
  ``"inbatch"`` :class:`~matryoshka.training.losses.InBatchSimilarityDistillationLoss` matches the teacher's
  cosines between *all* texts of the batch, the signal a model trained from scratch needs. This holds
  the full-size quality and lifts the small sizes on a small corpus.
- ``retrieval``: ``MultipleNegativesRankingLoss`` on (query, document[, negatives]) rows, with an
  optional term (``distill_weight``) that keeps the untouched model's full-size similarities.

Any recipe reads the user's own data with ``data=`` (a JSONL/CSV/Parquet file, a hub data set or a
BEIR directory, see :mod:`matryoshka.data.user`); one text column self-distills with the in-batch loss.

With ``matryoshka=True`` the base loss is wrapped in ``MatryoshkaLoss(dims, weights)``; with
``layers=True`` in ``Matryoshka2dLoss`` (layers × dims), so a model cut to its first layers still works.

Example:
    >>> from matryoshka import load_model
    >>> from matryoshka.training.train import TrainConfig, train
    >>> result = train(load_model(), TrainConfig(max_steps=100), output_dir="runs/mrl")  # doctest: +SKIP
    >>> result.model.encode(["hello"], truncate_dim=64).shape  # doctest: +SKIP
    (1, 64)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import (
    AdaptiveLayerLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    Matryoshka2dLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.errors import DataError, InputError
from matryoshka.files import save_model_atomic
from matryoshka.models.loading import model_dimension
from matryoshka.training import teachers
from matryoshka.training.losses import InBatchSimilarityDistillationLoss, RankingDistillationLoss, check_prefixes

Objective = Literal["distill", "nli", "retrieval", "sts"]
DistillLoss = Literal["cosine", "cosent", "inbatch", "vector"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; defaults run on a 2-core CPU.

    Attributes:
        objective: ``distill`` (self-distillation on text pairs), ``nli`` (MNRL on NLI triplets),
            ``retrieval`` (MNRL on query-document pairs, e.g. ``data="scifact"``) or ``sts`` (CoSENT
            on STS-B train's gold similarity scores, sentence-transformers' ``matryoshka_sts`` recipe).
        distill_loss: for ``distill``: ``cosent`` (default; a ranking loss on the teacher's cosine per
            pair), ``cosine`` (squared error on it), ``inbatch`` (all pairs of texts) or ``vector``
            (``inbatch`` plus each text's vector pulled toward the teacher's; best for a student cut
            to fewer layers of the teacher).
        matryoshka: wrap the loss in ``MatryoshkaLoss``; ``False`` trains the standard baseline.
        dims: truncation sizes scored by ``MatryoshkaLoss``; must include the full size. Empty: the
            model's own ladder (:func:`~matryoshka.embeddings.vectors.dimension_ladder`), taken by :func:`train`.
        weights: one weight per entry of ``dims``; ``None`` weighs all equally.
        batch_size: rows per step (a pair is two texts, a triplet three).
        learning_rate: peak learning rate after linear warm-up.
        epochs: passes over the data, used when ``max_steps`` is ``None``.
        max_steps: stop after this many optimizer steps.
        warmup_ratio: share of the steps spent warming up.
        seed: seeds data order, dropout and initialisation.
        pair_sources: local pair sources for ``distill`` (see :mod:`matryoshka.data.pairs`).
        max_examples: cap on the training rows loaded.
        checkpoint_steps: also save a checkpoint every this many steps under ``<output_dir>.checkpoints``.
        show_progress_bar: a progress bar over training steps.
        data: the user's training data (file, hub data set or BEIR directory); ``None`` uses the
            built-in sources of the objective (``retrieval`` has none and needs it).
        data_split: split of a hub data set or BEIR directory.
        distill_weight: for ``retrieval``: weight of the term that keeps the untouched model's
            full-size cosines between the batch's texts (0 turns it off).
        max_seq_length: cap on tokens per training text (``None``: the model's own); the trained
            model keeps its own cap for encoding.
        layers: also train every layer count (``Matryoshka2dLoss``, or ``AdaptiveLayerLoss`` for the
            standard twin), so the first layers alone give usable embeddings and encoding with
            ``load_model(..., layers=N)`` is faster.
    """

    objective: Objective = "distill"
    distill_loss: DistillLoss = "cosent"
    matryoshka: bool = True
    dims: tuple[int, ...] = ()
    weights: tuple[float, ...] | None = None
    batch_size: int = 32
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    seed: int = 0
    pair_sources: tuple[str, ...] = ("stsb", "snli")
    max_examples: int | None = None
    checkpoint_steps: int | None = None
    show_progress_bar: bool = True
    data: str | None = None
    data_split: str = "train"
    distill_weight: float = 0.0
    max_seq_length: int | None = None
    layers: bool = False

    def dims_for(self, full_dim: int) -> tuple[int, ...]:
        """The sizes trained for a ``full_dim``-d model: ``dims``, or the model's ladder when empty."""
        return self.dims or tuple(dimension_ladder(full_dim))

    def validate(self, full_dim: int) -> None:
        """Raise :class:`InputError` for settings that cannot train ``full_dim``-dimensional models."""
        if self.objective not in get_args(Objective):
            raise InputError(f"objective must be 'distill', 'nli', 'retrieval' or 'sts', got {self.objective!r}")
        if self.objective == "sts" and self.data is not None:
            raise InputError("the sts objective trains on STS-B train's gold scores; it takes no --data")
        if self.objective == "retrieval" and self.data is None:
            raise InputError("the retrieval objective needs data: a file or BEIR set of (anchor, positive) rows")
        if self.distill_weight < 0:
            raise InputError("distill_weight must not be negative")
        if self.distill_loss not in get_args(DistillLoss):
            raise InputError(f"distill_loss must be 'cosine', 'cosent', 'inbatch' or 'vector', got {self.distill_loss!r}")
        check_prefixes(self.dims_for(full_dim), self.weights, full_dim, need_full=self.matryoshka)
        if self.batch_size < 2:
            raise InputError("batch_size must be at least 2 (in-batch losses need other rows)")
        if self.learning_rate <= 0:
            raise InputError("learning_rate must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError("max_steps must be positive")


@dataclass
class TrainResult:
    """The trained model, where it was saved, and what the run cost."""

    model: SentenceTransformer
    output_dir: Path
    seconds: float
    steps: int
    examples: int
    config: TrainConfig
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts about the run."""
        return {
            "output_dir": str(self.output_dir),
            "seconds": round(self.seconds, 1),
            "steps": self.steps,
            "examples": self.examples,
            "final_loss": self.losses[-1] if self.losses else None,
            "config": asdict(self.config),
        }


def pair_dataset(pairs: Sequence[Sequence[str]], table: torch.Tensor, distill_loss: DistillLoss) -> Dataset:
    """Pairs labelled for ``distill_loss``: the teacher's cosine (``cosine``, ``cosent``) or the row's table index (``inbatch``, ``vector``)."""
    if distill_loss in ("cosine", "cosent"):
        unit = torch.nn.functional.normalize(table.float(), dim=-1)
        labels: list[float] | list[int] = (unit[:, 0] * unit[:, 1]).sum(-1).tolist()
    else:
        labels = list(range(len(pairs)))
    return Dataset.from_dict({"sentence1": [p[0] for p in pairs], "sentence2": [p[1] for p in pairs], "label": labels})


def load_rows(config: TrainConfig, rows: Sequence[Sequence[str]] | None = None) -> list[tuple[str, ...]]:
    """Training rows for ``config``: ``rows`` if given, else the user's data, NLI triplets or pairs, capped."""
    from matryoshka.data import load_distillation_pairs, load_nli_triplets

    if rows is not None:
        loaded = [tuple(r) for r in rows]
    elif config.data is not None:
        loaded = user_rows(config)
        rng = np.random.default_rng(config.seed)
        loaded = [loaded[i] for i in rng.permutation(len(loaded))]
    elif config.objective == "nli":
        loaded = [(t.anchor, t.positive, t.negative) for t in load_nli_triplets()]
        rng = np.random.default_rng(config.seed)
        loaded = [loaded[i] for i in rng.permutation(len(loaded))]
    else:
        loaded = list(load_distillation_pairs(config.pair_sources, seed=config.seed))
    return loaded[: config.max_examples]


def user_rows(config: TrainConfig) -> list[tuple[str, ...]]:
    """The rows of ``config.data``, checked against what the objective needs."""
    from matryoshka.data.user import load_training_data

    assert config.data is not None
    data = load_training_data(config.data, split=config.data_split)
    if config.objective in ("retrieval", "nli") and data.kind != "pairs":
        raise DataError(f"the {config.objective} objective needs 'anchor' and 'positive' columns, found {list(data.columns)}",
                        config.data)
    if config.objective == "nli" and len(data.columns) < 3:
        raise DataError("the nli objective needs a 'negative' column (anchor, positive, negative triplets)", config.data)
    if config.objective == "distill" and data.kind == "pairs":
        return [row[:2] for row in data.rows]
    return data.rows


def build_dataset(
    config: TrainConfig, teacher: SentenceTransformer | None = None, rows: Sequence[Sequence[str]] | None = None
) -> tuple[Dataset, torch.Tensor | None]:
    """The training rows for ``config.objective`` and, when a loss needs it, the teacher's embedding table.

    ``rows`` overrides the data loaded from disk or the hub (pairs for ``distill``, triplets for
    ``nli``, (query, document[, negatives]) for ``retrieval``; single texts self-distill in-batch).
    """
    if config.objective == "sts" and rows is None:
        return gold_sts_dataset(config), None
    loaded = load_rows(config, rows)
    if not loaded:
        raise InputError("no training rows")
    columns = teachers.row_columns(loaded)
    if config.objective in ("nli", "retrieval", "sts"):
        if columns < 2:
            raise InputError(f"the {config.objective} objective needs rows of at least (anchor, positive)")
        names = ["anchor", "positive"] + [f"negative_{i}" if i > 1 else "negative" for i in range(1, columns - 1)]
        data: dict[str, list[Any]] = {name: [row[i] for row in loaded] for i, name in enumerate(names)}
        if config.objective == "nli":
            return Dataset.from_dict(data), None
        if config.objective == "sts":
            raise InputError("the sts objective trains on gold scores; rows of texts carry none")
        data["label"] = list(range(len(loaded)))
        table = None
        if config.distill_weight > 0:
            if teacher is None:
                raise InputError("a distillation term needs a teacher model")
            table = teachers.teacher_table(loaded, teacher, show_progress_bar=config.show_progress_bar)
        return Dataset.from_dict(data), table
    if teacher is None:
        raise InputError("the distill objective needs a teacher model")
    if columns == 1:  # one text per row: only the in-batch loss has pairs to learn from
        table = teachers.teacher_table(loaded, teacher, show_progress_bar=config.show_progress_bar)
        return Dataset.from_dict({"text": [row[0] for row in loaded], "label": list(range(len(loaded)))}), table
    table = teachers.teacher_table(loaded, teacher, columns=2, show_progress_bar=config.show_progress_bar)
    return pair_dataset(loaded, table, config.distill_loss), table


def gold_sts_dataset(config: TrainConfig) -> Dataset:
    """STS-B train's pairs labelled with their gold scores (0..1), in the seed's order, capped at ``max_examples``."""
    from matryoshka.data import load_sts

    pairs = load_sts("train")
    order = np.random.default_rng(config.seed).permutation(len(pairs))[: config.max_examples]
    return Dataset.from_dict({"sentence1": [pairs[i].sentence1 for i in order],
                              "sentence2": [pairs[i].sentence2 for i in order],
                              "label": [float(pairs[i].score) for i in order]})


def build_loss(model: SentenceTransformer, config: TrainConfig, teacher_table: torch.Tensor | None) -> torch.nn.Module:
    """The base loss of ``config.objective``, wrapped in ``MatryoshkaLoss`` when ``config.matryoshka``."""
    if config.objective == "nli":
        base: torch.nn.Module = MultipleNegativesRankingLoss(model)
    elif config.objective == "retrieval":
        base = RankingDistillationLoss(model, teacher_table, config.distill_weight)
    elif config.objective == "sts":
        base = CoSENTLoss(model)
    elif config.distill_loss in ("inbatch", "vector") or (teacher_table is not None and teacher_table.shape[1] == 1):
        if teacher_table is None:
            raise InputError("the distill objective needs the teacher's embedding table")
        base = InBatchSimilarityDistillationLoss(
            model, teacher_table, vector_weight=1.0 if config.distill_loss == "vector" else 0.0)
    elif config.distill_loss == "cosent":
        base = CoSENTLoss(model)
    else:
        base = CosineSimilarityLoss(model)
    weights = list(config.weights) if config.weights else None
    if config.layers:
        # 2D Matryoshka: each step also scores a random shallower layer count (and one random dim).
        if not config.matryoshka:
            return AdaptiveLayerLoss(model, base)
        return Matryoshka2dLoss(model, base, list(config.dims_for(model_dimension(model))), weights)
    if not config.matryoshka:
        return base
    return MatryoshkaLoss(model, base, list(config.dims_for(model_dimension(model))), weights)


class _StepReporter(TrainerCallback):
    """Calls ``progress(step, total_steps, last_loss)`` after every optimizer step."""

    def __init__(self, progress: Callable[[int, int, float | None], None], recorder: _LossRecorder) -> None:
        self.progress = progress
        self.recorder = recorder

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress(int(state.global_step), int(state.max_steps), self.recorder.losses[-1] if self.recorder.losses else None)


class _QuietProgressBar(ProgressCallback):
    """transformers' step bar without the raw ``{'loss': ...}`` dicts it writes under the bar."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        return None


class _LossRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def train(
    model: SentenceTransformer,
    config: TrainConfig | None = None,
    output_dir: str | os.PathLike[str] = "runs/model",
    teacher: SentenceTransformer | None = None,
    rows: Sequence[Sequence[str]] | None = None,
    train_dataset: Dataset | None = None,
    teacher_table: torch.Tensor | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place with ``config`` and save it to ``output_dir``.

    Args:
        model: the model to train (it is modified).
        config: the run's settings; defaults to :class:`TrainConfig`'s.
        output_dir: where the trained model is saved (loadable by ``SentenceTransformer(output_dir)``).
        teacher: for ``distill``, the model whose full-size similarities are taught; defaults to a frozen
            copy of ``model`` as it is before training.
        rows: training rows instead of the configured data (pairs or triplets of texts).
        train_dataset, teacher_table: a data set (and its teacher table) built by :func:`build_dataset`,
            to share one build between a Matryoshka run and its baseline.
        progress: called as ``progress(step, total_steps, last_logged_loss)`` after every step, in
            place of the step bar (so a caller can draw one line per model).
    """
    config = config or TrainConfig()
    config.validate(model_dimension(model))
    config = replace(config, dims=config.dims_for(model_dimension(model)))
    if teacher is not None and config.objective in ("nli", "sts"):
        raise InputError(f"the {config.objective} objective learns from its labels, not from a teacher; drop the teacher")
    own_max_seq_length = model.max_seq_length if config.max_seq_length else None  # static models have no settable cap
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length  # for training only: restored before the model is saved
    try:
        result = _train(model, config, output_dir, teacher, rows, train_dataset, teacher_table, progress)
    finally:
        if own_max_seq_length is not None:
            model.max_seq_length = own_max_seq_length
    save_model_atomic(model, output_dir)
    return result


def _train(
    model: SentenceTransformer,
    config: TrainConfig,
    output_dir: str | os.PathLike[str],
    teacher: SentenceTransformer | None,
    rows: Sequence[Sequence[str]] | None,
    train_dataset: Dataset | None,
    teacher_table: torch.Tensor | None,
    progress: Callable[[int, int, float | None], None] | None,
) -> TrainResult:
    """:func:`train`'s steps, without the save."""
    if train_dataset is None:
        if config.objective in ("distill", "retrieval") and teacher is None:
            teacher = model
        train_dataset, teacher_table = build_dataset(config, teacher, rows)
    if len(train_dataset) < config.batch_size:
        raise InputError(f"{len(train_dataset)} training rows is fewer than one batch of {config.batch_size}")
    loss = build_loss(model, config, teacher_table)
    output_dir = Path(output_dir)
    recorder = _LossRecorder()
    steps_per_epoch = len(train_dataset) // config.batch_size
    total_steps = config.max_steps or max(1, int(steps_per_epoch * config.epochs))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir.with_name(output_dir.name + ".checkpoints")),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        warmup_steps=int(config.warmup_ratio * total_steps),
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps" if config.checkpoint_steps else "no",
        save_steps=config.checkpoint_steps or 500,
        logging_steps=max(1, min(50, total_steps // 10)),
        report_to="none",
        disable_tqdm=not config.show_progress_bar or progress is not None,
        dataloader_drop_last=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, callbacks=[recorder]
    )
    # transformers prints every log dict (PrinterCallback without a bar, under the bar with one); the
    # losses are kept in TrainResult.losses instead, and progress is a bar or the caller's callback.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress is not None:
        trainer.add_callback(_StepReporter(progress, recorder))
    elif config.show_progress_bar:
        trainer.add_callback(_QuietProgressBar())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    checkpoints = Path(str(args.output_dir))
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return TrainResult(
        model=model,
        output_dir=output_dir,
        seconds=seconds,
        steps=int(trainer.state.global_step),
        examples=len(train_dataset),
        config=config,
        losses=recorder.losses,
    )
