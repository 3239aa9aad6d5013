"""Products for prediction in which a row's result depends on that row alone.

BLAS picks its kernel by the shape of the whole product: a row predicted alone (a
matrix-vector product), among ten rows or among ten thousand can differ in the last bit.
A served model batches the rows of many requests, and workers predict shards of any size,
so predictions use products whose result for a row does not depend on the rows beside it:
numpy's own ``einsum`` loops for few outputs (as fast as BLAS there: the product is bound
by reading X), and BLAS's matrix-matrix kernel, never its matrix-vector one, for many.
"""

from __future__ import annotations

import numpy as np

from paragrad.data import is_sparse
from paragrad.data.checks import Features

# At and above this many outputs BLAS's matrix-matrix kernel computes each row the same way
# whatever the row count (two rows or more); below it einsum's loops are used.
MIN_BLAS_OUTPUTS = 32


def row_product(X: Features, W: np.ndarray) -> np.ndarray:
    """``X @ W`` for W of shape (d,) or (d, k), each row's result independent of the others."""
    if is_sparse(X):  # a CSR product is computed row by row
        return np.asarray(X @ W)
    if W.ndim == 1:
        return np.einsum("ij,j->i", X, W)
    if W.shape[1] < MIN_BLAS_OUTPUTS:
        return np.einsum("ij,jk->ik", X, W)
    if X.shape[0] == 1:  # one row would take the matrix-vector kernel
        return (np.concatenate([X, X]) @ W)[:1]
    return X @ W
