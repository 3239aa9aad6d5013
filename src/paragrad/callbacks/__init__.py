"""Callbacks for :func:`paragrad.train`: the protocol, and trackers for TensorBoard, MLflow
and CodeCarbon.

>>> run = pg.train(model, data, callbacks=[pg.callbacks.TensorBoard("runs/a")])

The trackers' modules load on first use (a run without them, which imports the protocol,
does not pay for their logging and temporary files), and import their packages
(``paragrad[tensorboard]``, ``paragrad[mlflow]``) only when made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paragrad.callbacks.base import Callback, CallbackList, TrainInfo
from paragrad.core.lazy import lazy_names

_TRACKERS = {
    "CodeCarbon": "paragrad.callbacks.codecarbon",
    "MLflow": "paragrad.callbacks.mlflow",
    "TensorBoard": "paragrad.callbacks.tensorboard",
}

__all__ = ["Callback", "CallbackList", "CodeCarbon", "MLflow", "TensorBoard", "TrainInfo"]


__getattr__, __dir__ = lazy_names(globals(), _TRACKERS)


if TYPE_CHECKING:
    from paragrad.callbacks.codecarbon import CodeCarbon
    from paragrad.callbacks.mlflow import MLflow
    from paragrad.callbacks.tensorboard import TensorBoard
