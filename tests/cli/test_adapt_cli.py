"""``matryoshka adapt`` end to end: fit on a small corpus, load the result plainly, apply to API-style vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli.app import app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _texts(beir: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (beir / "corpus.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_adapt_rotation_and_learned_models_load_plainly(tmp_path: Path, tiny_beir: Path, model) -> None:
    from sentence_transformers import SentenceTransformer

    result = invoke("adapt", "--corpus", tiny_beir, "--out", tmp_path / "rot")
    assert result.exit_code == 0, result.output
    texts = _texts(tiny_beir)[:20]
    base = model.encode(texts, normalize_embeddings=True)
    rotated = SentenceTransformer(str(tmp_path / "rot"), device="cpu").encode(texts)
    np.testing.assert_allclose(rotated @ rotated.T, base @ base.T, atol=1e-5)
    assert not np.allclose(rotated[:, :32], base[:, :32], atol=1e-3)

    result = invoke("adapt", "--corpus", tiny_beir, "--method", "learned", "--pairs", tiny_beir, "--steps", 20,
                    "--out", tmp_path / "learned")
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and (tmp_path / "learned" / "adaptor.safetensors").is_file()
    evaluated = invoke("evaluate", "-m", tmp_path / "learned", "--task", tiny_beir, "--dims", "384,64",
                       "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(scores["learned"]) == {"384", "64"}


def test_adapt_apply_makes_api_style_vectors_matryoshka(tmp_path: Path, tiny_beir: Path) -> None:
    # A second local model stands in for a hosted API: CLS pooling, no normalization.
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from matryoshka.models.loading import packaged_model_path

    transformer = Transformer(str(packaged_model_path()))
    api = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "cls")], device="cpu")
    texts = _texts(tiny_beir)
    vectors = api.encode(texts)
    assert abs(float(np.linalg.norm(vectors[0])) - 1.0) > 0.01  # not unit length, as many APIs return
    np.save(tmp_path / "corpus.npy", vectors)
    np.save(tmp_path / "queries.npy", vectors[:5])

    fitted = invoke("adapt", "--vectors", tmp_path / "corpus.npy", "--out", tmp_path / "api.safetensors")
    assert fitted.exit_code == 0, fitted.output
    applied = invoke("adapt", "apply", "--adaptor", tmp_path / "api.safetensors", "--vectors", tmp_path / "queries.npy",
                     "--out", tmp_path / "out.npy")
    assert applied.exit_code == 0, applied.output
    full = np.load(tmp_path / "out.npy")
    unit = vectors[:5] / np.linalg.norm(vectors[:5], axis=1, keepdims=True)
    np.testing.assert_allclose(full @ full.T, unit @ unit.T, atol=1e-5)  # a rotation: cosines kept
    short = invoke("adapt", "apply", "--adaptor", tmp_path / "api.safetensors", "--vectors", tmp_path / "queries.npy",
                   "--dim", 64, "--out", tmp_path / "out64.npy")
    assert short.exit_code == 0, short.output
    prefix = np.load(tmp_path / "out64.npy")
    assert prefix.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(prefix, axis=1), 1.0, atol=1e-5)

    np.save(tmp_path / "wrong.npy", vectors[:5, :100])
    bad = invoke("adapt", "apply", "--adaptor", tmp_path / "api.safetensors", "--vectors", tmp_path / "wrong.npy",
                 "--out", tmp_path / "x.npy")
    assert bad.exit_code == 1 and "384-d vectors, these are 100-d" in bad.output
    assert not (tmp_path / "x.npy").exists()
    (tmp_path / "pickled.npy").write_bytes(b"\x93NUMPY junk")
    bad = invoke("adapt", "apply", "--adaptor", tmp_path / "api.safetensors", "--vectors", tmp_path / "pickled.npy",
                 "--out", tmp_path / "x.npy")
    assert bad.exit_code == 1 and "not a readable .npy" in bad.output


def test_adapt_refuses_bad_arguments(tmp_path: Path, tiny_beir: Path) -> None:
    assert "one of them" in invoke("adapt", "--out", tmp_path / "x").output
    result = invoke("adapt", "--corpus", tiny_beir, "--method", "pca", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "--method must be one of auto, rotation, learned" in result.output
    np.save(tmp_path / "v.npy", np.ones((4, 8), dtype=np.float32))
    result = invoke("adapt", "--vectors", tmp_path / "v.npy", "--pairs", tiny_beir, "--out", tmp_path / "x")
    assert result.exit_code == 1 and "need a model" in result.output
