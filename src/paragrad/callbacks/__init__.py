"""Callbacks for :func:`paragrad.train`: the protocol, and trackers for TensorBoard, MLflow
and CodeCarbon.

>>> run = pg.train(model, data, callbacks=[pg.callbacks.TensorBoard("runs/a")])

The trackers import their packages (``paragrad[tensorboard]``, ``paragrad[mlflow]``) only
when made.
"""

from __future__ import annotations

from paragrad.callbacks.base import Callback, CallbackList, TrainInfo
from paragrad.callbacks.codecarbon import CodeCarbon
from paragrad.callbacks.mlflow import MLflow
from paragrad.callbacks.tensorboard import TensorBoard

__all__ = ["Callback", "CallbackList", "CodeCarbon", "MLflow", "TensorBoard", "TrainInfo"]
