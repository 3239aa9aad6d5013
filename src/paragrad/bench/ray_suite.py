"""The ``ray`` suite: the Ray engine against the local engine.

Both run the same tasks on the same data in the same run: the start-up (for Ray, a
local instance and its actors, until their first round comes back; with the memory of
Ray's processes, PSS), the round latency at d = 100 and 1e6 (broadcast d parameters,
every worker returns d values, the coordinator sums them; also against bare Ray actor
calls doing the same), and a full-batch gradient
step on features memory-mapped from one ``.npy`` file, which both engines' workers map.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench.common import (
    MemorySampler,
    Row,
    engine_round,
    linear_gd_step,
    start_on_tiny_data,
    timings,
    vector_round,
    write_features,
)
from paragrad.core.shards import Shard, Task, plan_shards
from paragrad.data import Dataset
from paragrad.engines.base import Engine
from paragrad.engines.local import LocalEngine

# Ray's object store faults in fresh pages for its first rounds of large objects; the
# figures are for the rounds after that, for both engines alike.
WARMUP = 30


def _gd_step(engine: Engine, data: Dataset, repeats: int) -> dict[str, float]:
    engine.start(data, plan_shards(data.num_rows, 2))
    return timings(linear_gd_step(engine, data.num_features), repeats, warmup=WARMUP)


class WorkerCount(Task):
    """A trivial task: a round that proves every worker is up."""

    def __call__(self, shard: Shard) -> int:
        return shard.num_workers


def _started(make_engine: Callable[[], Engine]) -> tuple[Engine, float]:
    """A new engine on tiny data, and the seconds until its first round came back."""
    start = time.perf_counter()
    engine = make_engine()
    start_on_tiny_data(engine)
    engine.run(WorkerCount())
    return engine, time.perf_counter() - start


class BareActor:
    """The baseline: a Ray actor that returns the parameters plus its index, nothing else."""

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def echo(self, params: np.ndarray) -> np.ndarray:
        return params + self.worker


def _bare_round(ray: Any, d: int, repeats: int) -> dict[str, float]:
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


def _round_rows(ray: Any, ray_engine: Engine, local_engine: Engine, quick: bool) -> list[Row]:
    """Round latency of both engines and of bare actor calls, at d = 100 and 1e6."""
    repeats = {100: 200 if quick else 1000, 1_000_000: 30 if quick else 100}
    rows: list[Row] = []
    for size in (100, 1_000_000):
        ray_round = engine_round(ray_engine, size, repeats[size], warmup=WARMUP)
        local_round = engine_round(local_engine, size, repeats[size], warmup=WARMUP)
        bare_round = _bare_round(ray, size, repeats[size])
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
    return rows


def bench_ray(quick: bool) -> list[Row]:
    """Start-up, round latency and a gradient step of the Ray engine against the local one."""
    if importlib.util.find_spec("ray") is None:
        return []  # Ray is an optional extra
    from paragrad.engines.ray import RayEngine, import_ray

    if import_ray().is_initialized():
        raise RuntimeError("the ray suite times a fresh local Ray instance: run it without one")
    num_rows, d = (200_000 if quick else 1_000_000), 100
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        data = Dataset(
            write_features(Path(folder) / "X.npy", num_rows, d, rng), rng.standard_normal(num_rows)
        )
        ray_engine, ray_start_s = _started(lambda: RayEngine(2))
        ray_memory = sum(MemorySampler.pss(pid) for pid in _descendants(os.getpid()))
        local_engine, local_start_s = _started(lambda: LocalEngine(2))
        try:
            rows = _round_rows(import_ray(), ray_engine, local_engine, quick)
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
