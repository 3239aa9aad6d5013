"""Synthetic data sets for tests, examples and benchmarks: regression, dense and
sparse classification, reproducible from a seed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from paragrad.data.dataset import Dataset
from paragrad.errors import ConfigError


def make_regression(
    num_rows: int, num_features: int, *, noise: float = 0.1, seed: int = 0, dtype: DTypeLike = np.float64
) -> Dataset:
    """Gaussian features and ``y = X w + b + noise * e`` with random ``w`` and ``b``."""
    _check_size(num_rows, num_features)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_rows, num_features))
    w = rng.standard_normal(num_features)
    y = X @ w + rng.standard_normal() + noise * rng.standard_normal(num_rows)
    return Dataset(X, y, _default_names(num_features), "y", dtype=dtype, source="make_regression")


def make_classification(
    num_rows: int,
    num_features: int,
    *,
    num_classes: int = 2,
    separation: float = 2.0,
    seed: int = 0,
    dtype: DTypeLike = np.float64,
) -> Dataset:
    """Gaussian features and labels ``0..num_classes-1`` drawn from a softmax of ``X W + b``.

    Labels are sampled, not thresholded, so the classes overlap and the logistic loss has a
    finite optimum; ``separation`` scales the logits (larger means easier).
    """
    _check_size(num_rows, num_features)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_rows, num_features))
    W = rng.standard_normal((num_features, num_classes)) * separation / np.sqrt(num_features)
    logits = X @ W + 0.5 * rng.standard_normal(num_classes)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    u = rng.random((num_rows, 1))
    y = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), num_classes - 1)
    return Dataset(X, y, _default_names(num_features), "y", dtype=dtype, source="make_classification")


def make_sparse_classification(
    num_rows: int, num_features: int, *, density: float = 0.001, seed: int = 0, dtype: DTypeLike = np.float64
) -> Dataset:
    """Sparse CSR features (``density`` of entries non-zero) with binary logistic labels.

    Built row block by row block, so data sets far too large to hold densely are cheap.
    """
    import scipy.sparse as sp

    _check_size(num_rows, num_features)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(num_features) * 3.0
    per_row = max(1, round(density * num_features))
    indices = np.sort(rng.integers(0, num_features, size=(num_rows, per_row)), axis=1).ravel()
    values = rng.standard_normal(num_rows * per_row)
    indptr = np.arange(0, num_rows * per_row + 1, per_row)
    X = sp.csr_matrix((values, indices, indptr), shape=(num_rows, num_features))
    X.sum_duplicates()
    z = X @ w
    y = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    return Dataset(X, y, target_name="y", dtype=dtype, source="make_sparse_classification")


def _check_size(num_rows: int, num_features: int) -> None:
    if num_rows < 1 or num_features < 1:
        raise ConfigError(f"rows and features must be positive, got {num_rows} x {num_features}")


def _default_names(num_features: int) -> tuple[str, ...]:
    return tuple(f"x{j}" for j in range(num_features))
