"""``matryoshka static``: a thin command over :func:`matryoshka.training.static.build_static`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from matryoshka.cli.errors import fail
from matryoshka.cli.options import ModelOption, parse_floats, parse_ints, progress_bar
from matryoshka.errors import MatryoshkaError

console = Console(stderr=True)


def static_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the static model.")] = Path(
        "runs/static/model"),
    model: ModelOption = None,
    pca_dims: Annotated[int | None, typer.Option(
        help="Full size of the static model (model2vec's PCA components); default: the model's own size.")] = None,
    no_train: Annotated[bool, typer.Option("--no-train", help="Stop after model2vec's distillation.")] = False,
    standard: Annotated[bool, typer.Option("--standard", help="Train without MatryoshkaLoss (the baseline).")] = False,
    loss: Annotated[str, typer.Option(help="Self-distillation loss: inbatch (all pairs of texts) or cosent.")] = "inbatch",
    pairs: Annotated[str, typer.Option(
        help="Local pair sources: stsb (train), snli-dev, wordnet; NAME:N keeps N pairs of one.")] = "stsb,snli-dev,wordnet:10000",
    dims: Annotated[str | None, typer.Option(help="Sizes MatryoshkaLoss scores; default: full size halved down to 16.")] = None,
    weights: Annotated[str | None, typer.Option(help="One weight per size, e.g. 1,1,2,4,4.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.03,
    epochs: Annotated[float, typer.Option(min=0.01)] = 10.0,
    batch_size: Annotated[int, typer.Option(min=2, help="Pairs per step.")] = 256,
    max_pairs: Annotated[int | None, typer.Option(min=1, help="Train on at most this many pairs.")] = None,
    vocabulary: Annotated[Path | None, typer.Option(
        help="A text file of extra words (one a line) for model2vec's tokenizer.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Where the teacher's embeddings are cached.")] = Path("runs/cache"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build a static Matryoshka model from a sentence-transformer: model2vec distillation, then training.

    The saved directory is a plain sentence-transformers StaticEmbedding model, so encode, evaluate,
    index, serve and demo take it with --model.
    """
    from matryoshka.models.loading import quiet_loading
    from matryoshka.training.static import StaticConfig, build_static
    from matryoshka.training.train import TrainConfig

    words: tuple[str, ...] | None = None
    if vocabulary is not None:
        if not vocabulary.is_file():
            fail(f"--vocabulary {vocabulary} is not a file")
        words = tuple(w.strip() for w in vocabulary.read_text(encoding="utf-8").splitlines() if w.strip())
    training = TrainConfig(
        objective="distill",
        distill_loss=loss,  # type: ignore[arg-type]
        matryoshka=not standard,
        dims=tuple(parse_ints(dims, "--dims")) if dims else (),
        weights=tuple(parse_floats(weights, "--weights")) if weights else None,
        learning_rate=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    config = StaticConfig(
        pca_dims=pca_dims, vocabulary=words, train=not no_train,
        sources=tuple(p.strip() for p in pairs.split(",") if p.strip()),
        max_pairs=max_pairs, training=training, cache_dir=cache,
    )
    quiet_loading()

    try:
        with progress_bar(console) as bar:
            task = bar.add_task("distilling with model2vec", total=None)

            def progress(step: int, total: int, last: float | None) -> None:
                bar.update(task, completed=step, total=total, description="training" if last is None else f"loss {last:.4f}")

            built = build_static(model, out, config, progress=progress, log=console.print)
    except MatryoshkaError as exc:
        fail(str(exc))
    kind = "plain model2vec" if no_train else ("standard" if standard else "Matryoshka")
    console.print(f"saved {kind} static model ({built.info['pca_dims']} dims) to {built.output_dir}; "
                  f"load it with SentenceTransformer({str(built.output_dir)!r})", soft_wrap=True)
