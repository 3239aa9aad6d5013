"""The ``communication`` suite: bytes and wall time to a target loss of synchronous SGD
and LocalSGD, each plain and with its worker-to-coordinator traffic compressed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from paragrad.bench.common import Row, curve, shared_classification, targets
from paragrad.data import Dataset
from paragrad.engines.local import LocalEngine
from paragrad.models import LogisticRegression
from paragrad.optim import SGD as SGDOptimizer
from paragrad.optim import Cosine
from paragrad.training.strategies import SGD, LocalSGD, Strategy
from paragrad.training.trainer import train


def _reach(
    run_curve: dict[str, list[float]], target: float, rounds_per_epoch: float
) -> tuple[float | None, float | None]:
    """Bytes and wall time until the round loss, averaged over half an epoch, is at ``target``."""
    loss = np.asarray(run_curve["loss"])
    window = max(1, int(rounds_per_epoch // 2))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    below = np.flatnonzero(smooth <= target)
    if not len(below):
        return None, None
    at = below[0] + window - 1
    return run_curve["bytes"][at], run_curve["wall_s"][at]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def _train_each(
    runs: dict[str, Strategy], data: Dataset, epochs: int, batches: int
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Each strategy's final loss and rounds per epoch, and its curve, on one local engine."""
    results, curves = {}, {}
    with LocalEngine(2) as engine:
        for name, strategy in runs.items():
            optimizer = SGDOptimizer(lr=Cosine(0.5, total_steps=batches))
            run = train(
                LogisticRegression(),
                data,
                strategy=strategy,
                optimizer=optimizer,
                engine=engine,
                epochs=epochs,
                tol=0,
            )
            curves[name] = curve(run.history)
            results[name] = {
                "loss": run.model.loss(data.X, targets(data)),
                "rounds_per_epoch": len(run.history) / epochs,
            }
    return results, curves


def bench_communication(quick: bool) -> list[Row]:
    """Bytes and wall time of synchronous SGD and LocalSGD, each plain and compressed.

    Every run makes the same passes over the data; the target is the plain SGD's final
    loss + 1%, and a run reaches it when its round loss, averaged over half an epoch,
    does. Only worker-to-coordinator traffic is compressed; the parameters still go
    out whole, so only fewer rounds (LocalSGD) shrink both directions.
    """
    num_rows, d, epochs = (50_000 if quick else 200_000), 500, 3
    data = shared_classification(num_rows, d, seed=3)
    batches = epochs * math.ceil(num_rows / 2 / 256)
    runs: dict[str, Strategy] = {
        "sgd": SGD(batch_size=512),  # global batches: 256 rows a worker, as LocalSGD's
        "sgd_topk": SGD(batch_size=512, compress="topk:0.01"),
        "local_sgd": LocalSGD(local_steps=16, batch_size=256),
        "local_sgd_topk": LocalSGD(local_steps=16, batch_size=256, compress="topk:0.1"),
        "local_sgd_int8": LocalSGD(local_steps=16, batch_size=256, compress="int8"),
    }
    results, curves = _train_each(runs, data, epochs, batches)
    target = results["sgd"]["loss"] * 1.01
    for name, figures in results.items():
        figures["bytes"], figures["wall_s"] = _reach(curves[name], target, figures["rounds_per_epoch"])
    rows = []
    for name, figures in results.items():
        rows.append(
            {
                "benchmark": "communication",
                "run": name,
                "rows": num_rows,
                "features": d,
                "epochs": epochs,
                "final_loss": figures["loss"],
                "target_loss": target,
                "bytes_to_target": figures["bytes"],
                "wall_s_to_target": figures["wall_s"],
                "bytes_ratio_sgd_over_this": _ratio(results["sgd"]["bytes"], figures["bytes"]),
                "wall_ratio_this_over_sgd": _ratio(figures["wall_s"], results["sgd"]["wall_s"]),
                "target": ">= 10x fewer bytes than sgd at <= 1.5x its wall time",
            }
        )
    optimum = min(figures["loss"] for figures in results.values())
    rows.append({"benchmark": "communication_curves", "optimum": optimum, "curves": curves})
    return rows
