"""Which Hessian a run's Newton steps take: an estimate (a sample's, or summed in float32)
or the exact one, and when the one gives way to the other.

The round loop asks after every round (:meth:`HessianSchedule.after_round`); what the
schedule knows goes into a checkpoint (:meth:`state`), so that a resumed run takes the
same steps (:meth:`restore`).
"""

from __future__ import annotations

from typing import Any

from paragrad.optim import Newton, Optimizer
from paragrad.training.strategies import StepOutcome


class HessianSchedule:
    """One run's record of its Newton Hessians, and the rules that change them.

    - A singular or non-finite estimate: the round again with the exact Hessian; where that
      is singular too, the features are dependent and the run goes back to the estimate
      (unless already near the optimum), taking the least-squares steps of smallest norm.
    - A sampled step larger than the one before (features the sample barely holds mislead
      it): the exact Hessian from then on, its point evaluated again.
    - ``exact_below``: the exact Hessian from the pass after a step that small, and no step
      that took an estimate the run's last (one that met ``tol`` has its point evaluated
      again).
    """

    def __init__(self) -> None:
        self.last_step: float | None = None  # the last sampled step's measure
        self.held_estimated = False  # whether the Hessian in the optimizer's state is an estimate
        self.switched = False  # whether the run went on from its estimate to the exact Hessian
        self.note = ""  # when and why, for the summary

    def step_takes_estimate(self, optimizer: Optimizer, point_evaluated: bool) -> bool:
        """Whether the coming Newton step takes an estimate: the Hessian its point was
        evaluated with the round before, or this optimizer's if it evaluates the point."""
        if not isinstance(optimizer, Newton):
            return False
        return self.held_estimated if point_evaluated else optimizer.estimated

    def exact(self, optimizer: Newton, round_index: int, why: str = "") -> Newton:
        """The exact Hessian from round ``round_index`` on, ``why`` in words (none: the
        run came near the optimum, as planned)."""
        estimate = optimizer.estimate()
        self.switched = True
        self.note = (
            f" (the Hessian{estimate} to round {round_index}, then exact{': ' + why if why else ''})"
            if round_index > 0
            else f" (the exact Hessian: {why})"
        )
        return optimizer.exact()

    def back_to_estimate(self, estimated: Newton, exact_step: StepOutcome, round_index: int) -> Newton | None:
        """After an exact round that found the features dependent, the estimate again (its
        steps the least-squares ones of smallest norm), unless the run is near the optimum."""
        below = estimated.exact_below
        if below is not None and exact_step.criterion is not None and exact_step.criterion <= below:
            return None
        self.switched = False
        until = f" in float32 to round {round_index}, then" if round_index > 0 else ""
        self.note = (
            f" (the Hessian{until} in float64: the features are dependent)"
            if estimated.hessian_float32
            else ""
        )
        return estimated.accepting_singular()

    def after_round(
        self,
        optimizer: Optimizer,
        outcome: StepOutcome,
        converged: bool,
        step_estimated: bool,
        round_index: int,
    ) -> tuple[Optimizer, bool, bool]:
        """The optimizer for the next round, whether its point is to be evaluated again, and
        whether the run has converged, after a round that took ``outcome``."""
        if not isinstance(optimizer, Newton):
            return optimizer, False, converged
        if not converged and self.sampled_step_grew(optimizer, outcome):
            return self.exact(optimizer, round_index + 1, "a step grew"), True, False
        below = optimizer.exact_below
        if below is None:
            return optimizer, False, converged
        self.held_estimated = optimizer.estimated  # the point reached was evaluated so
        if converged and step_estimated:  # not the last step: its point evaluated again, exactly
            if optimizer.estimated:
                optimizer = self.exact(optimizer, round_index + 1, "a step met tol")
            return optimizer, True, False
        if optimizer.estimated and outcome.criterion is not None and outcome.criterion <= below:
            return self.exact(optimizer, round_index + 1), False, converged
        return optimizer, False, converged

    def sampled_step_grew(self, optimizer: Newton, outcome: StepOutcome) -> bool:
        """Whether a step with a sampled Hessian was larger than the one before: the steps
        shrink round after round where the sample's curvature is the data's."""
        if optimizer.hessian_every == 1:
            return False
        previous, self.last_step = self.last_step, outcome.criterion
        return previous is not None and outcome.criterion is not None and outcome.criterion > previous

    def state(self, optimizer: Optimizer) -> dict[str, Any]:
        """What a checkpoint keeps of the schedule (nothing but for Newton)."""
        if not isinstance(optimizer, Newton):
            return {}
        return {
            "switched": self.switched,
            "singular_known": optimizer.singular_known,
            "held_estimated": self.held_estimated,
            "last_step": self.last_step,
            "note": self.note,
        }

    def restore(self, optimizer: Optimizer, saved: Any) -> Optimizer:
        """The optimizer a checkpoint's run had gone on with, and the schedule as it was."""
        if not (isinstance(optimizer, Newton) and isinstance(saved, dict)):
            return optimizer  # not Newton, or a checkpoint made before the schedule was kept
        self.switched = bool(saved.get("switched", False))
        self.held_estimated = bool(saved.get("held_estimated", False))
        last_step = saved.get("last_step")
        self.last_step = float(last_step) if isinstance(last_step, (int, float)) else None
        self.note = str(saved.get("note", ""))
        if self.switched:
            optimizer = optimizer.exact()
        return optimizer.accepting_singular() if saved.get("singular_known") else optimizer
