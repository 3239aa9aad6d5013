"""Data for the tests of Newton's Hessians: classes that overlap, and a column of counts."""

from __future__ import annotations

import numpy as np
import scipy.sparse

import paragrad as pg


def classification(
    rows: int, features: int, classes: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose classes overlap (a finite optimum) and whose features differ in scale."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)) * np.geomspace(0.1, 10.0, features)
    scores = X @ rng.standard_normal((features, classes)) / features + rng.gumbel(size=(rows, classes))
    return X, scores.argmax(axis=1).astype(float)


def dataset(rows: int, features: int, sparse: bool = False, dtype: type = np.float64) -> pg.Dataset:
    """A data set of this shape, for the choice of a solver (its values matter little)."""
    X = np.zeros((rows, features), dtype=dtype)
    X[:, 0] = np.arange(rows) % 3
    y = (np.arange(rows) % 2).astype(float)
    return pg.Dataset(scipy.sparse.csr_matrix(X) if sparse else X, y)
