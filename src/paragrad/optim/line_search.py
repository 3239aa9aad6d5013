"""Line searches whose every evaluation is one distributed pass: backtracking and strong Wolfe.

Near the optimum the decrease a step promises falls below the round-off of the loss (a
sum over every row) while the gradient is still accurate, so both searches also accept a
step whose loss stays within that round-off when its slope shows the decrease (Hager and
Zhang's approximate Wolfe test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from paragrad.optim.base import Evaluation


class LineSearchStalled(UserWarning):
    """A line search found no acceptable step along its direction (often: at the optimum)."""


class Trial(NamedTuple):
    """A step length, the evaluation there, and the slope along the search direction."""

    step: float
    evaluation: Evaluation
    slope: float


def sufficient_decrease(
    loss: float, slope: float, step: float, new_loss: float, new_slope: float, c1: float, loss_noise: float
) -> bool:
    """Whether ``step`` decreases the loss enough: by the loss (Armijo), or, within the
    loss's round-off ``loss_noise * |loss|``, by the slope. On a quadratic,
    ``f(a) - f(0) <= c1 a f'(0)`` is exactly ``f'(a) <= (2 c1 - 1) f'(0)``."""
    if not math.isfinite(new_loss):
        return False
    if new_loss <= loss + c1 * step * slope:
        return True
    return new_loss <= loss + loss_noise * abs(loss) and new_slope <= (2 * c1 - 1) * slope


class StrongWolfe:
    """A line search for the strong Wolfe conditions (Nocedal and Wright, algorithms 3.5
    and 3.6): sufficient decrease, and a slope at most ``c2`` times the first in size, so
    that every accepted step gives L-BFGS a pair of positive curvature.
    """

    def __init__(self, c1: float, c2: float, max_evaluations: int, loss_noise: float) -> None:
        self.c1, self.c2, self.max_evaluations, self.loss_noise = c1, c2, max_evaluations, loss_noise

    def search(self, probe: Callable[[float], Trial], start: Trial, step: float) -> Trial | None:
        """The first step that meets both conditions, or None when none is found in time.

        ``probe(a)`` evaluates at step length ``a``; ``start`` is the trial at 0.
        """
        previous, evaluations = start, 0
        while evaluations < self.max_evaluations:
            trial = probe(step)
            evaluations += 1
            if not self._decreases(start, trial) or (
                evaluations > 1 and trial.evaluation.loss >= previous.evaluation.loss
            ):
                return self._zoom(probe, start, previous, trial, evaluations)
            if abs(trial.slope) <= -self.c2 * start.slope:
                return trial
            if trial.slope >= 0:
                return self._zoom(probe, start, trial, previous, evaluations)
            previous, step = trial, 2.0 * step
        return None

    def _decreases(self, start: Trial, trial: Trial) -> bool:
        return sufficient_decrease(
            start.evaluation.loss,
            start.slope,
            trial.step,
            trial.evaluation.loss,
            trial.slope,
            self.c1,
            self.loss_noise,
        )

    def _zoom(
        self, probe: Callable[[float], Trial], start: Trial, low: Trial, high: Trial, evaluations: int
    ) -> Trial | None:
        """Narrow ``[low, high]`` (``low`` decreases enough) to a step meeting both conditions."""
        while evaluations < self.max_evaluations:
            trial = probe(_interpolate(low, high))
            evaluations += 1
            if not self._decreases(start, trial) or trial.evaluation.loss >= low.evaluation.loss:
                high = trial
                continue
            if abs(trial.slope) <= -self.c2 * start.slope:
                return trial
            if trial.slope * (high.step - low.step) >= 0:
                high = low
            low = trial
        return low if low.step > 0 else None


def _interpolate(low: Trial, high: Trial) -> float:
    """The minimiser of the quadratic through ``low``'s loss and slope and ``high``'s loss,
    kept within the middle 80% of the interval (else its midpoint)."""
    width = high.step - low.step
    f_low, f_high = low.evaluation.loss, high.evaluation.loss
    curvature = f_high - f_low - low.slope * width
    a, b = sorted((low.step, high.step))
    if np.isfinite(f_high) and curvature > 0:
        step = low.step - low.slope * width * width / (2.0 * curvature)
        if a + 0.1 * (b - a) <= step <= b - 0.1 * (b - a):
            return float(step)
    return 0.5 * (low.step + high.step)
