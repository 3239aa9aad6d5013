"""Exact least squares by tall-skinny QR: one pass, never the normal equations.

Each worker reduces its rows ``[A | y]`` (``A = [X, 1]``) to a small upper-triangular
factor, block by block; the coordinator stacks the factors in worker order with the L2
penalty as extra rows, and factors once more. With ``R = [[R_A, c], [0, rho]]``, the
solution solves ``R_A theta = c`` and ``rho^2`` is the least residual. Forming ``A^T A``
instead would square the condition number (1e9 becomes 1e18: nothing left in float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.data import is_sparse
from paragrad.errors import caller_stacklevel
from paragrad.optim.base import Evaluate, Needs, Optimizer, OptimizerStep

BLOCK_ELEMENTS = 1 << 20  # rows per block: about 8 MB of float64, and at least twice the width


class RankDeficient(UserWarning):
    """The features are linearly dependent: the minimum-norm solution is returned."""


class LeastSquaresState(NamedTuple):
    step: np.ndarray


def _triangular(rows: np.ndarray) -> np.ndarray:
    """The R of a QR factorisation of ``rows`` (at most as many rows as columns kept)."""
    factor: np.ndarray = np.linalg.qr(rows, mode="r")  # type: ignore[assignment]  # mode "r": R alone
    return factor


def shard_factor(X: Any, y: np.ndarray, fit_intercept: bool) -> np.ndarray:
    """The triangular factor of a shard's ``[X, 1, y]``, reduced block by block in float64."""
    width = X.shape[1] + int(fit_intercept) + 1
    step = max(2 * width, BLOCK_ELEMENTS // width)
    factor = np.zeros((0, width))
    for start in range(0, X.shape[0], step):
        block = X[start : start + step]
        block = block.toarray() if is_sparse(block) else block
        columns = [np.asarray(block, dtype=np.float64)]
        if fit_intercept:
            columns.append(np.ones((block.shape[0], 1)))
        columns.append(np.asarray(y[start : start + step], dtype=np.float64)[:, None])
        factor = _triangular(np.vstack([factor, np.hstack(columns)]))
    return factor


def combine_factors(factors: Sequence[np.ndarray], penalty_rows: np.ndarray) -> np.ndarray:
    """One square factor of the stacked shards' factors and the penalty rows."""
    stacked = _triangular(np.vstack([*factors, penalty_rows]))
    width = stacked.shape[1]
    square = np.zeros((width, width))
    square[: stacked.shape[0]] = stacked  # fewer rows than columns: zeros below
    return square


class LeastSquares(Optimizer):
    """Linear regression solved exactly in one pass by tall-skinny QR (see the module).

    Rank-deficient features get the minimum-norm solution, as ``numpy.linalg.lstsq``
    gives, with a :class:`RankDeficient` warning.
    """

    name = "qr"
    line_search: ClassVar[bool] = True  # full batch, exact data: no minibatches, no compression
    needs: ClassVar[Needs] = "factor"

    def __init__(self) -> None:
        super().__init__(1.0)

    def init(self, params: np.ndarray) -> LeastSquaresState:
        return LeastSquaresState(np.array(0, dtype=np.int64))

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: LeastSquaresState) -> OptimizerStep:
        """The solution, with the objective and its gradient there (the gradient ~ 0)."""
        here = evaluate(params)
        assert here.factor is not None and here.count > 0
        p = len(params)
        R, c, rho = here.factor[:p, :p], here.factor[:p, p], here.factor[p, p]
        # The rank is judged on columns of equal norm (one column in large units would make
        # the others look negligible), with the cut-off numpy.linalg.lstsq uses on the whole
        # (count x p) matrix; dependent columns get lstsq's own minimum-norm answer.
        cutoff = np.finfo(np.float64).eps * max(here.count, p)
        norms = np.linalg.norm(R, axis=0)
        norms[norms == 0] = 1.0
        scaled, _, rank, _ = np.linalg.lstsq(R / norms, c, rcond=cutoff)
        theta = scaled / norms if rank == p else np.linalg.lstsq(R, c, rcond=cutoff)[0]
        if rank < p:
            warnings.warn(
                f"the features are linearly dependent (rank {rank} of {p} columns): the solution of "
                "smallest norm is returned, as numpy.linalg.lstsq gives",
                RankDeficient,
                stacklevel=caller_stacklevel(),
            )
        loss = float(rho**2) / (2 * here.count)
        grad = R.T @ (R @ theta - c) / here.count
        return OptimizerStep(theta, LeastSquaresState(state.step + 1), loss, grad, criterion=0.0, solved=True)
