"""When a run has converged: the gradient for full batches, the epoch's loss otherwise."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from paragrad.errors import setting
from paragrad.training.strategies import StepOutcome

SEPARATED_LOSS = 1e-8  # a classifier's mean loss this small: every row on its side, with a margin


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
        """What a checkpoint keeps. The epoch's losses so far are those of the history's last
        ``num_epoch_losses`` records, which the checkpoint holds already: only their count is
        written (a list of them made every checkpoint cost more the longer the epoch)."""
        return {"previous_epoch_loss": self.previous_epoch_loss, "num_epoch_losses": len(self.epoch_losses)}

    @staticmethod
    def check_state(state: Any, rounds: int) -> None:
        """Refuse (ValueError) a checkpoint's state that :meth:`restore` cannot take up from a
        history of ``rounds`` records: one counting more of the epoch's losses than it holds."""
        if isinstance(state, dict) and "epoch_losses" in state:
            return  # format 4: the losses themselves
        count = state.get("num_epoch_losses") if isinstance(state, dict) else None
        if not (isinstance(count, int) and 0 <= count <= rounds):
            raise ValueError(
                f"a convergence state counting {count!r} of the epoch's losses in {rounds} rounds"
            )

    def restore(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Go on from :meth:`state` of a checkpoint whose history is ``history``."""
        self.previous_epoch_loss = state["previous_epoch_loss"]
        if "epoch_losses" in state:  # a checkpoint written before the count replaced the list
            self.epoch_losses = list(state["epoch_losses"])
        else:
            self.epoch_losses = [
                record["loss"] for record in history[len(history) - state["num_epoch_losses"] :]
            ]

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


def no_finite_optimum(
    losses: list[float], norms: list[float], newton: bool, largest: float, saturated: bool = False
) -> str | None:
    """Why an unpenalised classifier has no finite optimum, or None if nothing says so.

    Its loss reaching zero (every row on its side, with a margin: separable classes); or,
    under Newton, which converges in a handful of rounds where an optimum exists, weights
    that keep growing while the loss falls; or (``saturated``) a Hessian regular at the
    start that became singular: with independent features only rows whose probabilities
    reached 0 or 1 within round-off make it so, which happens on the way to infinite
    weights along a direction that separates some classes (quasi-complete separation, as
    in iris), however small the loss of the other rows. ``norms`` holds the parameters'
    largest entry after each round.
    """
    if not losses:
        return None
    separable = losses[-1] <= SEPARATED_LOSS or saturated
    if newton and len(norms) >= 20:
        tail = slice(len(norms) - 10, None)
        growing = all(b >= a for a, b in itertools.pairwise(norms[tail])) and norms[-1] > 1.5 * norms[-10]
        separable = separable or (growing and all(b <= a for a, b in itertools.pairwise(losses[tail])))
    if not separable:
        return None
    return (
        f"the classes look separable (training loss {losses[-1]:.3g}, largest weight {largest:.3g}): "
        "without a penalty there is no finite optimum, and the weights grow without bound; add one "
        f"({setting('l2')})"
    )
