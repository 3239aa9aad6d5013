"""Callbacks for :func:`paragrad.train`: the protocol a run calls as it goes."""

from __future__ import annotations

from paragrad.callbacks.base import Callback, CallbackList, TrainInfo

__all__ = ["Callback", "CallbackList", "TrainInfo"]
