"""Limited-memory BFGS for full-batch training: every evaluation of its line search is a pass."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.errors import ConfigError, check_positive_int
from paragrad.optim.base import Evaluate, Optimizer, OptimizerStep, positive


def sufficient_decrease(
    loss: float, slope: float, step: float, new_loss: float, new_slope: float, c1: float, loss_noise: float
) -> bool:
    """Whether a line search accepts ``step``: sufficient decrease measured by the loss
    (Armijo), or, within the loss's round-off ``loss_noise * |loss|``, by the slope.

    Near the optimum the decrease a step promises falls below the round-off of the loss (a
    sum over every row), while the gradient is still accurate. On a quadratic,
    ``f(a) - f(0) <= c1 a f'(0)`` is exactly ``f'(a) <= (2 c1 - 1) f'(0)``, so the slope test
    is the same condition (Hager and Zhang's approximate Wolfe test).
    """
    if not np.isfinite(new_loss):
        return False
    if new_loss <= loss + c1 * step * slope:
        return True
    return new_loss <= loss + loss_noise * abs(loss) and new_slope <= (2 * c1 - 1) * slope


class LineSearchStalled(UserWarning):
    """L-BFGS could not lower the loss along its search direction (often: at the optimum)."""


class LBFGSState(NamedTuple):
    step: np.ndarray
    s_history: np.ndarray
    y_history: np.ndarray
    num_pairs: np.ndarray
    loss: np.ndarray
    grad: np.ndarray


class LBFGS(Optimizer):
    """Limited-memory BFGS with a backtracking line search, for full-batch training.

    It minimises through ``evaluate(params) -> (loss, grad)``, each call of which is one
    distributed pass over the data (as Spark MLlib and dask-glm do). ``lr`` is the first
    trial step of each line search (1 is right for quasi-Newton steps). A step is
    accepted on sufficient decrease (Armijo); near the optimum, where the decrease it
    promises is below the round-off of the loss (a sum over every row), it is accepted
    when the loss stays within that round-off and the directional derivative shows the
    same decrease on the quadratic model (Hager and Zhang's approximate Wolfe test). When
    no step is accepted, training stops there with a ``LineSearchStalled`` warning.

    Parameters
    ----------
    memory : int
        Number of (step, gradient change) pairs kept.
    lr : float
        First trial step length.
    c1 : float
        Armijo sufficient-decrease constant.
    max_line_search : int
        Halvings of the step before giving up.
    loss_noise : float
        Relative round-off of the loss, within which the gradient test decides.
    """

    name = "lbfgs"
    line_search: ClassVar[bool] = True

    def __init__(
        self,
        memory: int = 10,
        lr: float = 1.0,
        c1: float = 1e-4,
        max_line_search: int = 30,
        loss_noise: float = 1e-6,
    ) -> None:
        super().__init__(lr)
        check_positive_int("memory", memory)
        if not 0.0 < c1 < 1.0:
            raise ConfigError(f"c1 must be in (0, 1), got {c1}")
        check_positive_int("max_line_search", max_line_search)
        self.memory, self.c1, self.max_line_search = int(memory), float(c1), int(max_line_search)
        self.loss_noise = positive("loss_noise", loss_noise)

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
        settings = {"memory": self.memory, "c1": self.c1, "max_line_search": self.max_line_search}
        return {**super().config(), **settings, "loss_noise": self.loss_noise}

    def direction(self, grad: np.ndarray, state: LBFGSState) -> np.ndarray:
        """``-H grad`` by the two-loop recursion over the stored pairs (oldest first)."""
        count = int(state.num_pairs)
        pairs = [(state.s_history[i], state.y_history[i]) for i in range(count)]
        q, alphas = grad.copy(), []
        for s, y in reversed(pairs):
            alpha = (s @ q) / (y @ s)
            alphas.append(alpha)
            q -= alpha * y
        if pairs:
            s, y = pairs[-1]
            q *= (s @ y) / (y @ y)
        for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
            q += (alpha - (y @ q) / (y @ s)) * s
        return -q

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: LBFGSState) -> OptimizerStep:
        """One quasi-Newton step, searching along the direction with as many evaluations
        as it takes; a stalled search leaves the parameters where they are."""
        if np.isnan(state.loss):
            loss, grad = evaluate(params)[:2]
        else:
            loss, grad = float(state.loss), state.grad
        direction = self.direction(grad, state)
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction: forget the curvature pairs
            state = state._replace(num_pairs=np.array(0, dtype=np.int64))
            direction, slope = -grad, -float(grad @ grad)
        step = self.schedule(int(state.step))
        if int(state.num_pairs) == 0:
            step = min(step, 1.0 / max(float(np.abs(grad).sum()), 1e-300))
        for _ in range(self.max_line_search):
            candidate = params + step * direction
            new_loss, new_grad = evaluate(candidate)[:2]
            if sufficient_decrease(
                loss, slope, step, new_loss, float(new_grad @ direction), self.c1, self.loss_noise
            ):
                new_state = self._remember(state, candidate - params, new_grad - grad, new_loss, new_grad)
                return OptimizerStep(candidate, new_state, loss, grad)
            step *= 0.5
        warnings.warn(
            f"L-BFGS's line search found no lower loss in {self.max_line_search} halvings; stopping here",
            LineSearchStalled,
            stacklevel=2,
        )
        return OptimizerStep(params, state._replace(loss=np.array(loss), grad=grad), loss, grad, stalled=True)

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
