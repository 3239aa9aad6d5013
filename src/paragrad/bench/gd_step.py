"""Full-batch gradient steps: the ``gd_step`` suite (against numpy and the memory-read
floor, with peak memory) and the ``float32`` suite (float32 against float64)."""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np

from paragrad.bench.common import MemorySampler, Row, linear_gd_step, targets, timings, write_features
from paragrad.core.shards import Shard, Task, plan_shards
from paragrad.data import Dataset, make_classification
from paragrad.engines.local import LocalEngine
from paragrad.models import LogisticRegression
from paragrad.optim import SGD as SGDOptimizer
from paragrad.training.strategies import GradientDescent, RoundPlan
from paragrad.training.tasks import TrainStep
from paragrad.training.trainer import train


class DescribeLabels(Task):
    """A cheap task that touches every worker's labels."""

    def __call__(self, shard: Shard) -> int:
        assert shard.y is not None, "the data set given has labels"
        return int(shard.y.size)


def _numpy_baselines(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Read floor (2 threads reading X once) and the plain numpy gradient with 2 threads."""
    from threadpoolctl import threadpool_limits

    X = np.ascontiguousarray(X)
    with threadpool_limits(2):
        floor = timings(lambda: X @ w, repeats)
        gradient = timings(lambda: X.T @ (X @ w - y), repeats)
    return floor, gradient


def _peak_memory_from_arrays(X: np.ndarray, y: np.ndarray) -> int:
    """Peak memory when the data are numpy arrays in memory (copied once for the workers).

    Like every figure of :class:`MemorySampler`, it includes the processes' own memory
    (Python and libraries, some 30 MB each), which weighs more on smaller data.
    """
    with LocalEngine(2) as engine, MemorySampler(lambda: engine.pids) as memory:
        engine.start(Dataset(X, y), plan_shards(len(X), 2))
        engine.run(DescribeLabels())
    return memory.peak


def bench_gd_step(quick: bool) -> list[Row]:
    """A least-squares gradient step on 2 local workers against numpy with 2 BLAS threads,
    with the run's peak memory for memory-mapped data and for arrays in memory."""
    num_rows, d = (200_000 if quick else 1_000_000), 100
    repeats = 10 if quick else 20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        X = write_features(Path(folder) / "X.npy", num_rows, d, rng)
        y = rng.standard_normal(num_rows)
        w = rng.standard_normal(d) * 0.01
        floor, numpy_step = _numpy_baselines(X, y, w, repeats)
        with LocalEngine(2) as engine:
            local_step = linear_gd_step(engine, d)
            with MemorySampler(lambda: engine.pids) as memory:
                engine.start(Dataset(X, y), plan_shards(num_rows, 2))
                for _ in range(3):
                    local_step()
            local = timings(local_step, repeats)
        data_bytes = X.nbytes + y.nbytes
        del X  # its mapped pages would count towards the next measurement
    in_memory = _peak_memory_from_arrays(rng.standard_normal((num_rows, d)), y)
    return [
        {
            "benchmark": "gd_step",
            "rows": num_rows,
            "features": d,
            "workers": 2,
            "local_median_s": local["median_s"],
            "numpy_2_threads_median_s": numpy_step["median_s"],
            "read_floor_median_s": floor["median_s"],
            "speedup_over_numpy": numpy_step["median_s"] / local["median_s"],
            "ratio_to_read_floor": local["median_s"] / floor["median_s"],
            "target_speedup": 1.5,
            "data_bytes": data_bytes,
            "peak_memory_bytes": memory.peak,
            "peak_memory_over_data": memory.peak / data_bytes,
            "peak_memory_in_memory_arrays_over_data": in_memory / data_bytes,
            "target_memory_over_data": 1.3,
        }
    ]


def bench_float32(quick: bool) -> list[Row]:
    """Full-batch logistic step and L-BFGS final loss in float32 against float64."""
    num_rows, d = (200_000 if quick else 1_000_000), 100
    data = make_classification(num_rows, d, seed=1)
    steps, losses = {}, {}
    with LocalEngine(2) as engine:
        for dtype in ("float64", "float32"):
            with warnings.catch_warnings():  # float32 may stop when its precision runs out
                warnings.simplefilter("ignore")
                run = train(LogisticRegression(), data, engine=engine, epochs=50, tol=1e-8, dtype=dtype)
            losses[dtype] = run.model.loss(data.X, targets(data))
            task = TrainStep(GradientDescent(), run.model, SGDOptimizer(0.1), RoundPlan(0, 1, 1))
            engine.start(data.astype(dtype), plan_shards(num_rows, 2))
            steps[dtype] = timings(functools.partial(engine.run, task, run.params, 0), 10)["median_s"]
    return [
        {
            "benchmark": "float32",
            "rows": num_rows,
            "features": d,
            "step_float64_s": steps["float64"],
            "step_float32_s": steps["float32"],
            "speedup": steps["float64"] / steps["float32"],
            "final_loss_float64": losses["float64"],
            "final_loss_float32": losses["float32"],
            "final_loss_change": losses["float32"] - losses["float64"],
        }
    ]
