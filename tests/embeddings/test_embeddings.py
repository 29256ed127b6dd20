import numpy as np
import pytest

from matryoshka.embeddings.vectors import DimensionError, check_dim, encode, quantize, truncate
from matryoshka.errors import InputError


def test_truncate_keeps_prefix_and_renormalizes():
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]])
    out = truncate(vectors, 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_truncate_without_normalize_is_a_plain_prefix():
    vectors = np.array([[3.0, 4.0, 12.0]])
    np.testing.assert_allclose(truncate(vectors, 2, normalize=False), [[3.0, 4.0]])


def test_truncate_zero_row_stays_zero():
    out = truncate(np.array([[0.0, 0.0, 1.0]]), 2)
    assert np.all(out == 0) and not np.isnan(out).any()


def test_cosine_after_truncation_equals_dot_product():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 384))
    ta, tb = truncate(np.stack([a, b]), 32)
    cosine = a[:32] @ b[:32] / (np.linalg.norm(a[:32]) * np.linalg.norm(b[:32]))
    assert ta @ tb == pytest.approx(cosine, rel=1e-5)


@pytest.mark.parametrize("dim", [0, -1, 385, 1.5, "64", True])
def test_bad_dims_raise_clear_errors(dim):
    with pytest.raises(DimensionError, match="dim"):
        check_dim(dim, 384)


def test_check_dim_none_is_full():
    assert check_dim(None, 384) == 384


def test_quantize_shapes_and_types():
    vectors = truncate(np.random.default_rng(1).normal(size=(10, 64)), 64)
    assert quantize(vectors, "int8").dtype == np.int8
    binary = quantize(vectors, "ubinary")
    assert binary.shape == (10, 8) and binary.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(binary, axis=1), (vectors > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="precision"):
        quantize(vectors, "int4")


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_packing_is_sentence_transformers_own(precision):
    """The numpy packing (no torch import) gives exactly what sentence-transformers' quantize_embeddings gives."""
    from sentence_transformers.util.quantization import quantize_embeddings

    vectors = truncate(np.random.default_rng(2).normal(size=(7, 48)), 48)
    ours, theirs = quantize(vectors, precision), np.asarray(quantize_embeddings(vectors, precision=precision))
    assert ours.dtype == theirs.dtype and ours.shape == (7, 6)
    np.testing.assert_array_equal(ours, theirs)


def test_encode_matches_model_encode_then_truncate(model):
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    full = model.encode(texts, convert_to_numpy=True)
    out = encode(model, texts, dim=64)
    assert out.shape == (2, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # sentence-transformers' own truncate_dim gives the same direction before normalization
    st = model.encode(texts, convert_to_numpy=True, truncate_dim=64)
    np.testing.assert_allclose(out, st / np.linalg.norm(st, axis=1, keepdims=True), atol=1e-5)


def test_encode_single_string_and_precisions(model):
    assert encode(model, "hello world", dim=32).shape == (32,)
    assert encode(model, ["a", "b"], dim=64, precision="binary").shape == (2, 8)
    assert encode(model, ["a", "b"], dim=16, precision="float16").dtype == np.float16
    assert encode(model, [], dim=16).shape == (0, 16)


@pytest.mark.parametrize("dim", [0, -8, 385])
def test_encode_bad_dim(model, dim):
    with pytest.raises(DimensionError):
        encode(model, ["text"], dim=dim)


def test_encode_rejects_non_strings(model):
    with pytest.raises(InputError):
        encode(model, ["ok", 3])  # type: ignore[list-item]
