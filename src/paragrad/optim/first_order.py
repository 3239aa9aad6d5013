"""Gradient descent with (Nesterov) momentum, and Adam: one evaluation and a pure update per step."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from paragrad.errors import ConfigError
from paragrad.optim.base import Optimizer, Schedule, positive


class SGDState(NamedTuple):
    step: np.ndarray
    velocity: np.ndarray


class AdamState(NamedTuple):
    step: np.ndarray
    mean: np.ndarray
    second_moment: np.ndarray


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
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), positive("eps", eps)

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
