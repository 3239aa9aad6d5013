"""Optimizers over flat parameter vectors, each taking one step through ``minimize``.

First-order optimizers (``SGD``, ``Adam``) evaluate once per step; the full-batch solvers
search: ``LBFGS`` (quasi-Newton), ``Newton`` (exact Hessian sums from the workers) and
``LeastSquares`` (tall-skinny QR, exact in one pass).
"""

from __future__ import annotations

from typing import Any

from paragrad.errors import ConfigError
from paragrad.optim.base import (
    Constant,
    Cosine,
    Evaluate,
    Evaluation,
    Optimizer,
    OptimizerStep,
    Schedule,
    Shifted,
    StepDecay,
    as_schedule,
    describe,
)
from paragrad.optim.first_order import SGD, Adam, AdamState, SGDState
from paragrad.optim.lbfgs import LBFGS, LBFGSState, LineSearchStalled
from paragrad.optim.least_squares import LeastSquares, LeastSquaresState, RankDeficient
from paragrad.optim.newton import Newton, NewtonState

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "lbfgs": LBFGS,
    "newton": Newton,
    "qr": LeastSquares,
}


def get_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by name (see ``OPTIMIZERS``) with its keyword arguments."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)


__all__ = [
    "LBFGS",
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "AdamState",
    "Constant",
    "Cosine",
    "Evaluate",
    "Evaluation",
    "LBFGSState",
    "LeastSquares",
    "LeastSquaresState",
    "LineSearchStalled",
    "Newton",
    "NewtonState",
    "Optimizer",
    "OptimizerStep",
    "RankDeficient",
    "SGDState",
    "Schedule",
    "Shifted",
    "StepDecay",
    "as_schedule",
    "describe",
    "get_optimizer",
]
