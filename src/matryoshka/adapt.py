"""Make any frozen embedding model Matryoshka for a corpus: a rotation, or a learned linear adaptor.

An adaptor is a square linear map applied to a model's unit vectors, followed by re-normalization,
chosen so that the *prefixes* of the mapped vectors keep the corpus's geometry:

- ``rotation``: the orthogonal map onto the corpus's principal axes (one SVD of the centered corpus
  vectors). Full-size cosines are unchanged, no training, seconds to fit; the leading dimensions
  then carry the most variance of *this* corpus.
- ``learned``: a linear map started at the rotation and trained at every prefix with the losses of
  Matryoshka-Adaptor (Yoon et al., 2024): pairwise cosines within a batch and each text's top-k
  neighbours across the corpus are pulled toward the full-size cosines, and a term keeps the
  full-size vector where the rotation put it. Given (query, relevant document) vector pairs it adds
  a ranking loss with in-batch negatives at every prefix.

The map works on vectors from any source (a local model, a hosted API): :meth:`Adaptor.apply`. It is
stored as a safetensors file, and :func:`adapted_model` appends it to a sentence-transformers model
as a standard ``Dense`` module plus ``Normalize``, so ``SentenceTransformer(path)`` loads the adapted
model without importing matryoshka. It is written here because no library fits such a map to a
frozen model's prefixes; the optimizer, the modules and the file format are the libraries' own.

Example:
    >>> from matryoshka.adapt import fit_rotation
    >>> adaptor = fit_rotation(corpus_vectors)            # doctest: +SKIP
    >>> small = truncate(adaptor.apply(corpus_vectors), 64)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from matryoshka.embeddings import truncate
from matryoshka.errors import InputError
from matryoshka.files import write_atomic

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Method = Literal["rotation", "learned"]
METHODS: tuple[str, ...] = get_args(Method)
#: Name of the adaptor file inside an adapted model directory, and the default standalone name.
ADAPTOR_FILE = "adaptor.safetensors"


class AdaptError(InputError):
    """Vectors, pairs or settings that cannot fit or apply an adaptor."""


def _unit_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise AdaptError(f"{what} must be a non-empty 2-d array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise AdaptError(f"{what} hold NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise AdaptError(f"{what} hold an all-zero row, which has no direction")
    return array / norms


@dataclass
class Adaptor:
    """A linear map ``x -> normalize(W @ normalize(x))`` whose prefixes serve as Matryoshka dimensions.

    Attributes:
        weight: ``(dim, dim)`` matrix; rows are the new axes, most important first.
        method: ``rotation`` or ``learned``.
        info: JSON-ready facts about the fit (source model, corpus size, seconds, losses...).
    """

    weight: np.ndarray
    method: str = "rotation"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if self.weight.ndim != 2 or self.weight.shape[0] != self.weight.shape[1]:
            raise AdaptError(f"an adaptor weight must be a square matrix, got shape {self.weight.shape}")
        if not np.isfinite(self.weight).all():
            raise AdaptError("the adaptor weight holds NaN or infinite values")

    @property
    def dim(self) -> int:
        """Input and output dimension."""
        return int(self.weight.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Map vectors of any source (normalized first) and return unit vectors of the same width."""
        unit = _unit_rows(vectors)
        if unit.shape[1] != self.dim:
            raise AdaptError(f"the adaptor maps {self.dim}-d vectors, these are {unit.shape[1]}-d")
        return truncate(unit @ self.weight.T)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adaptor as one safetensors file (atomically); metadata holds method and info."""
        from safetensors.numpy import save

        data = save({"weight": np.ascontiguousarray(self.weight)},
                    metadata={"format": "matryoshka-adaptor/1", "method": self.method, "info": json.dumps(self.info)})
        target = Path(path)
        write_atomic(target, data)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Adaptor:
        """Read a file written by :meth:`save` (or an adapted model directory holding one)."""
        from safetensors import SafetensorError, safe_open

        source = Path(path)
        if source.is_dir():
            source = source / ADAPTOR_FILE
        if not source.is_file():
            raise AdaptError(f"no adaptor file at {source}")
        try:
            with safe_open(str(source), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                if "weight" not in handle.keys():  # noqa: SIM118 - safetensors handles have keys(), no __contains__
                    raise AdaptError(f"{source} holds no 'weight' tensor")
                weight = handle.get_tensor("weight")
        except (SafetensorError, OSError) as exc:
            raise AdaptError(f"{source} is not a readable safetensors file: {exc}") from exc
        if metadata.get("format") != "matryoshka-adaptor/1":
            raise AdaptError(f"{source} is not a matryoshka adaptor (format {metadata.get('format')!r})")
        try:
            info = json.loads(metadata.get("info", "{}"))
        except json.JSONDecodeError as exc:
            raise AdaptError(f"{source} has unreadable metadata: {exc}") from exc
        return cls(weight=weight, method=metadata.get("method", "rotation"), info=info)


def fit_rotation(vectors: np.ndarray, center: bool = True) -> Adaptor:
    """The orthogonal map onto the principal axes of ``vectors`` (largest variance first).

    ``center`` finds the axes of the centered vectors, so the direction all texts share (which ranks
    nothing) does not take the first dimensions; the map itself is applied without centering, so it
    stays a rotation and full-size cosines are unchanged.
    """
    started = time.perf_counter()
    unit = _unit_rows(vectors, "corpus vectors")
    if unit.shape[0] < 2:
        raise AdaptError("a rotation needs at least 2 corpus vectors")
    data = (unit - unit.mean(axis=0, keepdims=True)) if center else unit
    # The principal axes are the right singular vectors of the data, i.e. the eigenvectors of its
    # d x d scatter matrix; eigh of that matrix costs O(n d^2) and always returns a complete
    # orthonormal basis, even for a corpus with fewer texts than dimensions.
    scatter = data.astype(np.float64).T @ data.astype(np.float64)
    variance, axes = np.linalg.eigh(scatter)
    order = np.argsort(-variance, kind="stable")
    variance, axes = np.clip(variance[order], 0.0, None), axes[:, order]
    return Adaptor(
        weight=axes.T.astype(np.float32),
        method="rotation",
        info={"corpus_vectors": int(unit.shape[0]), "center": center,
              "explained": [round(float(v), 6) for v in (variance / max(float(variance.sum()), 1e-12))[:8]],
              "seconds": round(time.perf_counter() - started, 3)},
    )


@dataclass
class LearnedConfig:
    """Settings of the learned adaptor; defaults were chosen on a dev split of SciFact train.

    Attributes:
        dims: prefixes scored by every loss; the full size is added when missing.
        weights: one weight per prefix (``None``: equal).
        steps: optimizer steps.
        batch_size: corpus vectors per step (pairwise and top-k terms).
        pair_batch_size: (query, document) pairs per step for the ranking term.
        learning_rate: Adam learning rate.
        top_k: neighbours per text kept close (from full-size cosines over the whole corpus).
        pair_weight, topk_weight, keep_weight, rank_weight: weights of the four terms.
        scale: inverse temperature of the ranking loss (MNRL's default is 20).
        seed: seeds batch sampling.
        threads: torch threads while fitting (``None``: leave torch's setting).
        orthogonal: keep the map a rotation (``W = expm(A - A^T) @ R``), so full-size cosines stay
            exactly the base's and only the order of information across dimensions is learned. Off
            by default: on the SciFact dev split it did not beat the plain rotation below 64 dims
            and costs a matrix exponential per step (see benchmarks/results/retrieval/dev.md).
    """

    dims: tuple[int, ...] = (384, 256, 128, 64, 32, 16)
    weights: tuple[float, ...] | None = None
    steps: int = 1000
    batch_size: int = 256
    pair_batch_size: int = 64
    learning_rate: float = 1e-3
    top_k: int = 10
    pair_weight: float = 1.0
    topk_weight: float = 1.0
    keep_weight: float = 1.0
    rank_weight: float = 1.0
    scale: float = 20.0
    seed: int = 0
    threads: int | None = None
    orthogonal: bool = False

    def validate(self, dim: int) -> None:
        """Raise :class:`AdaptError` for settings that cannot fit a ``dim``-d adaptor."""
        if not self.dims or any(int(d) <= 0 or int(d) > dim for d in self.dims):
            raise AdaptError(f"dims must be in 1..{dim}, got {list(self.dims)}")
        if self.weights is not None and len(self.weights) != len(self.dims):
            raise AdaptError(f"{len(self.weights)} weights for {len(self.dims)} dims")
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise AdaptError("weights must not be negative")
        for name in ("steps", "batch_size", "pair_batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise AdaptError(f"{name} must be at least 1")
        if self.learning_rate <= 0 or self.scale <= 0:
            raise AdaptError("learning_rate and scale must be positive")
        if min(self.pair_weight, self.topk_weight, self.keep_weight, self.rank_weight) < 0:
            raise AdaptError("loss weights must not be negative")


def nearest_neighbours(unit: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indices of each row's ``k`` most similar other rows by cosine, shape ``(rows, k)``."""
    k = min(k, unit.shape[0] - 1)
    out = np.empty((unit.shape[0], k), dtype=np.int64)
    for start in range(0, unit.shape[0], block):
        sims = unit[start : start + block] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.argsort(-sims, axis=1)[:, :k]
        out[start : start + block] = top
    return out


def fit_learned(
    corpus_vectors: np.ndarray,
    config: LearnedConfig | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    init: Adaptor | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    scored_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Adaptor:
    """Train a linear adaptor at every prefix; unsupervised from corpus vectors, plus pairs if given.

    Args:
        corpus_vectors: the frozen model's vectors of the corpus texts.
        config: the run's settings.
        pairs: ``(query_vectors, document_vectors)``, row ``i`` of each a relevant pair; adds the
            ranking term. The corpus batch of each step joins the in-batch negatives.
        init: the starting map; default the rotation of ``corpus_vectors``.
        progress: called as ``progress(step, steps, loss)`` after every step.
        scored_pairs: ``(vectors_a, vectors_b, scores)`` of pairs with a graded similarity (e.g. STS
            train); adds ``CoSENT``'s ranking of the pairs' cosines by their scores at every prefix.
    """
    import torch
    import torch.nn.functional as F

    config = config or LearnedConfig()
    started = time.perf_counter()
    unit = _unit_rows(corpus_vectors, "corpus vectors")
    dim = unit.shape[1]
    config.validate(dim)
    if unit.shape[0] < 2:
        raise AdaptError("a learned adaptor needs at least 2 corpus vectors")
    dims = sorted({int(d) for d in config.dims} | {dim}, reverse=True)
    weights = dict(zip((int(d) for d in config.dims), config.weights or [1.0] * len(config.dims)))
    dim_weights = [float(weights.get(d, 1.0)) for d in dims]
    rotation = init or fit_rotation(unit)
    if rotation.dim != dim:
        raise AdaptError(f"the starting adaptor maps {rotation.dim}-d vectors, the corpus is {dim}-d")
    if pairs is not None:
        queries, documents = (_unit_rows(pairs[0], "query vectors"), _unit_rows(pairs[1], "document vectors"))
        if queries.shape != documents.shape or queries.shape[1] != dim:
            raise AdaptError(f"pairs must be two ({dim}-d) arrays of equal shape, got {queries.shape} and {documents.shape}")
    if scored_pairs is not None:
        left, right = _unit_rows(scored_pairs[0], "pair vectors"), _unit_rows(scored_pairs[1], "pair vectors")
        gold = np.asarray(scored_pairs[2], dtype=np.float32)
        if left.shape != right.shape or left.shape[1] != dim or gold.shape != (len(left),):
            raise AdaptError("scored_pairs must be two equal (n, dim) arrays and n scores")
    neighbours = nearest_neighbours(unit, config.top_k)

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        generator = torch.Generator().manual_seed(config.seed)
        corpus = torch.from_numpy(unit)
        nbrs = torch.from_numpy(neighbours)
        start_weight = torch.from_numpy(rotation.weight.copy())
        orthogonal = config.orthogonal
        free = torch.nn.Parameter(torch.zeros_like(start_weight) if orthogonal else start_weight.clone())

        def current() -> torch.Tensor:
            # A skew-symmetric generator keeps expm(.) a rotation; at zero it is the identity.
            return torch.linalg.matrix_exp(free - free.T) @ start_weight if orthogonal else free

        optimizer = torch.optim.Adam([free], lr=config.learning_rate)
        q_all = torch.from_numpy(queries) if pairs is not None else None
        d_all = torch.from_numpy(documents) if pairs is not None else None
        scored = (torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(gold)) if scored_pairs is not None else None

        def prefixes(x: torch.Tensor) -> list[torch.Tensor]:
            return [F.normalize(x[:, :d], dim=-1) for d in dims]

        losses: list[float] = []
        for step in range(config.steps):
            batch = torch.randint(0, len(corpus), (min(config.batch_size, len(corpus)),), generator=generator)
            x = corpus[batch]
            x_nbr = corpus[nbrs[batch]]  # (batch, k, dim)
            weight = current()
            mapped = x @ weight.T
            mapped_nbr = x_nbr @ weight.T
            target_pair = x @ x.T
            target_nbr = (x.unsqueeze(1) * x_nbr).sum(-1)
            # An orthogonal map keeps every full-size vector by construction, so it has no keep term.
            loss = torch.zeros(()) if orthogonal else (
                config.keep_weight * F.mse_loss(F.normalize(mapped, dim=-1), x @ start_weight.T) * dim)
            for w, d in zip(dim_weights, dims):
                y = F.normalize(mapped[:, :d], dim=-1)
                y_nbr = F.normalize(mapped_nbr[..., :d], dim=-1)
                loss = loss + w * config.pair_weight * (y @ y.T - target_pair).abs().mean()
                loss = loss + w * config.topk_weight * ((y.unsqueeze(1) * y_nbr).sum(-1) - target_nbr).abs().mean()
            if q_all is not None and d_all is not None and config.rank_weight > 0:
                chosen = torch.randint(0, len(q_all), (min(config.pair_batch_size, len(q_all)),), generator=generator)
                q = q_all[chosen] @ weight.T
                docs = torch.cat([d_all[chosen], x]) @ weight.T
                labels = torch.arange(len(chosen))
                for w, qd, dd in zip(dim_weights, prefixes(q), prefixes(docs)):
                    loss = loss + w * config.rank_weight * F.cross_entropy(config.scale * qd @ dd.T, labels)
            if scored is not None and config.rank_weight > 0:
                chosen = torch.randint(0, len(scored[0]), (min(config.pair_batch_size, len(scored[0])),), generator=generator)
                a_vec, b_vec, scores = scored[0][chosen] @ weight.T, scored[1][chosen] @ weight.T, scored[2][chosen]
                # CoSENT: every pair scored higher than another should have the higher cosine.
                worse = (scores[:, None] < scores[None, :]).float()
                for w, ad, bd in zip(dim_weights, prefixes(a_vec), prefixes(b_vec)):
                    cos = (ad * bd).sum(-1) * config.scale
                    diff = (cos[:, None] - cos[None, :]) - (1.0 - worse) * 1e12
                    loss = loss + w * config.rank_weight * torch.logsumexp(
                        torch.cat([torch.zeros(1), diff.flatten()]), dim=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, config.steps, losses[-1])
    finally:
        torch.set_num_threads(previous_threads)
    info = {
        "corpus_vectors": int(unit.shape[0]),
        "pairs": int(pairs[0].shape[0]) if pairs is not None else 0,
        "config": json.loads(json.dumps(asdict(config))),
        # means over the first and last tenth of the steps: single batches are noisy
        "initial_loss": round(float(np.mean(losses[: max(1, len(losses) // 10)])), 6) if losses else None,
        "final_loss": round(float(np.mean(losses[-max(1, len(losses) // 10):])), 6) if losses else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    info["orthogonal"] = orthogonal
    with torch.no_grad():
        final = current().numpy().copy()
    return Adaptor(weight=final, method="learned", info=info)


def load_vectors(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 2-d numeric ``.npy`` file (never a pickle) as float32, with errors that name the file."""
    source = Path(path)
    if not source.is_file():
        raise AdaptError(f"no such file: {source}")
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise AdaptError(f"{source} is not a readable .npy array: {exc}") from None
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise AdaptError(f"{source} must hold a 2-d numeric array, got {array.dtype} with shape {array.shape}")
    return array.astype(np.float32)


def adapted_model(model: SentenceTransformer, adaptor: Adaptor) -> SentenceTransformer:
    """A new model: ``model``'s modules, then the adaptor as a ``Dense`` module, then ``Normalize``.

    ``model`` itself is not changed. Its own output should be unit length (it is normalized before
    the map either way, so vectors equal :meth:`Adaptor.apply` of the model's vectors).
    """
    import copy

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from matryoshka.models import model_dimension

    if model_dimension(model) != adaptor.dim:
        raise AdaptError(f"the adaptor maps {adaptor.dim}-d vectors, the model gives {model_dimension(model)}-d")
    modules = [copy.deepcopy(module) for module in model]
    if not isinstance(modules[-1], Normalize):
        modules.append(Normalize())
    dense = Dense(adaptor.dim, adaptor.dim, bias=False, activation_function=torch.nn.Identity(),
                  init_weight=torch.from_numpy(adaptor.weight.copy()))
    adapted = SentenceTransformer(modules=[*modules, dense, Normalize()], device=str(model.device))
    adapted.max_seq_length = model.max_seq_length
    return adapted


def save_adapted_model(
    model: SentenceTransformer, adaptor: Adaptor, output_dir: str | os.PathLike[str]
) -> Path:
    """Save the adapted model (loadable by plain ``SentenceTransformer(output_dir)``) with its adaptor file."""
    from matryoshka.training import save_model_atomic

    adapted = adapted_model(model, adaptor)
    target = save_model_atomic(adapted, output_dir)
    adaptor.save(target / ADAPTOR_FILE)
    return target


@dataclass
class AdaptResult:
    """What :func:`adapt` produced: the adaptor, the adapted model, and what the fit cost."""

    adaptor: Adaptor
    model: SentenceTransformer
    encode_seconds: float
    fit_seconds: float
    corpus_texts: int
    pairs: int


def adapt(
    model: SentenceTransformer,
    corpus: Sequence[str],
    method: Method = "rotation",
    pairs: Sequence[tuple[str, str]] | None = None,
    config: LearnedConfig | None = None,
    corpus_vectors: np.ndarray | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    show_progress_bar: bool = False,
) -> AdaptResult:
    """Fit an adaptor for ``model`` on ``corpus`` texts (and, for ``learned``, optional pairs).

    ``corpus_vectors`` are the model's vectors of ``corpus`` if already encoded, saving the encoding.
    """
    from matryoshka.embeddings import encode

    if method not in METHODS:
        raise AdaptError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pairs and method != "learned":
        raise AdaptError("query-document pairs only train a learned adaptor (--method learned)")
    started = time.perf_counter()
    if corpus_vectors is None:
        if len(corpus) < 2:
            raise AdaptError(f"a corpus of {len(corpus)} texts cannot fit an adaptor; give at least 2")
        corpus_vectors = encode(model, list(corpus), show_progress_bar=show_progress_bar)
    pair_vectors = None
    if pairs:
        queries = encode(model, [q for q, _ in pairs])
        documents = encode(model, [d for _, d in pairs], show_progress_bar=show_progress_bar)
        pair_vectors = (queries, documents)
    encoded = time.perf_counter()
    rotation = fit_rotation(corpus_vectors)
    adaptor = rotation if method == "rotation" else fit_learned(
        corpus_vectors, config, pair_vectors, init=rotation, progress=progress
    )
    finished = time.perf_counter()
    adaptor.info.update({"fit_seconds": round(finished - encoded, 3), "encode_seconds": round(encoded - started, 3)})
    return AdaptResult(
        adaptor=adaptor, model=adapted_model(model, adaptor), encode_seconds=encoded - started,
        fit_seconds=finished - encoded, corpus_texts=int(corpus_vectors.shape[0]),
        pairs=len(pairs) if pairs else 0,
    )
