"""Newton's method for full-batch training with exact Hessian sums from the workers.

Each round every worker returns its loss, gradient and Hessian sums; the coordinator
solves ``H d = -g`` and searches along ``d`` from the full step, which is accepted near
the optimum, where convergence is quadratic: a handful of rounds reach machine precision.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.errors import ConfigError, caller_stacklevel, check_positive_int
from paragrad.optim.base import Evaluate, Evaluation, Needs, Optimizer, OptimizerStep, positive
from paragrad.optim.least_squares import RankDeficient
from paragrad.optim.line_search import LineSearchStalled, sufficient_decrease


class NewtonState(NamedTuple):
    step: np.ndarray
    loss: np.ndarray  # NaN until a point is evaluated; then that point's objective ...
    grad: np.ndarray
    hessian: np.ndarray


def newton_direction(hessian: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, bool]:
    """``-H^-1 g`` by Cholesky, and whether H is singular: then the least-squares direction
    of smallest norm instead; where H is not finite (values too large for the data's float
    type), the gradient's."""
    if not (np.isfinite(hessian).all() and np.isfinite(grad).all()):
        return -grad, False
    try:
        lower = np.linalg.cholesky(hessian)
        direction = -np.linalg.solve(lower.T, np.linalg.solve(lower, grad))
        if np.isfinite(direction).all():
            return direction, False
    except np.linalg.LinAlgError:
        pass
    return -np.linalg.lstsq(hessian, grad, rcond=None)[0], True


class Newton(Optimizer):
    """Newton's method with a backtracking line search (from the full step).

    Its convergence measure is the Newton step's largest entry relative to the
    parameters' (at least 1): when it falls to ``tol``, the step just taken leaves an
    error of about its square.

    Parameters
    ----------
    c1 : float
        Sufficient-decrease constant of the line search.
    max_line_search : int
        Halvings of the step before giving up.
    loss_noise : float
        Relative round-off of the loss, within which the slope decides (see L-BFGS).
    """

    name = "newton"
    line_search: ClassVar[bool] = True
    needs: ClassVar[Needs] = "hessian"

    def __init__(self, c1: float = 1e-4, max_line_search: int = 30, loss_noise: float = 1e-6) -> None:
        super().__init__(1.0)
        if not 0.0 < c1 < 1.0:
            raise ConfigError(f"c1 must be in (0, 1), got {c1}")
        check_positive_int("max_line_search", max_line_search)
        self.c1, self.max_line_search = float(c1), int(max_line_search)
        self.loss_noise = positive("loss_noise", loss_noise)

    def init(self, params: np.ndarray) -> NewtonState:
        d = len(params)
        return NewtonState(np.array(0, dtype=np.int64), np.array(np.nan), np.zeros(d), np.zeros((d, d)))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "c1": self.c1, "max_line_search": self.max_line_search}

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: NewtonState) -> OptimizerStep:
        """One Newton step; the point it reaches is evaluated once, for the next step too."""
        here = (
            evaluate(params)
            if np.isnan(state.loss)
            else Evaluation(float(state.loss), state.grad, state.hessian)
        )
        assert here.hessian is not None
        direction, singular = newton_direction(here.hessian, here.grad)
        if singular and int(state.step) == 0:
            # At the start every row weighs the same: only the features can make H singular.
            # Later, rows whose probabilities reached 0 or 1 can (separable classes), which
            # the round loop tells apart by this first step.
            warnings.warn(
                "the Hessian is singular: the features are linearly dependent (a column repeats others "
                "or is constant), and the solution of smallest norm is taken",
                RankDeficient,
                stacklevel=caller_stacklevel(),
            )
        slope = float(here.grad @ direction)
        if not slope < 0:  # no descent along it (H numerically indefinite): the gradient's way
            direction, slope = -here.grad, -float(here.grad @ here.grad)
        criterion = float(np.abs(direction).max() / max(1.0, float(np.abs(params).max())))
        step = 1.0
        for _ in range(self.max_line_search):
            candidate = params + step * direction
            there = evaluate(candidate)
            new_slope = float(there.grad @ direction)
            if sufficient_decrease(here.loss, slope, step, there.loss, new_slope, self.c1, self.loss_noise):
                assert there.hessian is not None
                reached = NewtonState(state.step + 1, np.array(there.loss), there.grad, there.hessian)
                return OptimizerStep(
                    candidate, reached, here.loss, here.grad, criterion=criterion, singular=singular
                )
            step *= 0.5
        warnings.warn(
            f"Newton's line search found no lower loss in {self.max_line_search} halvings; stopping here",
            LineSearchStalled,
            stacklevel=caller_stacklevel(),
        )
        kept = NewtonState(state.step, np.array(here.loss), here.grad, here.hessian)
        return OptimizerStep(
            params, kept, here.loss, here.grad, stalled=True, criterion=criterion, singular=singular
        )
