"""Training runs: the ``solvers`` suite (time to a target loss against scikit-learn) and
the ``mlp_scaling`` suite (minibatch SGD samples per second on 2 workers against 1)."""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import numpy as np

from paragrad.bench.common import Row, curve, shared_classification, targets
from paragrad.data import make_classification
from paragrad.engines.local import LocalEngine
from paragrad.errors import ConvergenceWarning
from paragrad.models import MLP, LogisticRegression
from paragrad.optim import LBFGS, Adam
from paragrad.optim import SGD as SGDOptimizer
from paragrad.training.strategies import SGD, GradientDescent, LocalSGD
from paragrad.training.trainer import train


def _time_to(run_curve: dict[str, list[float]], target: float) -> float | None:
    for wall, loss in zip(run_curve["wall_s"], run_curve["loss"], strict=True):
        if loss <= target:
            return wall
    return None


def bench_solvers(quick: bool) -> list[Row]:
    """Time to reach the optimum's loss + 1e-4 on logistic regression, against scikit-learn."""
    from sklearn.linear_model import LogisticRegression as SklearnLogistic

    num_rows, d = (200_000 if quick else 1_000_000), 100
    data = shared_classification(num_rows, d, seed=0)
    start = time.perf_counter()
    reference = SklearnLogistic(C=1e12, tol=1e-8, max_iter=1000).fit(data.X, data.y)
    sklearn_s = time.perf_counter() - start
    z = data.X @ reference.coef_[0] + reference.intercept_[0]
    optimum = float(np.mean(np.logaddexp(0.0, z) - data.y * z))
    target = optimum + 1e-4
    runs: dict[str, dict[str, Any]] = {  # train() options per solver
        "lbfgs": dict(strategy=GradientDescent(), optimizer=LBFGS(), epochs=100),
        "gd": dict(strategy=GradientDescent(), optimizer=Adam(lr=0.1), epochs=30 if quick else 15),
        "sgd": dict(strategy=SGD(batch_size=1024), optimizer=Adam(lr=0.01), epochs=2),  # 512 a worker
        "local_sgd": dict(
            strategy=LocalSGD(local_steps=16, batch_size=256), optimizer=Adam(lr=0.01), epochs=2
        ),
    }
    rows, curves = [], {}
    with LocalEngine(2) as engine:
        for name, options in runs.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                run = train(LogisticRegression(), data, engine=engine, tol=1e-7, **options)
            total_s = time.perf_counter() - start
            curves[name] = curve(run.history)
            # Full-batch rounds report the whole objective; stochastic ones only their
            # batches' loss, so for them only the final full loss is a fair figure.
            full_batch = isinstance(options["strategy"], GradientDescent)
            to_target = _time_to(curves[name], target) if full_batch else None
            rows.append(
                {
                    "benchmark": "time_to_target",
                    "solver": name,
                    "rows": num_rows,
                    "features": d,
                    "workers": 2,
                    "rounds": len(run.history),
                    "final_loss_over_optimum": run.model.loss(data.X, targets(data)) - optimum,
                    "wall_s": sum(record["wall_s"] for record in run.history),
                    "seconds_to_target": to_target,
                    "train_call_s": total_s,
                    "sklearn_lbfgs_s": sklearn_s,
                    "ratio_to_sklearn": None if to_target is None else to_target / sklearn_s,
                    "target": "optimum + 1e-4",
                    "target_ratio": 0.5 if name == "lbfgs" else None,
                }
            )
    rows.append({"benchmark": "curves", "optimum": optimum, "curves": curves})
    return rows


def bench_mlp_scaling(quick: bool) -> list[Row]:
    """Minibatch SGD samples per second with the MLP on 2 local workers against 1."""
    data = make_classification(50_000 if quick else 200_000, 32, num_classes=4, seed=0)
    batch = 1024
    rates = {}
    for workers in (1, 2):
        run = train(
            MLP(hidden=(128,)),
            data,
            strategy=SGD(batch_size=batch * workers),  # the global batch: 1024 rows a worker
            optimizer=SGDOptimizer(lr=0.05),
            engine="local",
            workers=workers,
            epochs=1,
            tol=0,
        )
        round_s = statistics.median(record["wall_s"] for record in run.history[5:])  # after warm-up
        rates[workers] = batch * workers / round_s
    return [
        {
            "benchmark": "mlp_scaling",
            "rows": data.num_rows,
            "hidden": 128,
            "batch_per_worker": batch,
            "samples_per_s_1_worker": rates[1],
            "samples_per_s_2_workers": rates[2],
            "speedup": rates[2] / rates[1],
            "target_speedup": 1.8,
        }
    ]
