"""The ``ray`` suite of ``paragrad bench``: the Ray engine against the local engine.

Both run the same tasks on the same data in the same run: the start-up (for Ray, a
local instance and its actors, until their first round comes back; with the memory of
Ray's processes, PSS), the round latency at d = 100 and 1e6 (broadcast d parameters,
every worker returns d values, the coordinator sums them; also against bare Ray actor
calls doing the same), and a full-batch gradient
step on features memory-mapped from one ``.npy`` file, which both engines' workers map.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench import MemorySampler, _write_features, engine_round, timings, vector_round
from paragrad.data import Dataset
from paragrad.engines.base import Engine
from paragrad.engines.local import LocalEngine
from paragrad.models import LinearRegression
from paragrad.optim import SGD as SGDOptimizer
from paragrad.shards import plan_shards
from paragrad.strategies import GradientDescent, RoundPlan
from paragrad.trainer import TrainStep

# Ray's object store faults in fresh pages for its first rounds of large objects; the
# figures are for the rounds after that, for both engines alike.
WARMUP = 30


def _gd_step(engine: Engine, data: Dataset, repeats: int) -> dict[str, float]:
    model = LinearRegression()
    model.setup(data.num_features)
    strategy, optimizer = GradientDescent(), SGDOptimizer(lr=0.1)
    params = np.zeros(model.num_params)
    state = optimizer.init(params)
    task = TrainStep(strategy, model, optimizer, RoundPlan(0, 1, 1))
    engine.start(data, plan_shards(data.num_rows, 2))

    def step():
        strategy.combine(engine.run(task, params, 0), params, state, model, optimizer)

    return timings(step, repeats, warmup=WARMUP)


class WorkerCount:
    """A trivial task: a round that proves every worker is up."""

    def __call__(self, shard) -> int:
        return shard.num_workers


def _started(make_engine) -> tuple[Engine, float]:
    """A new engine on tiny data, and the seconds until its first round came back."""
    start = time.perf_counter()
    engine = make_engine()
    engine.start(Dataset(np.zeros((2, 1))), plan_shards(2, 2))
    engine.run(WorkerCount())
    return engine, time.perf_counter() - start


class BareActor:
    """The baseline: a Ray actor that returns the parameters plus its index, nothing else."""

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def echo(self, params: np.ndarray) -> np.ndarray:
        return params + self.worker


def _bare_round(ray, d: int, repeats: int) -> dict[str, float]:
    """A round of bare actor calls: the vector put in the object store once when large
    (as the engine does), passed to 2 actors, their results summed."""
    from paragrad.engines.ray import PUT_BYTES

    # No CPUs reserved: the engine's actors hold them, idle while these are timed.
    actors = [ray.remote(BareActor).options(num_cpus=0).remote(worker) for worker in range(2)]

    def send(params: np.ndarray) -> list[np.ndarray]:
        sent = ray.put(params) if params.nbytes >= PUT_BYTES else params
        return ray.get([actor.echo.remote(sent) for actor in actors])

    try:
        return vector_round(send, d, repeats, WARMUP)
    finally:
        for actor in actors:
            ray.kill(actor)


def _descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, and by those, and so on."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(child) for child in children] + [
        grandchild for child in children for grandchild in _descendants(int(child))
    ]


def bench_ray(quick: bool) -> list[dict[str, Any]]:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return []  # Ray is an optional extra
    from paragrad.engines.ray import RayEngine, import_ray

    if import_ray().is_initialized():
        raise RuntimeError("the ray suite times a fresh local Ray instance: run it without one")
    num_rows, d = (200_000 if quick else 1_000_000), 100
    repeats = {100: 200 if quick else 1000, 1_000_000: 30 if quick else 100}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        data = Dataset(
            _write_features(Path(folder) / "X.npy", num_rows, d, rng), rng.standard_normal(num_rows)
        )
        ray_engine, ray_start_s = _started(lambda: RayEngine(2))
        ray_memory = sum(MemorySampler.pss(pid) for pid in _descendants(os.getpid()))
        local_engine, local_start_s = _started(lambda: LocalEngine(2))
        try:
            for size in (100, 1_000_000):
                ray_round = engine_round(ray_engine, size, repeats[size], warmup=WARMUP)
                local_round = engine_round(local_engine, size, repeats[size], warmup=WARMUP)
                bare_round = _bare_round(import_ray(), size, repeats[size])
                rows.append(
                    {
                        "benchmark": "ray_round_latency",
                        "d": size,
                        "workers": 2,
                        "ray_median_s": ray_round["median_s"],
                        "ray_p90_s": ray_round["p90_s"],
                        "local_median_s": local_round["median_s"],
                        "bare_actor_median_s": bare_round["median_s"],
                        "ratio_ray_over_local": ray_round["median_s"] / local_round["median_s"],
                        "ratio_ray_over_bare_actor": ray_round["median_s"] / bare_round["median_s"],
                    }
                )
            ray_step = _gd_step(ray_engine, data, 10 if quick else 20)
            local_step = _gd_step(local_engine, data, 10 if quick else 20)
        finally:
            local_engine.close()
            start = time.perf_counter()
            ray_engine.close()
            ray_stop_s = time.perf_counter() - start
    rows.append(
        {
            "benchmark": "ray_gd_step",
            "rows": num_rows,
            "features": d,
            "workers": 2,
            "ray_median_s": ray_step["median_s"],
            "local_median_s": local_step["median_s"],
            "ratio_ray_over_local": ray_step["median_s"] / local_step["median_s"],
        }
    )
    rows.append(
        {
            "benchmark": "ray_start",
            "workers": 2,
            "ray_start_s": ray_start_s,
            "ray_stop_s": ray_stop_s,
            "ray_processes_memory_bytes": ray_memory,
            "local_start_s": local_start_s,
        }
    )
    return rows
