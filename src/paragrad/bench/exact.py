"""The ``exact`` suite: the exact solvers against scikit-learn, whole calls and rounds.

Least squares by tall-skinny QR against ``LinearRegression.fit``; logistic regression by
Newton and by L-BFGS against ``LogisticRegression(solver="lbfgs")``; unpenalised, on the
same data in one run. Each row reports the loss above the best loss any of them reached,
so "at least as accurate" can be read off.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from paragrad.bench.common import Row, shared_classification, targets
from paragrad.core.shm import shared_empty
from paragrad.data import Dataset, make_regression
from paragrad.errors import ConvergenceWarning
from paragrad.models import LinearRegression, LogisticRegression
from paragrad.optim import LBFGS, Newton, Optimizer
from paragrad.training.run import Run
from paragrad.training.trainer import train


def _timed_train(
    model: LinearRegression | LogisticRegression, data: Dataset, optimizer: Optimizer | None
) -> tuple[Run, float]:
    """The run and its whole call's time, on a cold default (local) engine."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run = train(model, data, optimizer=optimizer, workers=2, progress=False)
    return run, time.perf_counter() - start


def bench_least_squares(num_rows: int, d: int) -> Row:
    """QR least squares, whole call, against scikit-learn's LinearRegression.fit."""
    from sklearn.linear_model import LinearRegression as SklearnLinear

    generated = make_regression(num_rows, d, noise=1.0, seed=0)
    X = shared_empty(generated.X.shape, np.float64)
    X[...] = generated.X
    data = Dataset(X, generated.y)
    start = time.perf_counter()
    reference = SklearnLinear().fit(data.X, data.y)
    sklearn_s = time.perf_counter() - start
    run, call_s = _timed_train(LinearRegression(), data, None)
    theirs = np.append(reference.coef_, reference.intercept_)
    fitted = LinearRegression()
    fitted.setup(d)
    fitted.params_ = theirs
    loss = {"qr": run.model.loss(data.X, targets(data)), "sklearn": fitted.loss(data.X, targets(data))}
    best = min(loss.values())
    return {
        "benchmark": "exact_least_squares",
        "rows": num_rows,
        "features": d,
        "workers": 2,
        "rounds": len(run.history),
        "rounds_s": sum(record["wall_s"] for record in run.history),
        "train_call_s": call_s,
        "sklearn_fit_s": sklearn_s,
        "ratio_call_to_sklearn": call_s / sklearn_s,
        "target_ratio": 0.7,
        "loss_over_best": loss["qr"] - best,
        "sklearn_loss_over_best": loss["sklearn"] - best,
        "coef_rel_diff": float(np.abs(run.params - theirs).max() / np.abs(theirs).max()),
    }


def bench_logistic(num_rows: int, d: int) -> list[Row]:
    """Newton and L-BFGS rounds and whole calls against scikit-learn's lbfgs."""
    from sklearn.linear_model import LogisticRegression as SklearnLogistic

    data = shared_classification(num_rows, d, seed=0)
    start = time.perf_counter()
    reference = SklearnLogistic(C=np.inf, tol=1e-8, max_iter=1000).fit(data.X, data.y)
    sklearn_s = time.perf_counter() - start
    solvers: dict[str, Optimizer] = {"newton": Newton(), "lbfgs": LBFGS()}
    runs = {name: _timed_train(LogisticRegression(), data, optimizer) for name, optimizer in solvers.items()}
    fitted = LogisticRegression()
    fitted.setup(d, np.array([0.0, 1.0]))
    fitted.params_ = np.append(reference.coef_[0], reference.intercept_)
    loss = {name: run.model.loss(data.X, targets(data)) for name, (run, _) in runs.items()}
    loss["sklearn"] = fitted.loss(data.X, targets(data))
    best = min(loss.values())
    rows = []
    for name, (run, call_s) in runs.items():
        rounds_s = sum(record["wall_s"] for record in run.history)
        rows.append(
            {
                "benchmark": "exact_logistic",
                "solver": name,
                "rows": num_rows,
                "features": d,
                "workers": 2,
                "rounds": len(run.history),
                "converged": run.converged,
                "rounds_s": rounds_s,
                "train_call_s": call_s,
                "sklearn_lbfgs_s": sklearn_s,
                "ratio_rounds_to_sklearn": rounds_s / sklearn_s,
                "ratio_call_to_sklearn": call_s / sklearn_s,
                "target_ratio": 0.5,
                "loss_over_best": loss[name] - best,
                "sklearn_loss_over_best": loss["sklearn"] - best,
            }
        )
    return rows


def bench_exact(quick: bool) -> list[Row]:
    num_rows, d = (200_000 if quick else 1_000_000), 100
    return [bench_least_squares(num_rows, d), *bench_logistic(num_rows, d)]
