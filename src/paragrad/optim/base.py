"""What every optimizer is: a learning-rate schedule, ``init``, and one step through ``minimize``.

An optimizer's state is a NamedTuple of numpy arrays (its step counter included), so it
can be saved to and restored from a plain ``.npz`` file. Every optimizer takes one step
with ``minimize(evaluate, params, state)``, where ``evaluate(point)`` is one distributed
pass that returns an :class:`Evaluation`: first-order optimizers evaluate once and apply
their pure ``update``; the solvers evaluate as often as their line search needs, and ask
the workers for more than a gradient where they use it (``needs``). So the trainer
treats every optimizer alike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import numpy as np

from paragrad.errors import ConfigError


class Schedule(Protocol):
    """A learning rate as a function of the step number (0, 1, 2, ...)."""

    def __call__(self, step: int) -> float: ...


def positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Constant:
    """The same learning rate at every step."""

    lr: float

    def __post_init__(self) -> None:
        positive("learning rate", self.lr)

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True)
class StepDecay:
    """``lr * factor ** (step // every)``: multiply by ``factor`` every ``every`` steps."""

    lr: float
    every: int
    factor: float = 0.1

    def __post_init__(self) -> None:
        positive("learning rate", self.lr)
        positive("every", self.every)
        positive("factor", self.factor)

    def __call__(self, step: int) -> float:
        return self.lr * self.factor ** (step // self.every)


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from ``lr`` to ``final_lr`` over ``total_steps``, then ``final_lr``."""

    lr: float
    total_steps: int
    final_lr: float = 0.0

    def __post_init__(self) -> None:
        positive("learning rate", self.lr)
        positive("total_steps", self.total_steps)

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Shifted:
    """A schedule started ``offset`` steps in: step ``s`` gets ``schedule(offset + s)``."""

    schedule: Schedule
    offset: int

    def __call__(self, step: int) -> float:
        return self.schedule(self.offset + step)


def as_schedule(lr: float | Schedule) -> Schedule:
    """A schedule from a number (constant) or a schedule object."""
    return lr if callable(lr) else Constant(positive("learning rate", lr))


Needs = Literal["gradient", "hessian", "factor"]


class Evaluation(NamedTuple):
    """The full-batch objective at a point, from one pass of the workers.

    ``loss`` and ``grad`` are the mean objective and its gradient (penalty included);
    ``hessian`` (when the optimizer needs it) the mean Hessian; ``factor`` (least
    squares) the triangular factor of the penalised system ``[A | y]``, whose last diagonal
    entry is the least residual; ``count`` the rows behind the means.
    """

    loss: float
    grad: np.ndarray
    hessian: np.ndarray | None = None
    factor: np.ndarray | None = None
    count: int = 0  # type: ignore[assignment]  # a field: it hides tuple.count on purpose


Evaluate = Callable[[np.ndarray], Evaluation]


class OptimizerStep(NamedTuple):
    """One step's outcome: the new parameters and state, the loss and gradient the step
    measured (at the old parameters, or at the new ones for a solver that ``solved``
    exactly), whether a line search stalled (the parameters stayed put), and the
    optimizer's own scale-free convergence measure when it has one (``criterion``), and
    whether a Newton step met a singular Hessian (``singular``)."""

    params: np.ndarray
    state: Any
    loss: float
    grad: np.ndarray
    stalled: bool = False
    criterion: float | None = None
    solved: bool = False
    singular: bool = False


def describe(value: Any) -> Any:
    """A JSON-compatible description of a setting (a number, or a schedule's fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: describe(getattr(value, field.name)) for field in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


class Optimizer:
    """Base of the optimizers: a schedule, ``init``, and one step through ``minimize``.

    ``line_search`` optimizers evaluate at several points per step, so they need the exact
    full-batch objective: no minibatches, no compression. ``needs`` says what the workers
    return besides loss and gradient sums: Hessian sums, or least-squares factors.
    """

    name: str
    line_search: ClassVar[bool] = False
    needs: ClassVar[Needs] = "gradient"
    takes_scales: ClassVar[bool] = False  # preconditioned by the parameters' scales (with_scales)

    def __init__(self, lr: float | Schedule) -> None:
        self.schedule = as_schedule(lr)

    def init(self, params: np.ndarray) -> Any:
        raise NotImplementedError

    def update(self, grad: np.ndarray, state: Any, params: np.ndarray) -> tuple[np.ndarray, Any]:
        """New parameters and state after a step along ``grad`` (first-order optimizers)."""
        raise NotImplementedError

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: Any) -> OptimizerStep:
        """One step: evaluate at ``params``, then update."""
        here = evaluate(params)
        new_params, new_state = self.update(here.grad, state, params)
        return OptimizerStep(new_params, new_state, here.loss, here.grad)

    def with_scales(self, scales: np.ndarray) -> Optimizer:
        """This optimizer for parameters of the given scales (where it ``takes_scales``)."""
        return self

    def starting_at(self, step: int) -> Optimizer:
        """This optimizer with its schedule advanced by ``step`` steps and fresh state.

        Local SGD uses it: each round restarts the optimizer's state (Adam's moments and
        bias correction included) while the learning-rate schedule runs on across rounds.
        """
        shifted = copy.copy(self)
        shifted.schedule = Shifted(self.schedule, int(step)) if step else self.schedule
        return shifted

    def config(self) -> dict[str, Any]:
        """The settings that identify this optimizer (for checking a resumed run)."""
        return {"name": self.name, "lr": describe(self.schedule)}

    def label(self) -> str:
        """How a run's summary names it."""
        return self.name

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"

    def describe_lr(self) -> str:
        """The setting to lower when training diverges."""
        return f"lr={self.schedule(0):g}"
