"""``paragrad bench --suite engine``: where a run should go, measured.

Logistic regression (10 features, the default solver) of growing size, trained as a user
calls it: in this process (the serial engine, one worker), on threads of this process (one
per core), on processes forked from it (where it forks), and on the local workers, cold
(workers to start) and warm (the kept engine running). Each row says which is fastest,
cold and warm, and whether ``engine="auto"`` (:func:`paragrad.training.settings.default_engine`)
sends that work there; the crossovers are where the rule's thresholds come from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from paragrad.bench.common import Row, best_time
from paragrad.data import Dataset, make_classification
from paragrad.engines.forked import can_fork
from paragrad.engines.kept import release_kept_engine
from paragrad.errors import ConvergenceWarning
from paragrad.models import LogisticRegression
from paragrad.training.settings import default_engine
from paragrad.training.strategies import GradientDescent
from paragrad.training.trainer import train

FEATURES = 10
SIZES = (1_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000)
QUICK_SIZES = (500, 2_000)


def bench_engine(quick: bool) -> list[Row]:
    """One row per size: in process against the local workers, cold and warm."""
    return [_size_row(rows, 1 if quick else 3) for rows in (QUICK_SIZES if quick else SIZES)]


def _size_row(num_rows: int, repeats: int) -> Row:
    data = make_classification(num_rows, FEATURES, seed=0)
    X, y = np.ascontiguousarray(data.X), np.ascontiguousarray(data.y)

    def fit(engine: str, workers: int | None) -> Callable[[], Any]:
        def step() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                train(LogisticRegression(), Dataset(X, y), engine=engine, workers=workers)

        return step

    here_s = best_time(fit("serial", 1), repeats)
    threads_s = best_time(fit("threads", None), repeats)
    forked_s = best_time(fit("forked", None), repeats) if can_fork() else None
    cold_s = best_time(fit("local", None), repeats, before=release_kept_engine)
    fit("local", None)()  # the kept engine is running now
    warm_s = best_time(fit("local", None), repeats)
    release_kept_engine()
    sample = Dataset(X, y)
    chosen = {
        warm: str(default_engine("auto", None, LogisticRegression(), sample, GradientDescent(), warm).name)
        for warm in (False, True)
    }
    cold = {"serial": here_s, "threads": threads_s, "local": cold_s}
    if forked_s is not None:
        cold["forked"] = forked_s
    warm = {**cold, "local": warm_s}
    faster_cold, faster_warm = min(cold, key=cold.__getitem__), min(warm, key=warm.__getitem__)
    return {
        "benchmark": "engine",
        "row": f"logistic {num_rows} x {FEATURES}",
        "work": num_rows * (FEATURES + 1),
        "in_process_s": here_s,
        "threads_s": threads_s,
        "forked_s": forked_s,
        "local_cold_s": cold_s,
        "local_warm_s": warm_s,
        "faster_cold": faster_cold,
        "faster_warm": faster_warm,
        "auto_cold": chosen[False],
        "auto_warm": chosen[True],
        # The choice is right when it is the fastest, or within 10% of it (noise).
        "met": cold[chosen[False]] <= 1.1 * min(cold.values())
        and warm[chosen[True]] <= 1.1 * min(warm.values()),
    }
