"""Products for prediction in which a row's result depends on that row alone.

BLAS picks its kernel by the shape of the whole product, and splits large ones between
threads: a row predicted alone (a matrix-vector product), among ten rows or among ten
thousand can differ in the last bit (OpenBLAS on an AMD EPYC: 3, 5 or 17 rows against 300,
and any rows of a product split between threads). A served model batches the rows of many
requests, and workers predict shards of any size, so predictions use products whose
result for a row does not depend on the rows beside it: numpy's own ``einsum`` loops for
few outputs (as fast as BLAS there: the product is bound by reading X), and for many,
BLAS's matrix-matrix kernel on blocks of :data:`ROW_BLOCK` rows, every call the same shape.
"""

from __future__ import annotations

import numpy as np

from paragrad.data import is_sparse
from paragrad.data.checks import Features

# At and above this many outputs BLAS's matrix-matrix kernel is used; below it einsum's loops.
MIN_BLAS_OUTPUTS = 32
# Rows per BLAS call, every call the same shape: a multiple of the kernels' rows per tile
# (4 to 16), few enough that a row predicted alone costs little (27 us at 100 x 128 where a
# product of its own takes 4), and enough that large products run near one BLAS thread's
# speed (1.15-1.4x its time at 10,000 rows; they run on one thread, as workers' products do).
ROW_BLOCK = 16


def row_product(X: Features, W: np.ndarray) -> np.ndarray:
    """``X @ W`` for W of shape (d,) or (d, k), each row's result independent of the others."""
    if is_sparse(X):  # a CSR product is computed row by row
        return np.asarray(X @ W)
    if W.ndim == 1:
        return np.einsum("ij,j->i", X, W)
    if W.shape[1] < MIN_BLAS_OUTPUTS:
        return np.einsum("ij,jk->ik", X, W)
    return _blocks_product(X, W)


def _blocks_product(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X @ W`` as BLAS products of :data:`ROW_BLOCK` rows each, the last block padded
    with zeros: every call has the same shape, whatever the rows beside it."""
    rows, width = X.shape
    out = np.empty((rows, W.shape[1]), dtype=np.result_type(X, W))
    whole = rows - rows % ROW_BLOCK
    if whole:
        blocks = np.ascontiguousarray(X[:whole]).reshape(-1, ROW_BLOCK, width)
        np.matmul(blocks, W, out=out[:whole].reshape(-1, ROW_BLOCK, W.shape[1]))
    if whole < rows:
        last = np.zeros((ROW_BLOCK, width), dtype=X.dtype)
        last[: rows - whole] = X[whole:]
        out[whole:] = (last @ W)[: rows - whole]
    return out
