"""Smaller models: float16 or int8 weights, or magnitude pruning with a distributed fine-tune.

A compressed model is an ordinary model whose parameters are exactly what its file stores
(quantised and dequantised once, here): it predicts, saves, loads, serves and exports as
any model does, as fast as the original, and gives the same answers in each of those.
The file keeps the small form (see :func:`paragrad.core.model_file.encode_params`).

An accuracy gate (``max_drop``) measures the metric on data the caller names, before and
after, and refuses a compression that loses more.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.core.model_file import decode_params, encode_params
from paragrad.data import Dataset
from paragrad.errors import ConfigError
from paragrad.models import MLP, Model
from paragrad.models.linear_layout import LinearLayout

METHODS = ("float16", "int8", "prune")
STORAGE_OF = {"float16": "float16", "int8": "int8", "prune": "sparse"}


class CompressionRefused(ConfigError):
    """The compressed model lost more of its metric than ``max_drop`` allows."""


@dataclass(frozen=True)
class Footprint:
    """What a model costs and how well it does on some data, measured in one process."""

    size_bytes: int  # of its model file
    metric_name: str  # "accuracy" or "r2"
    metric: float
    loss: float
    predict_s: float  # best of a few repeats of predicting the data's rows

    def row(self) -> list[str]:
        return [
            f"{self.size_bytes / 1024:.1f} KiB",
            f"{self.metric:.4f}",
            f"{self.loss:.4f}",
            f"{self.predict_s * 1e3:.2f} ms",
        ]


def compress(
    model: Model,
    method: str,
    *,
    sparsity: float | None = None,
    data: Dataset | None = None,
    max_drop: float | None = None,
    **train_options: Any,
) -> Model:
    """A compressed copy of the trained ``model``.

    Parameters
    ----------
    model : Model
        A trained LinearRegression, LogisticRegression, SoftmaxRegression or MLP.
    method : {"float16", "int8", "prune"}
        ``float16``: every parameter in half precision. ``int8``: each weight matrix as
        8-bit integers with one scale per output unit (``max|W[:, j]| / 127``, symmetric);
        intercepts in float32. ``prune``: the ``sparsity`` fraction of the weights with
        the smallest magnitude set to zero, the others fine-tuned on ``data`` with the
        usual distributed training (the zeros stay zeros), stored sparsely.
    sparsity : float in (0, 1), for ``prune``
        Fraction of the weights (not intercepts) to set to zero.
    data : Dataset, optional
        Labelled data: the fine-tune's (``prune``) and the gate's (``max_drop``).
    max_drop : float, optional
        Refuse (:class:`CompressionRefused`) when the metric (accuracy, or R^2 for
        regression) on ``data`` falls by more than this.
    **train_options
        For ``prune``'s fine-tune, as for :func:`paragrad.train` (default
        ``SGD(batch_size=64)`` with ``Adam(lr=0.01)`` for 5 epochs on the serial engine).

    Returns
    -------
    Model
        A new model of the same family; ``model`` is left as it was.
    """
    _check(model, method, sparsity, data, max_drop)
    compressed = copy.deepcopy(model)
    if method == "prune":
        assert sparsity is not None
        compressed = _prune(compressed, sparsity, data, train_options)
    elif train_options:
        raise ConfigError(f"training options ({', '.join(train_options)}) apply to method='prune' only")
    storage = STORAGE_OF[method]
    matrices = compressed.weight_matrices()
    stored = encode_params(compressed.params, storage, matrices)
    compressed.params_ = decode_params(stored, storage, compressed.num_params, matrices)
    compressed.storage_, compressed.stored_ = storage, stored
    compressed.trainable_ = None
    if max_drop is not None:
        assert data is not None
        before, after = _metric(model, data), _metric(compressed, data)
        if before - after > max_drop:
            name = "accuracy" if model.is_classifier else "R^2"
            raise CompressionRefused(
                f"{method} lost {before - after:.4f} of {name} ({before:.4f} -> {after:.4f}), more than "
                f"--max-drop {max_drop:g}: no model written"
            )
    return compressed


def _check(
    model: Model, method: str, sparsity: float | None, data: Dataset | None, max_drop: float | None
) -> None:
    """Refuse what cannot be compressed, or settings that do not fit the method."""
    if method not in METHODS:
        raise ConfigError(f"unknown compression method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(model, (LinearLayout, MLP)):
        raise ConfigError(f"cannot compress a {type(model).__name__}: only the numpy models are compressed")
    model._check_trained()
    if method == "prune":
        if sparsity is None or not 0.0 < sparsity < 1.0:
            raise ConfigError(
                f"pruning needs a sparsity between 0 and 1 (0.9: nine weights in ten), got {sparsity}"
            )
        if data is None:
            raise ConfigError("pruning fine-tunes the weights it keeps: give the data to fine-tune on")
    elif sparsity is not None:
        raise ConfigError(f"sparsity applies to method='prune' only, not {method!r}")
    if max_drop is not None:
        if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
            raise ConfigError(f"max_drop must be a non-negative number, got {max_drop!r}")
        if data is None:
            raise ConfigError("max_drop measures the metric on data: give the data to measure on")


def prune_mask(model: Model, sparsity: float) -> np.ndarray:
    """True for the parameters kept: intercepts, and the weights larger in magnitude than
    the ``sparsity`` fraction of all weights (ties broken by position)."""
    keep = np.ones(model.num_params, dtype=bool)
    positions = np.concatenate(
        [np.arange(offset, offset + rows * cols) for offset, rows, cols in model.weight_matrices()]
    )
    weights = np.abs(model.params[positions])
    num_dropped = round(sparsity * len(positions))
    dropped = positions[np.argsort(weights, kind="stable")[:num_dropped]]
    keep[dropped] = False
    return keep


def _prune(model: Model, sparsity: float, data: Dataset | None, options: dict[str, Any]) -> Model:
    """Zero the smallest weights, then fine-tune the rest on ``data`` with them held at zero."""
    from paragrad.optim import Adam
    from paragrad.training.strategies import SGD
    from paragrad.training.trainer import train

    keep = prune_mask(model, sparsity)
    model.params_ = np.where(keep, model.params, 0.0)
    settings: dict[str, Any] = {
        "strategy": SGD(batch_size=64),
        "optimizer": Adam(lr=1e-2),
        "epochs": 5,
        "engine": "serial",
        "workers": 1,
        "tol": 0.0,
        **options,
    }
    optimizer = settings["optimizer"]
    if optimizer.needs != "gradient":
        raise ConfigError(
            f"the fine-tune after pruning takes a first-order optimizer (SGD, Adam), not {optimizer.name}"
        )
    student = copy.deepcopy(model)
    student.params_, student.storage_, student.stored_ = None, None, None
    student.trainable_ = keep
    assert data is not None
    run = train(student, data, init=model, **settings)
    tuned = run.model
    tuned.params_ = np.where(keep, tuned.params, 0.0)  # exact zeros whatever the arithmetic
    return tuned


def _metric(model: Model, data: Dataset) -> float:
    return measure([model], data, repeats=0)[0].metric


def file_size(model: Model) -> int:
    """Bytes of ``model``'s file, written to a temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.npz"
        model.save(path)
        return os.path.getsize(path)


MEASURE_S = 0.2  # at least this long of predictions per model, however many repeats it takes


def measure(models: list[Model], data: Dataset, *, repeats: int = 7) -> list[Footprint]:
    """Each model's file size, metric and mean loss on ``data``, and its best time of at
    least ``repeats`` predictions of the data's rows (more, up to 100, until each model has
    predicted for ``MEASURE_S``: small data takes a millisecond, which a busy machine
    disturbs); the models take turns, so that the machine's load slows each alike."""
    from paragrad.inference import evaluate

    best = [math.inf] * len(models)
    spent = [0.0] * len(models)
    for model in models if repeats else ():  # warm: first calls pay for caches and threads
        model.predict(data.X)
    for turn in range(100 if repeats else 0):
        if turn >= repeats and min(spent) >= MEASURE_S:
            break
        for index, model in enumerate(models):
            start = time.perf_counter()
            model.predict(data.X)
            elapsed = time.perf_counter() - start
            best[index], spent[index] = min(best[index], elapsed), spent[index] + elapsed
    footprints = []
    for model, seconds in zip(models, best, strict=True):
        metrics = evaluate(model, data)
        name = "accuracy" if model.is_classifier else "r2"
        loss = float(metrics["loss"])
        footprints.append(Footprint(file_size(model), name, float(metrics[name]), loss, seconds))
    return footprints


def side_by_side(before: Footprint, after: Footprint, label: str) -> str:
    """The two footprints as a small table, the ratio of each figure in the last column."""
    metric = "accuracy" if before.metric_name == "accuracy" else "R^2"
    rows = [
        ("file size", before.row()[0], after.row()[0], f"{after.size_bytes / before.size_bytes:.2f}x"),
        (metric, before.row()[1], after.row()[1], f"{after.metric - before.metric:+.4f}"),
        ("loss", before.row()[2], after.row()[2], f"{after.loss - before.loss:+.4f}"),
        ("predict time", before.row()[3], after.row()[3], f"{after.predict_s / before.predict_s:.2f}x"),
    ]
    lines = [f"{'':14}{'original':>14}{label:>14}{'change':>12}"]
    lines += [f"{name:14}{a:>14}{b:>14}{c:>12}" for name, a, b, c in rows]
    return "\n".join(lines)
