"""Optimizers over flat parameter vectors: ``init``, and ``minimize`` through evaluations.

An optimizer's state is a NamedTuple of numpy arrays (its step counter included), so it
can be saved to and restored from a plain ``.npz`` file. Every optimizer takes one step
with ``minimize(evaluate, params, state)``, where ``evaluate(point) -> (loss, grad)`` is
one distributed pass: first-order optimizers evaluate once and apply their pure
``update``; L-BFGS evaluates as often as its line search needs. So the trainer treats
every optimizer alike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np

from paragrad.errors import ConfigError, check_positive_int


class Schedule(Protocol):
    """A learning rate as a function of the step number (0, 1, 2, ...)."""

    def __call__(self, step: int) -> float: ...


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Constant:
    """The same learning rate at every step."""

    lr: float

    def __post_init__(self) -> None:
        _positive("learning rate", self.lr)

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True)
class StepDecay:
    """``lr * factor ** (step // every)``: multiply by ``factor`` every ``every`` steps."""

    lr: float
    every: int
    factor: float = 0.1

    def __post_init__(self) -> None:
        _positive("learning rate", self.lr)
        _positive("every", self.every)
        _positive("factor", self.factor)

    def __call__(self, step: int) -> float:
        return self.lr * self.factor ** (step // self.every)


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from ``lr`` to ``final_lr`` over ``total_steps``, then ``final_lr``."""

    lr: float
    total_steps: int
    final_lr: float = 0.0

    def __post_init__(self) -> None:
        _positive("learning rate", self.lr)
        _positive("total_steps", self.total_steps)

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
    return lr if callable(lr) else Constant(_positive("learning rate", lr))


class SGDState(NamedTuple):
    step: np.ndarray
    velocity: np.ndarray


class AdamState(NamedTuple):
    step: np.ndarray
    mean: np.ndarray
    second_moment: np.ndarray


Evaluate = Callable[[np.ndarray], tuple[float, np.ndarray]]


class OptimizerStep(NamedTuple):
    """One step's outcome: the new parameters and state, the loss and gradient measured at
    the old parameters, and whether a line search stalled (the parameters stayed put)."""

    params: np.ndarray
    state: Any
    loss: float
    grad: np.ndarray
    stalled: bool = False


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
    full-batch objective: no minibatches, no compression.
    """

    name: str
    line_search: ClassVar[bool] = False

    def __init__(self, lr: float | Schedule) -> None:
        self.schedule = as_schedule(lr)

    def init(self, params: np.ndarray) -> Any:
        raise NotImplementedError

    def update(self, grad: np.ndarray, state: Any, params: np.ndarray) -> tuple[np.ndarray, Any]:
        """New parameters and state after a step along ``grad`` (first-order optimizers)."""
        raise NotImplementedError

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: Any) -> OptimizerStep:
        """One step: evaluate at ``params``, then update."""
        loss, grad = evaluate(params)
        new_params, new_state = self.update(grad, state, params)
        return OptimizerStep(new_params, new_state, loss, grad)

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

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"

    def describe_lr(self) -> str:
        """The setting to lower when training diverges."""
        return f"lr={self.schedule(0):g}"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum.

    ``v = momentum * v + g``; the step is ``lr * v``, or ``lr * (g + momentum * v)``
    with ``nesterov=True`` (PyTorch's convention).
    """

    name = "sgd"

    def __init__(self, lr: float | Schedule = 0.1, momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ConfigError("nesterov=True needs a momentum above 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def init(self, params: np.ndarray) -> SGDState:
        return SGDState(np.array(0, dtype=np.int64), np.zeros_like(params, dtype=np.float64))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, grad: np.ndarray, state: SGDState, params: np.ndarray) -> tuple[np.ndarray, SGDState]:
        lr = self.schedule(int(state.step))
        if self.momentum == 0.0:
            return params - lr * grad, SGDState(state.step + 1, state.velocity)
        velocity = self.momentum * state.velocity + grad
        direction = grad + self.momentum * velocity if self.nesterov else velocity
        return params - lr * direction, SGDState(state.step + 1, velocity)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction."""

    name = "adam"

    def __init__(
        self,
        lr: float | Schedule = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(lr)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{label} must be in [0, 1), got {beta}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), _positive("eps", eps)

    def init(self, params: np.ndarray) -> AdamState:
        zeros = np.zeros_like(params, dtype=np.float64)
        return AdamState(np.array(0, dtype=np.int64), zeros, zeros.copy())

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def update(self, grad: np.ndarray, state: AdamState, params: np.ndarray) -> tuple[np.ndarray, AdamState]:
        step = state.step + 1
        mean = self.beta1 * state.mean + (1.0 - self.beta1) * grad
        second = self.beta2 * state.second_moment + (1.0 - self.beta2) * grad**2
        mean_hat = mean / (1.0 - self.beta1 ** int(step))
        second_hat = second / (1.0 - self.beta2 ** int(step))
        lr = self.schedule(int(state.step))
        return params - lr * mean_hat / (np.sqrt(second_hat) + self.eps), AdamState(step, mean, second)


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
        self.loss_noise = _positive("loss_noise", loss_noise)

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
            loss, grad = evaluate(params)
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
            new_loss, new_grad = evaluate(candidate)
            if self._accepts(loss, slope, step, new_loss, float(new_grad @ direction)):
                new_state = self._remember(state, candidate - params, new_grad - grad, new_loss, new_grad)
                return OptimizerStep(candidate, new_state, loss, grad)
            step *= 0.5
        warnings.warn(
            f"L-BFGS's line search found no lower loss in {self.max_line_search} halvings; stopping here",
            LineSearchStalled,
            stacklevel=2,
        )
        return OptimizerStep(params, state._replace(loss=np.array(loss), grad=grad), loss, grad, stalled=True)

    def _accepts(self, loss: float, slope: float, step: float, new_loss: float, new_slope: float) -> bool:
        """Sufficient decrease, measured by the loss, or (within its round-off) by the slope.

        On a quadratic, ``f(a) - f(0) <= c1 a f'(0)`` is exactly ``f'(a) <= (2 c1 - 1) f'(0)``.
        """
        if not np.isfinite(new_loss):
            return False
        if new_loss <= loss + self.c1 * step * slope:
            return True
        return new_loss <= loss + self.loss_noise * abs(loss) and new_slope <= (2 * self.c1 - 1) * slope

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


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "lbfgs": LBFGS}


def get_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by name (``sgd`` or ``adam``) with its keyword arguments."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)
