"""Matryoshka training in a minute on a CPU: fine-tune only a transformer's last layer, on cached inputs.

A full fine-tune pays a forward and a backward pass through every layer for every text of every step
(2.6 s a step for 32 pairs on 2 cores with all-MiniLM-L6-v2). The last layer alone can already
re-pack what the model knows into the first dimensions: the input it receives for each text is
computed once (one forward pass, which also gives the untouched model's vectors, the teacher), and
each step then runs that one layer, the model's own pooling and a loss at every prefix.

The loss is self-distillation, so only texts are needed, no labels: for each (text, text) pair,
CoSENT ranks the prefix cosines by the untouched model's full-size cosines, and an in-batch term pulls
the cosines between all texts of the batch toward the untouched model's (``similarity_mse``).
sentence-transformers' trainer cannot run on cached layer inputs (its losses call the whole model on
tokenized text), so the loop is written here; the losses are the library's ``CoSENTLoss`` and this
package's in-batch term. The result is an ordinary sentence-transformers model.

On STS-B dev (``benchmarks/top_layer_dev.py``), one epoch over STS-B train's 5,749 pairs (180 steps,
about a minute) raised the 32-dim score of all-MiniLM-L6-v2 from 81.31 to 82.15 and 16 dims from
75.67 to 77.59, with full size unchanged (86.79 against 86.72); the standard twin (full size only)
stayed within 0.25 of the base's scores.

Example:
    >>> inputs = cache_layer_inputs(model, texts)  # doctest: +SKIP
    >>> tuned = tune_top_layer(model, inputs, pairs, TopLayerConfig())  # doctest: +SKIP
    >>> tuned.encode(["a query"], truncate_dim=64)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from matryoshka.embeddings.vectors import dimension_ladder
from matryoshka.errors import InputError, ModelError
from matryoshka.models.layers import encoder, layer_list
from matryoshka.models.loading import model_dimension
from matryoshka.training.losses import RECIPE_WEIGHTS, check_prefixes, similarity_mse, weights_by_size

#: Largest difference allowed between the model's own output and its last layer re-run on cached inputs.
REPLAY_TOLERANCE = 1e-4



@dataclass
class TopLayerConfig:
    """Settings of :func:`tune_top_layer`; defaults chosen on STS-B dev (``benchmarks/top_layer_dev.py``).

    Attributes:
        dims: prefixes the loss scores (``matryoshka``); must include the full size (``None``: the
            model's ladder, :func:`~matryoshka.embeddings.vectors.dimension_ladder`).
        weights: one weight per entry of ``dims`` (``None``: the recipe's weights by size,
            :data:`~matryoshka.training.losses.RECIPE_WEIGHTS`, 1 for every other size).
        matryoshka: score every prefix; ``False`` trains the standard twin, at full size only.
        epochs: passes over the pairs, used when ``max_steps`` is ``None``.
        max_steps: stop after this many steps.
        batch_size: pairs per step.
        learning_rate: peak AdamW learning rate, after a linear warm-up, then a linear decay to 0.
        warmup_ratio: share of the steps spent warming up.
        cosent_weight: weight of CoSENT on each pair (ranked by the untouched model's cosine).
        inbatch_weight: weight of the mean squared error between all cosines of the batch's texts
            and the untouched model's.
        seed: seeds the order of the pairs and dropout.
    """

    dims: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    matryoshka: bool = True
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    cosent_weight: float = 1.0
    inbatch_weight: float = 100.0
    seed: int = 0

    def validate(self, full_dim: int) -> None:
        """Raise :class:`InputError` for settings that cannot train a ``full_dim``-d model."""
        check_prefixes(self.dims_for(full_dim), self.weights, full_dim)
        if self.batch_size < 2:
            raise InputError("batch_size must be at least 2 (CoSENT ranks pairs against each other)")
        if self.learning_rate <= 0 or self.epochs <= 0 or not 0 <= self.warmup_ratio < 1:
            raise InputError("learning_rate and epochs must be positive and warmup_ratio in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("max_steps must be at least 1")
        if min(self.cosent_weight, self.inbatch_weight) < 0 or self.cosent_weight + self.inbatch_weight == 0:
            raise InputError("the loss weights must not be negative, and not both 0")

    def scored(self, full_dim: int) -> list[tuple[float, int]]:
        """``(weight, dim)`` of every size the loss scores."""
        if not self.matryoshka:
            return [(1.0, full_dim)]
        dims = self.dims_for(full_dim)
        weights = self.weights or weights_by_size(dims, RECIPE_WEIGHTS)
        return list(zip(weights, dims, strict=True))

    def dims_for(self, full_dim: int) -> list[int]:
        """The prefixes scored for a ``full_dim``-d model."""
        return list(self.dims) if self.dims is not None else dimension_ladder(full_dim)


@dataclass
class LayerInputs:
    """What the last transformer layer receives for each text, and the untouched model's unit vectors.

    Attributes:
        states: one ``(tokens, hidden)`` tensor per text: the last layer's input, padding removed.
        vectors: ``(texts, dim)`` unit vectors of the untouched model (the teacher).
        seconds: time the forward pass took.
    """

    states: list[Tensor]
    vectors: Tensor
    seconds: float

    def __len__(self) -> int:
        return len(self.states)


def _padded(states: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    width = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros((len(states), width, states[0].shape[1]))
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, state in enumerate(states):
        hidden[row, : state.shape[0]] = state
        mask[row, : state.shape[0]] = 1
    return hidden, mask


def _after_transformer(model: SentenceTransformer, tokens: Tensor, mask: Tensor) -> Tensor:
    """The model's own modules after the transformer (pooling, ...) on its token embeddings."""
    features: dict[str, Tensor] = {"token_embeddings": tokens, "attention_mask": mask}
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]


def _run_top(model: SentenceTransformer, layer: torch.nn.Module, hidden: Tensor, mask: Tensor) -> Tensor:
    """The last layer on ``hidden``, then the model's own modules after the transformer."""
    from transformers.masking_utils import create_bidirectional_mask

    inner = encoder(model)
    attention = create_bidirectional_mask(config=inner.config, inputs_embeds=hidden, attention_mask=mask)
    out = layer(hidden, attention_mask=attention)
    return _after_transformer(model, out[0] if isinstance(out, tuple) else out, mask)


def cache_layer_inputs(
    model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> LayerInputs:
    """One forward pass over ``texts``: keep each text's input to the last layer, and its vector.

    Raises :class:`ModelError` when re-running the last layer on the cached input does not give the
    model's own output (an architecture whose layers need more than hidden states and a mask).
    """
    if not texts:
        raise InputError("no texts to cache")
    started = time.perf_counter()
    inner, last = encoder(model), layer_list(model)[-1]
    states: list[Tensor | None] = [None] * len(texts)
    vectors = torch.empty((len(texts), model_dimension(model)))
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = model.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                        max_length=model.max_seq_length, return_tensors="pt")
                output = inner(**batch, output_hidden_states=True)
                hidden, mask = output.hidden_states[-2], batch["attention_mask"]
                pooled = _run_top(model, last, hidden, mask)
                if start == 0:
                    gap = float((_after_transformer(model, output.last_hidden_state, mask) - pooled).abs().max())
                    if not gap <= REPLAY_TOLERANCE:
                        raise ModelError(f"{type(inner).__name__}'s last layer does not reproduce its output from "
                                         f"cached inputs (gap {gap:.2g}); top-layer tuning cannot train this model")
                vectors[torch.as_tensor(rows)] = F.normalize(pooled.float(), dim=-1)
                for j, i in enumerate(rows):
                    states[i] = hidden[j, : int(mask[j].sum())].clone()
                if progress is not None:
                    progress(min(start + batch_size, len(texts)), len(texts))
    finally:
        model.train(was_training)
    return LayerInputs([s for s in states if s is not None], vectors, round(time.perf_counter() - started, 2))


def tune_top_layer(
    model: SentenceTransformer,
    inputs: LayerInputs,
    pairs: np.ndarray | Sequence[tuple[int, int]],
    config: TopLayerConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> SentenceTransformer:
    """A copy of ``model`` whose last layer is trained on ``pairs`` of text indices into ``inputs``.

    ``model`` itself is left as it is, so both twins can start from the same model and cache.
    ``progress(step, total, loss)`` is called after every step.
    """
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    config = config or TopLayerConfig()
    full_dim = int(inputs.vectors.shape[1])
    config.validate(full_dim)
    index = np.asarray(pairs, dtype=np.int64)
    if index.ndim != 2 or index.shape[1] != 2 or len(index) < 2:
        raise InputError(f"pairs must be at least 2 rows of (text, text) indices, got shape {index.shape}")
    if index.min() < 0 or index.max() >= len(inputs):
        raise InputError(f"pair indices must lie in 0..{len(inputs) - 1}")
    tuned = copy.deepcopy(model)
    layer = layer_list(tuned)[-1]
    for parameter in tuned.parameters():
        parameter.requires_grad_(False)
    for parameter in layer.parameters():
        parameter.requires_grad_(True)
    batch = min(config.batch_size, len(index))
    per_epoch = math.ceil(len(index) / batch)
    total = config.max_steps or max(1, round(config.epochs * per_epoch))
    warmup = max(1, round(config.warmup_ratio * total))
    optimizer = torch.optim.AdamW(layer.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
    cosent = CoSENTLoss(tuned)
    scored = config.scored(full_dim)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    teacher = inputs.vectors
    order = torch.randperm(len(index), generator=generator)
    tuned.train()
    try:
        for step in range(total):
            offset = (step % per_epoch) * batch
            if step and offset == 0:
                order = torch.randperm(len(index), generator=generator)
            chosen = index[order[offset : offset + batch].numpy()]
            if len(chosen) < 2:  # a last partial batch of one pair ranks nothing
                continue
            left, right = chosen[:, 0], chosen[:, 1]
            hidden, mask = _padded([inputs.states[i] for i in np.concatenate([left, right])])
            embedded = _run_top(tuned, layer, hidden, mask)
            a, b = embedded[: len(chosen)], embedded[len(chosen) :]
            labels = (teacher[left] * teacher[right]).sum(-1)
            table = torch.stack([teacher[left], teacher[right]], dim=1)
            rows = torch.arange(len(chosen))
            loss = embedded.new_zeros(())
            for weight, dim in scored:
                prefix = [F.normalize(a[:, :dim], dim=-1), F.normalize(b[:, :dim], dim=-1)]
                if config.cosent_weight:
                    loss = loss + weight * config.cosent_weight * cosent.compute_loss_from_embeddings(prefix, labels)
                if config.inbatch_weight:
                    loss = loss + weight * config.inbatch_weight * similarity_mse(prefix, table, rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress is not None:
                progress(step + 1, total, float(loss.detach()))
    finally:
        tuned.eval()
        for parameter in tuned.parameters():
            parameter.requires_grad_(True)
    return tuned
