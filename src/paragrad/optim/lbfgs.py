"""Limited-memory BFGS for full-batch training: every evaluation of its line search is a pass.

Badly scaled features (one in the thousands beside one in the thousandths) make the
curvature of the loss differ by orders of magnitude between directions. L-BFGS starts
each two-loop recursion from a diagonal preconditioner, the inverse squares of the
features' scales (computed in the pass that gathers the shards' moments), so it solves
in the features' own units while the parameters stay on the user's scale; and its
convergence measure is the gradient in those units, relative to the loss, so it means
the same on any scale.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.errors import ConfigError, caller_stacklevel, check_positive_int
from paragrad.optim.base import Evaluate, Evaluation, Optimizer, OptimizerStep, positive
from paragrad.optim.line_search import LineSearchStalled, StrongWolfe, Trial


class LBFGSState(NamedTuple):
    step: np.ndarray
    s_history: np.ndarray
    y_history: np.ndarray
    num_pairs: np.ndarray
    loss: np.ndarray
    grad: np.ndarray


class LBFGS(Optimizer):
    """Limited-memory BFGS with a strong Wolfe line search and diagonal preconditioning.

    It minimises through ``evaluate(params)``, each call of which is one distributed pass
    over the data (as Spark MLlib and dask-glm do). ``lr`` is the first trial step of each
    line search (1 is right for quasi-Newton steps). Steps meet the strong Wolfe
    conditions (as scipy's L-BFGS-B and breeze's take them); near the optimum, where the
    decrease a step promises is below the round-off of the loss, the slope decides
    (Hager and Zhang's approximate Wolfe test). When no step is accepted, training stops
    there with a ``LineSearchStalled`` warning.

    Parameters
    ----------
    memory : int
        Number of (step, gradient change) pairs kept.
    lr : float
        First trial step length.
    c1, c2 : float
        Sufficient-decrease and curvature constants, ``0 < c1 < c2 < 1``.
    max_line_search : int
        Evaluations of one line search before giving up.
    loss_noise : float
        Relative round-off of the loss, within which the slope decides.
    """

    name = "lbfgs"
    line_search: ClassVar[bool] = True
    takes_scales: ClassVar[bool] = True

    def __init__(
        self,
        memory: int = 10,
        lr: float = 1.0,
        c1: float = 1e-4,
        max_line_search: int = 30,
        loss_noise: float = 1e-6,
        c2: float = 0.9,
    ) -> None:
        super().__init__(lr)
        check_positive_int("memory", memory)
        if not 0.0 < c1 < c2 < 1.0:
            raise ConfigError(f"c1 and c2 must satisfy 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        check_positive_int("max_line_search", max_line_search)
        self.memory, self.c1, self.c2, self.max_line_search = (
            int(memory),
            float(c1),
            float(c2),
            int(max_line_search),
        )
        self.loss_noise = positive("loss_noise", loss_noise)
        self.scales: np.ndarray | None = None

    def with_scales(self, scales: np.ndarray) -> LBFGS:
        """This optimizer preconditioned by the parameters' scales (``1 / scale^2``)."""
        scaled = copy.copy(self)
        scaled.scales = np.asarray(scales, dtype=np.float64)
        return scaled

    def init(self, params: np.ndarray) -> LBFGSState:
        d = len(params)
        history = np.zeros((self.memory, d))
        return LBFGSState(
            np.array(0, dtype=np.int64),
            history,
            history.copy(),
            np.array(0, dtype=np.int64),
            np.array(np.nan),
            np.zeros(d),
        )

    def config(self) -> dict[str, Any]:
        settings = {
            "memory": self.memory,
            "c1": self.c1,
            "c2": self.c2,
            "max_line_search": self.max_line_search,
        }
        return {**super().config(), **settings, "loss_noise": self.loss_noise}

    def _inverse_diagonal(self, size: int) -> np.ndarray:
        return np.ones(size) if self.scales is None else 1.0 / self.scales**2

    def direction(self, grad: np.ndarray, state: LBFGSState) -> np.ndarray:
        """``-H grad`` by the two-loop recursion over the stored pairs (oldest first),
        from the preconditioner ``D`` scaled by ``s.y / y.D.y`` of the newest pair."""
        count = int(state.num_pairs)
        pairs = [(state.s_history[i], state.y_history[i]) for i in range(count)]
        q, alphas = grad.copy(), []
        for s, y in reversed(pairs):
            alpha = (s @ q) / (y @ s)
            alphas.append(alpha)
            q -= alpha * y
        diagonal = self._inverse_diagonal(len(grad))
        q *= diagonal
        if pairs:
            s, y = pairs[-1]
            q *= (s @ y) / (y @ (diagonal * y))
        for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
            q += (alpha - (y @ q) / (y @ s)) * s
        return -q

    def criterion(self, loss: float, grad: np.ndarray) -> float:
        """The gradient in the features' units, relative to the loss: the largest
        ``|g_j| / scale_j``, over ``sqrt(2 |loss|)`` (at least the loss's round-off)."""
        scaled = grad if self.scales is None else grad / self.scales
        return float(np.abs(scaled).max() / np.sqrt(max(2.0 * abs(loss), 1e-300)))

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: LBFGSState) -> OptimizerStep:
        """One quasi-Newton step, searching along the direction with as many evaluations
        as it takes; a stalled search leaves the parameters where they are."""
        here = evaluate(params) if np.isnan(state.loss) else Evaluation(float(state.loss), state.grad)
        loss, grad = here.loss, here.grad
        direction = self.direction(grad, state)
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction: forget the curvature pairs
            state = state._replace(num_pairs=np.array(0, dtype=np.int64))
            direction = -self._inverse_diagonal(len(grad)) * grad
            slope = float(grad @ direction)
        step = self.schedule(int(state.step))
        if int(state.num_pairs) == 0 and self.scales is None:
            # No curvature known, and no scales to size the step by: a modest one.
            step = min(step, 1.0 / max(float(np.abs(direction).sum()), 1e-300))

        def probe(length: float) -> Trial:
            there = evaluate(params + length * direction)
            return Trial(length, there, float(there.grad @ direction))

        search = StrongWolfe(self.c1, self.c2, self.max_line_search, self.loss_noise)
        found = search.search(probe, Trial(0.0, here, slope), step)
        criterion = self.criterion(loss, grad)
        if found is None:
            warnings.warn(
                f"L-BFGS's line search found no acceptable step in {self.max_line_search} evaluations; "
                "stopping here",
                LineSearchStalled,
                stacklevel=caller_stacklevel(),
            )
            kept = state._replace(loss=np.array(loss), grad=grad)
            return OptimizerStep(params, kept, loss, grad, stalled=True, criterion=criterion)
        candidate = params + found.step * direction
        there = found.evaluation
        new_state = self._remember(state, candidate - params, there.grad - grad, there.loss, there.grad)
        return OptimizerStep(candidate, new_state, loss, grad, criterion=criterion)

    def _remember(
        self, state: LBFGSState, s: np.ndarray, y: np.ndarray, loss: float, grad: np.ndarray
    ) -> LBFGSState:
        s_history, y_history, count = state.s_history.copy(), state.y_history.copy(), int(state.num_pairs)
        if s @ y > 1e-12 * (y @ y):  # keep only pairs of positive curvature
            if count == self.memory:
                s_history[:-1], y_history[:-1] = s_history[1:].copy(), y_history[1:].copy()
                count -= 1
            s_history[count], y_history[count] = s, y
            count += 1
        return LBFGSState(
            state.step + 1, s_history, y_history, np.array(count, dtype=np.int64), np.array(loss), grad
        )


__all__ = ["LBFGS", "LBFGSState", "LineSearchStalled"]
