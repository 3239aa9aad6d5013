"""The ``energy`` suite: joules per million rows trained by GradientDescent, SGD and
LocalSGD on the same data and engine, against GradientDescent's; and the ``acceleration``
suite: a compressed and a distilled model against the model they came from.

Joules come from the CPU's counters where readable, else from the CPU-time estimate (each
row says which; see :mod:`paragrad.training.energy`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from paragrad.bench.common import Row, shared_classification, targets
from paragrad.data import Dataset, make_classification
from paragrad.engines.local import LocalEngine
from paragrad.models import MLP, LogisticRegression, Model
from paragrad.optim import Adam
from paragrad.training.strategies import SGD, GradientDescent, LocalSGD, Strategy
from paragrad.training.trainer import train


def bench_energy(quick: bool) -> list[Row]:
    """One row per strategy: rows the workers computed on, joules, joules per million rows."""
    num_rows, epochs = (50_000, 2) if quick else (500_000, 3)
    data = shared_classification(num_rows, 50, seed=0)
    strategies: dict[str, tuple[Strategy, dict]] = {
        "GradientDescent": (GradientDescent(), {"epochs": 30}),
        "SGD": (SGD(batch_size=256), {"optimizer": Adam(lr=0.01), "epochs": epochs}),
        "LocalSGD": (LocalSGD(local_steps=16, batch_size=64), {"optimizer": Adam(lr=0.01), "epochs": epochs}),
    }
    rows = []
    with LocalEngine(2) as engine:
        for name, (strategy, options) in strategies.items():
            run = train(LogisticRegression(), data, strategy=strategy, engine=engine, tol=0, **options)
            samples = sum(record["samples"] for record in run.history)
            rows.append(
                {
                    "benchmark": "energy",
                    "strategy": name,
                    "rows_trained": samples,
                    "energy_j": run.energy_j,
                    "cpu_s": run.cpu_s,
                    "j_per_million_rows": run.energy_j / samples * 1e6,
                    "loss": run.model.loss(data.X, targets(data)),
                    "total_s": run.total_s,
                    "source": run.energy_source,
                }
            )
    for row in rows:
        row["ratio_to_gd"] = row["j_per_million_rows"] / rows[0]["j_per_million_rows"]
    return rows


def _digits() -> tuple[Dataset, Dataset]:
    """scikit-learn's digits scaled to [0, 1], a quarter held out; synthetic without it."""
    try:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    except ImportError:
        data = make_classification(1797, 64, num_classes=10, seed=0)
        X, y = data.X, data.y
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order]
    held = len(y) // 4
    return Dataset(X[held:], y[held:], source="digits train"), Dataset(
        X[:held], y[:held], source="digits test"
    )


def _predict_s(models: dict[str, Model], X: np.ndarray, repeats: int) -> dict[str, float]:
    best = dict.fromkeys(models, np.inf)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(X)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_acceleration(quick: bool) -> list[Row]:
    """The teacher MLP(256) on digits, int8, float16 and pruned copies, and a distilled
    MLP(16) beside the same MLP(16) trained on the labels: file size, held-out accuracy,
    agreement with the teacher and the time to predict 100,000 rows."""
    from paragrad.training.distillation import agreement, distill
    from paragrad.training.model_compression import compress, file_size

    train_data, test = _digits()
    options: dict[str, Any] = {
        "strategy": SGD(batch_size=64),
        "optimizer": Adam(lr=0.01),
        "tol": 0.0,
        "seed": 0,
    }
    teacher = train(MLP(hidden=(256,)), train_data, engine="serial", workers=2, epochs=10, **options).model
    run = distill(teacher, MLP(hidden=(16,)), train_data, test=test, engine="serial", workers=2, seed=0)
    labels_only = train(MLP(hidden=(16,)), train_data, engine="serial", workers=2, epochs=20, **options).model
    models = {
        "teacher MLP(256)": teacher,
        "int8": compress(teacher, "int8"),
        "float16": compress(teacher, "float16"),
        "pruned 90%": compress(teacher, "prune", sparsity=0.9, data=train_data),
        "distilled MLP(16)": run.model,
        "MLP(16) on labels": labels_only,
    }
    X = np.tile(test.X, (100_000 // test.num_rows + 1, 1))[:100_000]
    seconds = _predict_s(models, X, 3 if quick else 7)
    reference = teacher.predict(test.X)
    size = file_size(teacher)
    return [
        {
            "benchmark": "acceleration",
            "model": name,
            "file_kib": file_size(model) / 1024,
            "size_ratio": file_size(model) / size,
            "accuracy": float(np.mean(model.predict(test.X) == test.y)),
            "agreement": agreement(model, reference, test),
            "predict_100k_ms": seconds[name] * 1e3,
            "speedup": seconds["teacher MLP(256)"] / seconds[name],
        }
        for name, model in models.items()
    ]
