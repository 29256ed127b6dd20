"""The free adaptor: the orthogonal map onto a corpus's principal axes (no training, full size unchanged)."""

from __future__ import annotations

import time

import numpy as np

from matryoshka.adapt.adaptor import AdaptError, Adaptor, checked_unit_rows


def fit_rotation(vectors: np.ndarray, center: bool = True) -> Adaptor:
    """The orthogonal map onto the principal axes of ``vectors`` (largest variance first).

    ``center`` finds the axes of the centered vectors, so the direction all texts share (which ranks
    nothing) does not take the first dimensions; the map itself is applied without centering, so it
    stays a rotation and full-size cosines are unchanged.
    """
    started = time.perf_counter()
    unit = checked_unit_rows(vectors, "corpus vectors")
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
