"""Callbacks for :func:`paragrad.train`: the protocol, and trackers for TensorBoard, MLflow
and CodeCarbon.

>>> run = pg.train(model, data, callbacks=[pg.callbacks.TensorBoard("runs/a")])

The trackers' modules load on first use (a run without them, which imports the protocol,
does not pay for their logging and temporary files), and import their packages
(``paragrad[tensorboard]``, ``paragrad[mlflow]``) only when made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from paragrad.callbacks.base import Callback, CallbackList, TrainInfo

_TRACKERS = {
    "CodeCarbon": "paragrad.callbacks.codecarbon",
    "MLflow": "paragrad.callbacks.mlflow",
    "TensorBoard": "paragrad.callbacks.tensorboard",
}

__all__ = ["Callback", "CallbackList", "CodeCarbon", "MLflow", "TensorBoard", "TrainInfo"]


def __getattr__(name: str) -> Any:
    source = _TRACKERS.get(name)
    if source is None:
        raise AttributeError(f"module 'paragrad.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from paragrad.callbacks.codecarbon import CodeCarbon
    from paragrad.callbacks.mlflow import MLflow
    from paragrad.callbacks.tensorboard import TensorBoard
