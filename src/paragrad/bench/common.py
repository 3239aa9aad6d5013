"""What the suites share: timers, the memory sampler, the machine's description, and the
data, engines and rounds several suites set up alike.

Suite modules import this one; it imports none of them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from paragrad.core.shards import Shard, Task, plan_shards
from paragrad.core.shm import shared_empty
from paragrad.data import Dataset, make_classification
from paragrad.engines.base import Engine
from paragrad.models import LinearRegression
from paragrad.optim import SGD as SGDOptimizer
from paragrad.training.strategies import GradientDescent, RoundPlan
from paragrad.training.tasks import TrainStep

Row = dict[str, Any]


def timings(step: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and 90th percentile of ``step``'s wall time, in seconds."""
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"median_s": statistics.median(samples), "p90_s": samples[int(0.9 * (len(samples) - 1))]}


# -- rounds ---------------------------------------------------------------------------------


class EchoPlusWorker(Task):
    """Returns the parameters plus the worker index: d values back from every worker."""

    zero_copy_results: ClassVar[bool] = True

    def __call__(self, shard: Shard, params: np.ndarray) -> np.ndarray:
        return params + shard.worker


def vector_round(
    send: Callable[[np.ndarray], list[np.ndarray]], d: int, repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Timings of a round: d parameters out through ``send``, which returns d values from
    each worker, summed by the coordinator."""
    params, total = np.ones(d), np.empty(d)

    def one_round() -> None:
        first, *rest = send(params)
        np.copyto(total, first)
        for vector in rest:
            np.add(total, vector, out=total)

    return timings(one_round, repeats, warmup)


def engine_round(engine: Engine, d: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """:func:`vector_round` on a started engine."""
    task = EchoPlusWorker()
    return vector_round(lambda params: engine.run(task, params), d, repeats, warmup)


def start_on_tiny_data(engine: Engine) -> None:
    """Start ``engine``'s 2 workers on 2 rows of 1 feature: for rounds that bring their own data."""
    engine.start(Dataset(np.zeros((2, 1))), plan_shards(2, 2))


def linear_gd_step(engine: Engine, num_features: int) -> Callable[[], None]:
    """One full-batch least-squares gradient step on a started engine, combined on the
    coordinator as training does; the parameters stay at zero between calls."""
    model = LinearRegression()
    model.setup(num_features)
    strategy, optimizer = GradientDescent(), SGDOptimizer(lr=0.1)
    params = np.zeros(model.num_params)
    state = optimizer.init(params)
    task = TrainStep(strategy, model, optimizer, RoundPlan(0, 1, 1))

    def step() -> None:
        strategy.round(lambda point: engine.run(task, point, 0), params, state, model, optimizer)

    return step


def two_ranks(target: Callable[..., None], *args: Any, timeout: float) -> Any:
    """Run ``target(rank, port, *args, queue)`` as 2 spawned processes meeting on a free
    127.0.0.1 port; returns what rank 0 puts on the queue."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=target, args=(rank, port, *args, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    result = queue.get(timeout=timeout)
    for process in processes:
        process.join(60)
    return result


# -- memory ---------------------------------------------------------------------------------


class MemorySampler:
    """Peak of the summed proportional set size (PSS) of this process and given children.

    PSS splits each shared page between the processes that map it, so the sum counts
    shared memory (the data) once.
    """

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.01) -> None:
        self.pids, self.interval_s, self.peak = pids, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(self.pss(pid) for pid in [os.getpid(), *self.pids()])
            self.peak = max(self.peak, total)
            time.sleep(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


# -- data -----------------------------------------------------------------------------------


def write_features(
    path: Path,
    num_rows: int,
    d: int,
    rng: np.random.Generator,
    dtype: type = np.float64,
    chunk: int = 100_000,
) -> np.ndarray:
    """Standard normal features written to a ``.npy`` file ``chunk`` rows at a time,
    returned memory-mapped."""
    X = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(num_rows, d))
    for start in range(0, num_rows, chunk):
        stop = min(start + chunk, num_rows)
        X[start:stop] = rng.standard_normal((stop - start, d), dtype=dtype)
    X.flush()
    del X
    return np.load(path, mmap_mode="r")


def shared_classification(num_rows: int, d: int, seed: int) -> Dataset:
    """Synthetic logistic data placed in shared memory, as :func:`paragrad.load` places a file."""
    data = make_classification(num_rows, d, seed=seed)
    X = shared_empty(data.X.shape, np.float64)
    X[...] = data.X
    return Dataset(X, data.y)


def targets(data: Dataset) -> np.ndarray:
    """The targets of a labelled data set (the suites' generated data always has them)."""
    if data.y is None:
        raise ValueError(f"{data.source}: no targets")
    return data.y


def curve(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Cumulative wall time and bytes, and the loss, of each round of a training run."""
    wall = np.cumsum([record["wall_s"] for record in history])
    sent = np.cumsum([record["bytes_sent"] + record["bytes_received"] for record in history])
    return {"wall_s": wall.tolist(), "bytes": sent.tolist(), "loss": [record["loss"] for record in history]}


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [f"{info.get('internal_api')} {info.get('version')}" for info in threadpool_info()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    X = np.ones((320_000, 100))  # 256 MB
    with threadpool_limits(2):
        read_s = timings(lambda: X @ np.ones(100), 5)["median_s"]
    return {
        "read_bandwidth_gb_s": X.nbytes / read_s / 1e9,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
    }


def best_time(step: Callable[[], Any], repeats: int, before: Callable[[], None] = lambda: None) -> float:
    """The best wall time of ``repeats`` calls of ``step`` (``before`` runs untimed first)."""
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(
    steps: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 0,
    before: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Each step's best wall time over ``repeats`` calls, the steps taking turns so that all
    see the same machine (and page cache); the first ``warmup`` turns are not counted, and
    ``before`` runs untimed before every call."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(warmup + repeats):
        for name, step in steps.items():
            times[name].append(best_time(step, 1, before))
    return {name: min(values[warmup:]) for name, values in times.items()}


def ratio_row(name: str, ours_s: float, baseline: str, baseline_s: float, target: float, **extra: Any) -> Row:
    """An ``e2e`` row: our whole call over the baseline's, against a target ratio."""
    ratio = ours_s / baseline_s
    return {
        "benchmark": "e2e",
        "row": name,
        "ours_s": ours_s,
        "baseline": baseline,
        "baseline_s": baseline_s,
        "ratio": ratio,
        "target_ratio": target,
        "met": ratio <= target,
        **extra,
    }
