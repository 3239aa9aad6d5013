"""Products for prediction in which a row's result depends on that row alone.

BLAS picks its kernel by the shape of the whole product, and splits large ones between
threads: a row predicted alone (a matrix-vector product), among ten rows or among ten
thousand can differ in the last bit (OpenBLAS on an AMD EPYC: 3, 5 or 17 rows against 300,
any rows of a product split between threads, and in float32 a row's place among the rows
of the kernel's tile). A served model batches the rows of many requests, and workers
predict shards of any size, so predictions use products whose result for a row does not
depend on the rows beside it: numpy's own ``einsum`` loops for few outputs (as fast as
BLAS there: the product is bound by reading X), and for many, BLAS's matrix-matrix kernel
in float64 on one thread, over rows in whole tiles (:func:`tiled_product`).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from paragrad.core.blas import blas_threads
from paragrad.data import is_sparse
from paragrad.data.checks import Features

# At and above this many outputs BLAS's matrix-matrix kernel is used; below it einsum's loops.
MIN_BLAS_OUTPUTS = 32
# Rows per kernel tile, a multiple of every kernel's (4 to 16): products over a multiple of
# it keep every row in a whole tile, computed as every other row is.
ROW_TILE = 16
# Rows per BLAS call: a bounded float64 copy of float32 rows, and the padded last rows.
CALL_ROWS = 4096
# The BLAS limit is the process's: products of several threads of a program take it in
# turn, so that none puts back the threads while another's product runs on one.
_ONE_THREAD = threading.Lock()


def _new_lock_in_child() -> None:
    """A forked child starts with no product running: a lock its parent's other thread held
    at the fork would be held there for good."""
    global _ONE_THREAD
    _ONE_THREAD = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def row_product(X: Features, W: np.ndarray) -> np.ndarray:
    """``X @ W`` for W of shape (d,) or (d, k), each row's result independent of the others."""
    if is_sparse(X):  # a CSR product is computed row by row
        return np.asarray(X @ W)
    if W.ndim == 2 and W.shape[1] >= MIN_BLAS_OUTPUTS:
        return tiled_product(X, W)
    # einsum's loops run by the operands' layout: a Fortran-ordered X (a DataFrame's values)
    # would sum its rows in another order than the same rows in C order
    X, W = np.ascontiguousarray(X), np.ascontiguousarray(W)
    return np.einsum("ij,j->i" if W.ndim == 1 else "ij,jk->ik", X, W)


def tiled_product(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X @ W`` with each row's result independent of the other rows and of the threads
    BLAS may use: float64 products (float32's kernels treat a row by its place in a tile)
    on one BLAS thread (a product split between threads is summed otherwise), in calls of
    whole tiles of rows, the last padded with zeros; the result in the inputs' type."""
    rows, width = X.shape
    weights = np.asarray(W, dtype=np.float64)
    out = np.empty((rows, W.shape[1]))
    with _ONE_THREAD, blas_threads(1):
        for start in range(0, rows, CALL_ROWS):
            part = np.asarray(X[start : start + CALL_ROWS], dtype=np.float64)
            count = part.shape[0]
            if count % ROW_TILE:
                padded = np.zeros((count + ROW_TILE - count % ROW_TILE, width))
                padded[:count] = part
                out[start : start + count] = (padded @ weights)[:count]
            else:
                np.matmul(part, weights, out=out[start : start + count])
    dtype = np.result_type(X, W)
    return out if dtype == np.float64 else out.astype(dtype)
