"""The ``elastic`` suite: ``workers="auto"`` against fixed worker counts, and what a change
of the workers costs.

- ``elastic_auto``: whole ``train`` calls (workers started, data placed, rounds) in one
  run, interleaved, with every fixed count from 1 to one worker per core and with
  ``"auto"``, on a communication-bound case (logistic regression, d = 10, SGD batches of
  8 rows) and a compute-bound one (an MLP 100-512-10, SGD batches of 4096 rows): auto's
  time over the best fixed count's (target at most 1.1), and the count it chose.
- ``elastic_change``: a full-batch run (logistic regression, d = 100) resized 2 -> 1 -> 2
  by a callback, on the local engine (and on a local Ray instance when Ray is installed):
  each change's cost against one round (the median at 2 workers) plus the time to copy
  the rows that changed hands at this machine's memory-copy bandwidth, measured in the
  same run (target: below). A change's cost is its own seconds plus what the round after
  it took beyond the median round at the same worker count (a new worker still starting,
  or mapping its rows, delays that round). A growth is measured as ``resize`` makes it
  (waiting for the new worker to start) and as ``"auto"`` and Ray's growth make it (the
  worker starts while the rounds go on, and the change costs what the boundary costs).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from paragrad.bench.common import Row
from paragrad.core.shards import default_workers
from paragrad.data import Dataset, make_classification
from paragrad.engines.base import Engine
from paragrad.engines.local import LocalEngine
from paragrad.errors import ConvergenceWarning, PerformanceWarning
from paragrad.models import MLP, LogisticRegression
from paragrad.models.base import Model
from paragrad.optim import SGD as SGDOptimizer
from paragrad.optim import Adam
from paragrad.training.run import Run
from paragrad.training.strategies import SGD, GradientDescent
from paragrad.training.trainer import train

TARGET_AUTO = 1.1


def _train(
    model: Model, data: Dataset, engine: str | Engine, workers: Any, **options: Any
) -> tuple[Run, float]:
    """A whole call, timed as a user times it."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, PerformanceWarning))
        run = train(model, data, engine=engine, workers=workers, tol=0, **options)
    return run, time.perf_counter() - start


def _auto_case(
    name: str, make_model: Callable[[], Model], data: Dataset, repeats: int, **options: Any
) -> Row:
    counts: list[Any] = [*range(1, default_workers() + 1), "auto"]
    times: dict[Any, list[float]] = {count: [] for count in counts}
    chosen = []
    for _ in range(repeats):
        for count in counts:
            run, seconds = _train(make_model(), data, "local", count, **options)
            times[count].append(seconds)
            if count == "auto":
                chosen.append(run.history[-1]["workers"])
    best = {count: min(samples) for count, samples in times.items()}
    fixed = min((c for c in counts if c != "auto"), key=best.__getitem__)
    return {
        "benchmark": "elastic_auto",
        "case": name,
        "rows": data.num_rows,
        "rounds": len(run.history),
        **{f"workers_{count}_s": best[count] for count in counts},
        "best_fixed_workers": fixed,
        "auto_chose": chosen,
        "ratio_auto_to_best_fixed": best["auto"] / best[fixed],
        "target_ratio": TARGET_AUTO,
        "runs_each": repeats,
    }


def copy_bandwidth(num_bytes: int = 256 << 20) -> float:
    """Bytes per second of one memory copy into pages already touched (the better of 3)."""
    source, target = np.ones(num_bytes // 8), np.zeros(num_bytes // 8)
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return num_bytes / best


class Resizer:
    """A callback resizing the engine after given rounds (``wait`` as ``resize`` takes it)."""

    def __init__(self, engine: Engine, at: dict[int, tuple[int, bool]]) -> None:
        self.engine, self.at = engine, at

    def __call__(self, record: dict[str, Any]) -> None:
        if record["round"] in self.at:
            count, wait = self.at[record["round"]]
            how = "waiting for its start" if wait else "its start overlapping rounds"
            self.engine.resize(count, cause=f"resize, {how}", wait=wait)


def _change_rows(engine_name: str, engine: Engine, data: Dataset, bandwidth: float) -> list[Row]:
    """Resize 2 -> 1 -> 2 (waiting) -> 1 -> 2 (overlapped) during a full-batch run."""
    at = {9: (1, True), 19: (2, True), 29: (1, True), 39: (2, False)}
    options = dict(
        strategy=GradientDescent(), optimizer=Adam(lr=0.01), epochs=80, callbacks=[Resizer(engine, at)]
    )
    run, _ = _train(LogisticRegression(), data, engine, 2, **options)
    history, firsts = run.history, {change.round for change in run.changes}
    steady = {  # the median round at each worker count, away from the changes
        count: statistics.median(
            r["wall_s"] for r in history if r["workers"] == count and r["round"] not in firsts
        )
        for count in {r["workers"] for r in history}
    }
    half_bytes = data.X.nbytes / 2  # a change of 2 <-> 1 workers hands over half the rows
    moved_s = half_bytes / bandwidth
    rows = []
    for change in run.changes:
        delay = max(0.0, history[change.round]["wall_s"] - steady[change.after])
        cost = change.seconds + delay
        rows.append(
            {
                "benchmark": "elastic_change",
                "engine": engine_name,
                "change": f"{change.before}->{change.after}",
                "cause": change.cause,
                "rows": data.num_rows,
                "change_s": change.seconds,
                "next_round_delay_s": delay,
                "cost_s": cost,
                "round_s": steady[2],
                "moved_bytes": half_bytes,
                "moved_copy_s": moved_s,
                "ratio_to_round_plus_copy": cost / (steady[2] + moved_s),
                "target_ratio": 1.0,
            }
        )
    return rows


def bench_elastic(quick: bool) -> list[Row]:
    """workers="auto" against fixed counts; the cost of a change of the workers."""
    repeats = 1 if quick else 3
    small = make_classification(10_000 if quick else 20_000, 10, seed=0)
    rows = [
        _auto_case(
            "communication-bound: logistic d=10, batches of 8",
            LogisticRegression,
            small,
            repeats,
            strategy=SGD(batch_size=8),
            optimizer=SGDOptimizer(lr=0.05),
            epochs=1,
        )
    ]
    wide = make_classification(60_000 if quick else 200_000, 100, num_classes=10, seed=1)
    rows.append(
        _auto_case(
            "compute-bound: MLP 100-512-10, batches of 4096",
            lambda: MLP(hidden=(512,)),
            wide,
            repeats,
            strategy=SGD(batch_size=4096),
            epochs=3,
        )
    )
    big = make_classification(200_000 if quick else 1_000_000, 100, seed=2)
    bandwidth = copy_bandwidth()
    with LocalEngine(2) as local:
        rows += _change_rows("local", local, big, bandwidth)
    if importlib.util.find_spec("ray") is not None:
        from paragrad.engines.ray import RayEngine

        with RayEngine(2) as on_ray:
            rows += _change_rows("ray", on_ray, big if quick else big.take(slice(0, 200_000)), bandwidth)
    for row in rows:
        row.setdefault("copy_bandwidth_gb_s", bandwidth / 1e9)
    return rows
