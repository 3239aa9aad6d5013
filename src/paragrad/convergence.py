"""When a run has converged: the gradient for full batches, the epoch's loss otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.strategies import StepOutcome


class ConvergenceCheck:
    """Decides after each round whether training has converged to ``tol``.

    Full-batch strategies converge when the optimizer's own measure is at most ``tol``
    (Newton: its step relative to the parameters), else the gradient's largest entry, or at
    once when an exact solver has solved the problem; stochastic ones when an epoch's mean
    loss differs from the previous epoch's by at most ``tol * max(1, |previous|)``.
    ``tol=0`` never converges, unless solved exactly.
    """

    def __init__(self, tol: float, stochastic: bool) -> None:
        self.tol, self.stochastic = tol, stochastic
        self.previous_epoch_loss: float | None = None
        self.epoch_losses: list[float] = []

    def state(self) -> dict[str, Any]:
        return {"previous_epoch_loss": self.previous_epoch_loss, "epoch_losses": list(self.epoch_losses)}

    def restore(self, state: dict[str, Any]) -> None:
        self.previous_epoch_loss = state["previous_epoch_loss"]
        self.epoch_losses = list(state["epoch_losses"])

    def update(self, outcome: StepOutcome, epoch_ends: bool) -> bool:
        if outcome.solved:
            return True
        if self.tol == 0:
            return False
        if not self.stochastic:
            measure = outcome.criterion if outcome.criterion is not None else outcome.grad_norm
            if measure is not None:
                return measure <= self.tol
        self.epoch_losses.append(outcome.loss)
        if not epoch_ends:
            return False
        epoch_loss = float(np.mean(self.epoch_losses))
        previous, self.previous_epoch_loss, self.epoch_losses = (
            self.previous_epoch_loss,
            epoch_loss,
            [],
        )
        return previous is not None and abs(previous - epoch_loss) <= self.tol * max(1.0, abs(previous))
