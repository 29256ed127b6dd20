"""The static Matryoshka build (model2vec distillation, then training) on a tiny transformer.

The teacher is a 2-layer BERT with a 300-token WordPiece vocabulary, built here with random weights:
model2vec runs one forward pass per vocabulary entry, so a small vocabulary keeps the real
distillation (and the real training step) to seconds. The packaged model takes about half a minute
and is measured by ``benchmarks/static_dev.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

WORDS = """
the a an of to in on at and or but is are was were be been cat cats dog dogs man men woman women
child children boy girl sits sitting runs running walks walking plays playing eats eating sleeps
sleeping reads reading rides riding a horse bike car bus train street park beach water river field
house room table chair bed ball guitar piano book food apple bread red blue green black white small
big young old happy sad two three some many people group dance dancing sings singing swims swimming
jumps jumping outside inside near with under over down up stock market price rises falls oil gas
bank money city country president minister police says said new year day night morning game team
wins loses
""".split()  # noqa: SIM905  (a word list reads better as text)
PAIRS = [
    ("a man is playing a guitar", "a man plays the guitar"),
    ("a woman is riding a horse", "a woman rides a horse"),
    ("two dogs are running in a field", "dogs run in the field"),
    ("a child is reading a book", "a boy reads a book"),
    ("the stock market falls", "stock price falls"),
    ("a cat sleeps on the bed", "the cat is sleeping"),
    ("people are dancing in the street", "a group of people dance"),
    ("a girl is eating an apple", "a girl eats food"),
    ("the police says the bank was robbed", "police said money"),
    ("a man swims in the river", "a man is swimming in water"),
    ("the team wins the game", "team loses the game"),
    ("a woman sings on the beach", "a woman is singing outside"),
] * 3


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved sentence-transformer: tiny random BERT (hidden 32), 300-token vocabulary, mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-teacher")
    hf = root / "hf"
    hf.mkdir()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + list(dict.fromkeys(WORDS)) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(vocab))[:300]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.save_pretrained(hf)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean")], device="cpu")
    path = root / "st"
    model.save(str(path))
    return path


def test_build_end_to_end_loads_with_plain_sentence_transformers(tiny_teacher: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    from matryoshka.training.static import StaticConfig, build_static
    from matryoshka.training.train import TrainConfig

    config = StaticConfig(
        pca_dims=16,
        training=TrainConfig(objective="distill", distill_loss="inbatch", dims=(16, 8), learning_rate=0.05,
                             batch_size=8, epochs=2, show_progress_bar=False),
        cache_dir=tmp_path / "cache",
    )
    built = build_static(str(tiny_teacher), tmp_path / "static", config, rows=PAIRS)
    assert built.info["trained"] and built.info["train"]["steps"] > 0
    assert built.info["vocabulary"] < 400
    texts = ["a man is playing a guitar", "the market falls", "zebra"]  # an unknown word too
    ours = built.model.encode(texts, convert_to_numpy=True)
    plain = SentenceTransformer(str(tmp_path / "static"), device="cpu")
    assert isinstance(plain[0], StaticEmbedding) and len(plain) == 1
    theirs = plain.encode(texts, convert_to_numpy=True)
    assert theirs.shape == (3, 16)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    # a prefix is the first values of the full vector, re-normalized
    short = plain.encode(texts, convert_to_numpy=True, truncate_dim=8, normalize_embeddings=True)
    full = theirs[:, :8] / np.linalg.norm(theirs[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, full, rtol=1e-5, atol=1e-6)
    # the cached teacher embeddings are written once and reused
    assert list((tmp_path / "cache").glob("*.npy"))


def test_training_moves_the_student_toward_the_teacher(tiny_teacher: Path, tmp_path: Path) -> None:
    """Matryoshka training lowers the in-batch distillation error at the small prefix."""
    import torch

    from matryoshka.models.loading import load_model
    from matryoshka.training.losses import similarity_mse
    from matryoshka.training.static import StaticConfig, build_static, teacher_table
    from matryoshka.training.train import TrainConfig

    teacher = load_model(str(tiny_teacher), device="cpu")
    table = torch.nn.functional.normalize(teacher_table(PAIRS[:12], teacher, None, None), dim=-1)
    labels = torch.arange(12)

    def error(path: Path, dim: int) -> float:
        student = load_model(path, device="cpu")
        a = torch.from_numpy(student.encode([p[0] for p in PAIRS[:12]], truncate_dim=dim))
        b = torch.from_numpy(student.encode([p[1] for p in PAIRS[:12]], truncate_dim=dim))
        return float(similarity_mse([a, b], table, labels))

    plain = build_static(str(tiny_teacher), tmp_path / "plain", StaticConfig(pca_dims=16, train=False))
    assert not plain.info["trained"]
    config = StaticConfig(pca_dims=16, cache_dir=None, training=TrainConfig(
        objective="distill", distill_loss="inbatch", dims=(16, 8), learning_rate=0.05, batch_size=12, epochs=20,
        show_progress_bar=False))
    build_static(str(tiny_teacher), tmp_path / "trained", config, rows=PAIRS[:12])
    assert error(tmp_path / "trained", 8) < error(tmp_path / "plain", 8)


def test_dims_for_is_powers_of_two_down_to_16() -> None:
    from matryoshka.training.static import StaticConfig

    assert StaticConfig.dims_for(256) == (256, 128, 64, 32, 16)
    assert StaticConfig.dims_for(384) == (384, 256, 128, 64, 32, 16)
    assert StaticConfig.dims_for(16) == (16,)


@pytest.mark.parametrize("pca_dims", [0, 1, 33, 10_000])
def test_bad_pca_dims_is_a_clear_error(tiny_teacher: Path, tmp_path: Path, pca_dims: int) -> None:
    from matryoshka.training.static import StaticBuildError, StaticConfig, build_static

    with pytest.raises(StaticBuildError, match=r"pca_dims must be in 2\.\.32"):
        build_static(str(tiny_teacher), tmp_path / "out", StaticConfig(pca_dims=pca_dims, train=False))
    assert not (tmp_path / "out").exists()


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    from matryoshka.models.loading import ModelLoadError
    from matryoshka.training.static import build_static

    with pytest.raises(ModelLoadError, match="no model directory"):
        build_static(str(tmp_path / "nowhere"), tmp_path / "out")


def test_unknown_pair_source_and_bad_cap(tmp_path: Path) -> None:
    from matryoshka.training.static import StaticBuildError, parse_source

    assert parse_source("wordnet:100") == ("wordnet", 100)
    assert parse_source("stsb") == ("stsb", None)
    with pytest.raises(StaticBuildError, match="unknown pair source 'sts-test'"):
        parse_source("sts-test")
    with pytest.raises(StaticBuildError, match="positive integer"):
        parse_source("wordnet:lots")


def test_training_pairs_leave_out_evaluation_sentences(data_dir: Path) -> None:
    from matryoshka.training.static import evaluation_sentences, static_training_pairs

    banned = set(evaluation_sentences())
    rows = static_training_pairs(("stsb", "snli-dev", "wordnet:500"), exclude=sorted(banned))
    assert len(rows) > 10_000
    assert not any(a in banned or b in banned for a, b in rows)
    assert len(static_training_pairs(("wordnet:500",))) == 500


def test_cli_builds_a_model_that_encode_takes(tiny_teacher: Path, tmp_path: Path) -> None:
    from matryoshka.cli.app import app

    pairs = tmp_path / "words.txt"
    pairs.write_text("guitar\nzebra\n")
    out = tmp_path / "cli-static"
    runner = CliRunner()
    result = runner.invoke(app, ["static", "--model", str(tiny_teacher), "--out", str(out), "--pca-dims", "16",
                                 "--pairs", "stsb:64", "--batch-size", "16", "--epochs", "1", "--dims", "16,8",
                                 "--vocabulary", str(pairs), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (out / "modules.json").is_file()
    vectors = tmp_path / "v.npy"
    result = runner.invoke(app, ["encode", "--model", str(out), "--dim", "8", "--output", str(vectors), "a man", "a dog"])
    assert result.exit_code == 0, result.output
    assert np.load(vectors).shape == (2, 8)


def test_cli_bad_input_exits_with_a_message(tiny_teacher: Path, tmp_path: Path) -> None:
    from matryoshka.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["static", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no model directory" in result.output
    result = runner.invoke(app, ["static", "--model", str(tiny_teacher), "--out", str(tmp_path / "o"),
                                 "--pca-dims", "64", "--no-train"])
    assert result.exit_code == 1
    assert "pca_dims must be in 2..32" in result.output


def test_compare_static_rows_start_from_the_distillation(tiny_teacher: Path, tmp_path: Path, data_dir: Path) -> None:
    """compare's static rows: the plain distillation, then both twins trained from it, on the same sizes."""
    from dataclasses import replace

    from matryoshka.data import load_sts
    from matryoshka.experiments.compare import CompareConfig, _static_rows
    from matryoshka.models.loading import load_model
    from matryoshka.training.static import StaticConfig

    config = CompareConfig(base_model=str(tiny_teacher), out=tmp_path, dims=(32, 16, 8), jobs=1,
                           cache_dir=tmp_path / "cache", static_build=StaticConfig(pca_dims=16))
    config.cap(max_steps=2, max_examples=64)
    config.static_build = replace(config.static_build, training=replace(config.static_build.training,
                                                                        show_progress_bar=False))
    teacher = load_model(str(tiny_teacher), device="cpu")
    scores, runs = _static_rows(config, teacher, load_sts("test")[:40], lambda message: None, {}, None)
    assert set(scores) == {"static-distill", "static-standard", "static-matryoshka"}
    assert all(set(by_dim) == {16, 8} for by_dim in scores.values())
    assert runs["static-matryoshka"]["steps"] == 2 and tuple(runs["static-matryoshka"]["config"]["dims"]) == (16, 8)
    assert (tmp_path / "models" / "static-distill" / "modules.json").is_file()
