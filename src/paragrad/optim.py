"""Optimizers as ``init``/``update`` pairs over flat parameter vectors.

An optimizer's state is a NamedTuple of numpy arrays (its step counter included), so it
can be saved to and restored from a plain ``.npz`` file. ``update`` is pure: it returns
new parameters and a new state and never changes its arguments.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from paragrad.errors import ConfigError


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


class Optimizer:
    """Base of the optimizers: a schedule and the pure ``init``/``update`` pair."""

    name: str

    def __init__(self, lr: float | Schedule) -> None:
        self.schedule = as_schedule(lr)

    def init(self, params: np.ndarray) -> NamedTuple:
        raise NotImplementedError

    def update(self, grad: np.ndarray, state, params: np.ndarray) -> tuple[np.ndarray, NamedTuple]:
        raise NotImplementedError

    def starting_at(self, step: int) -> Optimizer:
        """This optimizer with its schedule advanced by ``step`` steps and fresh state.

        Local SGD uses it: each round restarts the optimizer's state (Adam's moments and
        bias correction included) while the learning-rate schedule runs on across rounds.
        """
        shifted = copy.copy(self)
        shifted.schedule = Shifted(self.schedule, int(step)) if step else self.schedule
        return shifted

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

    def update(self, grad: np.ndarray, state: AdamState, params: np.ndarray) -> tuple[np.ndarray, AdamState]:
        step = state.step + 1
        mean = self.beta1 * state.mean + (1.0 - self.beta1) * grad
        second = self.beta2 * state.second_moment + (1.0 - self.beta2) * grad**2
        mean_hat = mean / (1.0 - self.beta1 ** int(step))
        second_hat = second / (1.0 - self.beta2 ** int(step))
        lr = self.schedule(int(state.step))
        return params - lr * mean_hat / (np.sqrt(second_hat) + self.eps), AdamState(step, mean, second)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """An optimizer by name (``sgd`` or ``adam``) with its keyword arguments."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)
