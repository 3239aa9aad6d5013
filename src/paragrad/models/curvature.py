"""Exact Hessian sums of the linear models, for Newton's method.

The flat parameters ``[W.ravel(), b]`` put ``W[j, c]`` at ``j*k + c`` and ``b[c]`` at
``d*k + c``: with ``a = [x, 1]`` the index is ``j*k + c`` for every column j of a. So the
Hessian of one row's loss is ``kron(a a^T, S)``, where S (k, k) is the Hessian of the loss
with respect to the row's outputs. Every family here has ``S = diag(D) - u u^T`` (u absent
for linear and logistic regression), which :meth:`output_curvature` returns as ``(D, U)``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from paragrad.data import is_sparse
from paragrad.data.checks import Features

# From this many columns a symmetric rank-k update beats the general product it halves
# (a block of 1310 rows on one core: 129 us against 143 at 40 columns, 464 against 643 at
# 100); below, its extra passes over the rows cost more than they save (22 us against 13
# at 5 columns).
SYMMETRIC_UPDATE_COLUMNS = 32


def add_hessian_sums(
    hess: np.ndarray,
    X: Features,
    diag: np.ndarray,
    outer: np.ndarray | None,
    fit_intercept: bool,
    dense_rows: int,
    float32: bool = False,
) -> None:
    """Add ``sum_i kron(a_i a_i^T, diag(D_i) - u_i u_i^T)`` over the rows of ``X`` to ``hess``.

    Only class pairs ``c <= c'`` are filled, one ``X^T (X * v)`` product each;
    :func:`finish_hessian` mirrors them. Products run in X's float type (float32 data:
    float32 products, as for the gradient), or in float32 when ``float32`` (twice as fast
    as float64's, for Newton's steps far from the optimum); the sums accumulate in
    ``hess``, float64. Sparse X is densified ``dense_rows`` rows at a time.
    """
    d, k = X.shape[1], diag.shape[1]
    if k == 1 and not is_sparse(X):  # one output: the Hessian is the one pair's block
        _add_pair(hess, X, X.astype(np.float32, copy=False) if float32 else X, diag[:, 0], fit_intercept)
        return
    blocks = hess.reshape(d + int(fit_intercept), k, d + int(fit_intercept), k)
    for start, A in dense_row_blocks(X, dense_rows):
        rows = slice(start, start + A.shape[0])
        products = A.astype(np.float32, copy=False) if float32 else A
        for c, c2 in class_pairs(k, outer is not None):
            v = _curvature(diag, outer, rows, c, c2)
            _add_pair(blocks[:, c, :, c2], A, products, v, fit_intercept)


def _add_pair(
    block: np.ndarray, A: np.ndarray, products: np.ndarray, v: np.ndarray, fit_intercept: bool
) -> None:
    """Add ``sum_i v_i a_i a_i^T`` (``a = [x, 1]``) to one class pair's ``block``, in place,
    the products over ``products``: A itself, or A in float32."""
    d = A.shape[1]
    weights = v.astype(products.dtype, copy=False)
    if d >= SYMMETRIC_UPDATE_COLUMNS and weights.min(initial=0.0) >= 0.0:
        # v >= 0 (logistic regression, softmax's diagonal pairs): sum v a a^T = B^T B with
        # B = a sqrt(v), which numpy makes a symmetric rank-k update (half the products).
        B = products * np.sqrt(weights)[:, None]
        block[:d, :d] += B.T @ B
        Av = None
    else:
        Av = products * weights[:, None]
        block[:d, :d] += products.T @ Av
    if fit_intercept:
        # A^T v: as a product for float64 (a column sum of Av, across its short rows, costs
        # several times more); summed in float64 for float32 data, as the gradient's is.
        if A.dtype == np.float64:
            column = v @ A
        else:  # float32 data: its products are A's own
            Av = products * weights[:, None] if Av is None else Av
            column = Av.sum(axis=0, dtype=np.float64)
        block[:d, d] += column
        block[d, :d] += column
        block[d, d] += float(v.sum(dtype=np.float64))


def dense_row_blocks(X: Features, dense_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, dense block)`` pairs: X itself when dense, else CSR rows densified."""
    if not is_sparse(X):
        yield 0, X
        return
    for start in range(0, X.shape[0], dense_rows):
        yield start, X[start : start + dense_rows].toarray()


def _curvature(diag: np.ndarray, outer: np.ndarray | None, rows: slice, c: int, c2: int) -> np.ndarray:
    """Each row's Hessian entry for classes ``(c, c2)``: ``D[c]`` on the diagonal, less ``U[c] U[c2]``."""
    if outer is None:  # diagonal: class_pairs gives only c == c2
        return diag[rows, c]
    return (diag[rows, c] if c == c2 else 0.0) - outer[rows, c] * outer[rows, c2]


def class_pairs(k: int, coupled: bool) -> Iterator[tuple[int, int]]:
    """Class pairs ``c <= c'`` whose blocks can be non-zero: only ``c == c'`` unless coupled."""
    for c in range(k):
        for c2 in range(c, k if coupled else c + 1):
            yield c, c2


def finish_hessian(hess: np.ndarray, k: int) -> np.ndarray:
    """Make ``hess`` exactly symmetric from its filled class pairs ``c <= c'``, in place:
    each diagonal block's upper triangle mirrored below, each pair ``(c, c')`` to ``(c', c)``."""
    n = hess.shape[0] // k
    below = _below_diagonal(n)
    if k == 1:
        np.copyto(hess, hess.T, where=below)
        return hess
    blocks = hess.reshape(n, k, n, k)
    for c in range(k):
        block = blocks[:, c, :, c]
        np.copyto(block, block.T, where=below)
        for c2 in range(c + 1, k):
            blocks[:, c2, :, c] = blocks[:, c, :, c2].T
    return hess


@functools.lru_cache(maxsize=64)
def _below_diagonal(n: int) -> np.ndarray:
    """A mask of an n x n matrix's entries below its diagonal (read only: it is shared)."""
    mask = np.tri(n, k=-1, dtype=bool)
    mask.flags.writeable = False
    return mask


class RowSample(NamedTuple):
    """The rows a sampled Hessian is summed over: those of every ``every``-th block of the
    data's rows (blocks of :func:`block_rows` rows, counted from the data's first row), so
    that the sample is the same whatever the shards; a shard's rows start at ``first_row``
    of ``total_rows``."""

    every: int
    first_row: int
    total_rows: int

    def runs(self, start: int, stop: int, step: int) -> list[slice]:
        """The sampled rows among the shard's rows ``[start, stop)``, as slices of them."""
        first, last = self.first_row + start, self.first_row + stop
        runs = []
        for block in range(first // step, (last - 1) // step + 1):
            if block % self.every == 0:
                low, high = max(first, block * step), min(last, (block + 1) * step)
                runs.append(slice(low - first, high - first))
        return runs

    def scale(self, step: int) -> float:
        """All the data's rows over the sample's."""
        sampled = sum(
            min(step, self.total_rows - start) for start in range(0, self.total_rows, step * self.every)
        )
        return self.total_rows / sampled
