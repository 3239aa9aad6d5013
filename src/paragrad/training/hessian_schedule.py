"""Which Hessian a run's Newton steps take: an estimate (a sample's, or summed in float32)
or the exact one, and when the one gives way to the other.

The round loop asks after every round (:meth:`HessianSchedule.after_round`); what the
schedule knows goes into a checkpoint (:meth:`state`), so that a resumed run takes the
same steps (:meth:`restore`).
"""

from __future__ import annotations

from typing import Any

from paragrad.optim import Newton, Optimizer
from paragrad.optim.newton import START_UNTIL
from paragrad.training.strategies import StepOutcome

# Rounds on the sample's rows at most: Newton reaches a sample's optimum in a handful, a
# nearly separable one's in a dozen or so (12 on 150,000 x 100 whose classes lie 40 apart,
# where exact Newton takes 14 over all the rows); one that takes more (a sample whose
# classes are separable) hands over to all the rows, from the run's first point.
MAX_SAMPLE_ROUNDS = 20


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
    - ``start_sample``: the rounds on a sample's rows alone end after a step of measure
      :data:`~paragrad.optim.newton.START_UNTIL` (or one that met ``tol``, a stalled search,
      or :data:`MAX_SAMPLE_ROUNDS`): the run goes on over all the rows from the point
      reached, evaluated again. The sample's rounds never end a run.
    """

    def __init__(self) -> None:
        self.last_step: float | None = None  # the last sampled step's measure
        self.held_estimated = False  # whether the Hessian in the optimizer's state is an estimate
        self.switched = False  # whether the run went on from its estimate to the exact Hessian
        self.note = ""  # when and why, for the summary
        self.sample_rounds = 0  # rounds taken on a sample's rows alone
        self.start_note = ""  # how the run started, for the summary
        self.in_float64 = False  # whether the run went on from float32 sums to float64's
        self.restart = False  # the run goes on from its first point (the round loop resets it)
        self.saved_on_another_sample = False  # a resumed state's sums are another sample's

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
        if optimizer.on_sample:
            return self.after_sample_round(optimizer, outcome, converged)
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

    def after_sample_round(
        self, optimizer: Newton, outcome: StepOutcome, converged: bool
    ) -> tuple[Optimizer, bool, bool]:
        """After a round on the sample's rows alone: the same optimizer, or all the rows from
        the point reached (evaluated again) once it is near the sample's optimum; from the
        run's first point (:attr:`restart`) where the rounds found none (a sample whose
        classes are separable: its steps run off to infinite weights)."""
        self.sample_rounds += 1
        near = converged or (outcome.criterion is not None and outcome.criterion <= START_UNTIL)
        if not (near or outcome.stalled or self.sample_rounds >= MAX_SAMPLE_ROUNDS):
            return optimizer, False, False
        return self.end_sample(optimizer, None if near else "found no optimum"), True, False

    def end_sample(self, optimizer: Newton, missed: str | None = None) -> Newton:
        """All the rows from now on, after the rounds on a sample's; from the run's first
        point where they missed the sample's optimum (``missed`` says how)."""
        self.last_step = None  # the sample's steps are not the data's
        rounds, share = self.sample_rounds, 1 / optimizer.start_every
        if rounds:
            counted = f"{rounds} round{'s' if rounds != 1 else ''}"
            why = "" if missed is None else f", which {missed}: all the rows from the start"
            self.start_note = f" (its first {counted} on {share:.1%} of the rows alone{why})"
        self.restart = missed is not None and rounds > 0
        return optimizer.all_rows()

    def less_estimated(self, optimizer: Newton, round_index: int) -> Newton:
        """The optimizer to take a round again with after its estimate was singular or not
        finite: all the rows after a sample's; where the exact Hessian is not in the run's
        plan (no ``exact_below``: it costs many passes), the sample's in float64 after its
        float32 sums; else the exact Hessian."""
        if optimizer.on_sample:  # a feature the sample misses, or its classes separated
            return self.end_sample(optimizer, "met a singular Hessian")
        if optimizer.hessian_float32 and optimizer.hessian_every > 1 and optimizer.exact_below is None:
            until = f"in float32 to round {round_index}, then " if round_index > 0 else ""
            self.note = f" ({until}in float64: the float32 sums were singular or not finite)"
            self.in_float64 = True
            return optimizer.in_float64()
        return self.exact(optimizer, round_index, "the estimate was singular or not finite")

    def describe(self) -> str:
        """What the schedule did, for the summary: after the optimizer's label."""
        return self.start_note + self.note

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
            "sample_rounds": self.sample_rounds,
            "on_sample": optimizer.on_sample,
            "start_note": self.start_note,
            "start_every": optimizer.start_every if optimizer.on_sample else None,
            "float64": self.in_float64,
        }

    def restore(self, optimizer: Optimizer, saved: Any) -> Optimizer:
        """The optimizer a checkpoint's run had gone on with, and the schedule as it was."""
        if not isinstance(optimizer, Newton):
            return optimizer
        if not isinstance(saved, dict):  # a checkpoint made before the schedule was kept
            return optimizer.all_rows()
        self.sample_rounds = int(saved.get("sample_rounds", 0))
        self.start_note = str(saved.get("start_note", ""))
        if saved.get("on_sample", False):  # its state holds one sample's sums: this one's?
            self.saved_on_another_sample = not (
                optimizer.on_sample and optimizer.start_every == saved.get("start_every")
            )
        if not (saved.get("on_sample", False) and optimizer.on_sample):
            optimizer = optimizer.all_rows()
        self.in_float64 = bool(saved.get("float64", False))
        if self.in_float64:
            optimizer = optimizer.in_float64()
        self.switched = bool(saved.get("switched", False))
        self.held_estimated = bool(saved.get("held_estimated", False))
        last_step = saved.get("last_step")
        self.last_step = float(last_step) if isinstance(last_step, (int, float)) else None
        self.note = str(saved.get("note", ""))
        if self.switched:
            optimizer = optimizer.exact()
        return optimizer.accepting_singular() if saved.get("singular_known") else optimizer
