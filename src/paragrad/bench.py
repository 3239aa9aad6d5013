"""Benchmarks behind ``paragrad bench``: each figure beside a baseline measured in the same run.

Suites:

- ``latency``: one round of the local engine (broadcast d parameters, every worker
  returns d values, the coordinator sums them) against a round trip of the same vector
  through ``multiprocessing`` pipes, and ``torch.distributed`` all_reduce on gloo over
  127.0.0.1 when torch is installed.
- ``gd_step``: a full-batch least-squares gradient step with 2 local workers against
  single-process numpy with 2 BLAS threads, and the memory-read floor (2 threads reading
  X once); with the peak memory of the run (coordinator and workers, shared pages once)
  for data memory-mapped from ``.npy`` (as ``paragrad.load`` gives, and as tables are
  loaded) and for numpy arrays in memory (which the engine must copy once).
- ``mlp_scaling``: minibatch SGD samples per second with the MLP on 2 workers vs 1.
- ``ray``: the Ray engine against the local engine (see :mod:`paragrad.bench_ray`).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.atomic import atomic_write
from paragrad.data import Dataset, make_classification
from paragrad.engines.local import LocalEngine
from paragrad.errors import ConvergenceWarning
from paragrad.models import MLP, LinearRegression
from paragrad.optim import SGD as SGDOptimizer
from paragrad.shards import Shard, plan_shards
from paragrad.strategies import SGD, GradientDescent

SUITES = (
    "latency",
    "gd_step",
    "mlp_scaling",
    "solvers",
    "float32",
    "predict",
    "communication",
    "torch",
    "ray",
)


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


# -- latency --------------------------------------------------------------------------------


class EchoPlusWorker:
    """Returns the parameters plus the worker index: d values back from every worker."""

    zero_copy_results = True

    def __call__(self, shard: Shard, params: np.ndarray) -> np.ndarray:
        return params + shard.worker


def _pipe_echo(conn) -> None:
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        conn.send_bytes(data)


def pipe_round(d: int, repeats: int) -> dict[str, float]:
    """Baseline: send the vector to 2 echo processes through pipes, receive and sum."""
    context = mp.get_context("spawn")
    pairs = [context.Pipe() for _ in range(2)]
    processes = [context.Process(target=_pipe_echo, args=(child,), daemon=True) for _, child in pairs]
    for process in processes:
        process.start()
    params = np.ones(d)

    total = np.empty(d)

    def step():
        for parent, _ in pairs:
            parent.send_bytes(params)
        np.copyto(total, np.frombuffer(pairs[0][0].recv_bytes(), dtype=np.float64))
        for parent, _ in pairs[1:]:
            np.add(total, np.frombuffer(parent.recv_bytes(), dtype=np.float64), out=total)

    try:
        return timings(step, repeats)
    finally:
        for parent, _ in pairs:
            parent.send_bytes(b"")
        for process in processes:
            process.join(5)


def _gloo_worker(rank: int, port: int, d: int, repeats: int, queue) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.ones(d, dtype=torch.float64)
    result = timings(lambda: dist.all_reduce(tensor), repeats)
    dist.destroy_process_group()
    if rank == 0:
        queue.put(result)


def gloo_round(d: int, repeats: int) -> dict[str, float] | None:
    """Baseline: torch.distributed all_reduce on gloo over 127.0.0.1, if torch is installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # looked up, not imported: torch is large
        return None

    return _two_ranks(_gloo_worker, d, repeats, timeout=300)


def _two_ranks(target: Callable[..., None], *args: Any, timeout: float) -> Any:
    """Run ``target(rank, port, *args, queue)`` as 2 spawned processes meeting on a free
    127.0.0.1 port; returns what rank 0 puts on the queue."""
    import socket

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


def vector_round(
    send: Callable[[np.ndarray], list[np.ndarray]], d: int, repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Timings of a round: d parameters out through ``send``, which returns d values from
    each worker, summed by the coordinator."""
    params, total = np.ones(d), np.empty(d)

    def one_round():
        first, *rest = send(params)
        np.copyto(total, first)
        for vector in rest:
            np.add(total, vector, out=total)

    return timings(one_round, repeats, warmup)


def engine_round(engine, d: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """:func:`vector_round` on a started engine."""
    task = EchoPlusWorker()
    return vector_round(lambda params: engine.run(task, params), d, repeats, warmup)


def bench_latency(quick: bool) -> list[dict[str, Any]]:
    rows = []
    with LocalEngine(2) as engine:
        engine.start(Dataset(np.zeros((2, 1))), plan_shards(2, 2))
        for d in (100, 1_000_000):
            repeats = (200 if d == 100 else 30) if quick else (2000 if d == 100 else 200)
            ours = engine_round(engine, d, repeats)
            pipe = pipe_round(d, repeats)
            gloo = gloo_round(d, repeats)
            rows.append(
                {
                    "benchmark": "round_latency",
                    "d": d,
                    "workers": 2,
                    "local_median_s": ours["median_s"],
                    "local_p90_s": ours["p90_s"],
                    "pipe_median_s": pipe["median_s"],
                    "gloo_median_s": None if gloo is None else gloo["median_s"],
                    "ratio_pipe_over_local": pipe["median_s"] / ours["median_s"],
                    "ratio_gloo_over_local": None if gloo is None else gloo["median_s"] / ours["median_s"],
                    "target_s": 100e-6 if d == 100 else 2e-3,
                }
            )
    return rows


# -- full-batch gradient step ---------------------------------------------------------------


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

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _numpy_gradient(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return X.T @ (X @ w - y)


def _write_features(path: Path, num_rows: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Random features written to a ``.npy`` file in chunks, returned memory-mapped."""
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(num_rows, d))
    for start in range(0, num_rows, 100_000):
        X[start : start + 100_000] = rng.standard_normal((min(100_000, num_rows - start), d))
    X.flush()
    del X
    return np.load(path, mmap_mode="r")


def _numpy_baselines(X: np.ndarray, y: np.ndarray, w: np.ndarray, repeats: int) -> tuple[dict, dict]:
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


class DescribeLabels:
    """A cheap task that touches every worker's labels."""

    def __call__(self, shard: Shard) -> int:
        return int(shard.y.size)


def bench_gd_step(quick: bool) -> list[dict[str, Any]]:
    from paragrad.strategies import RoundPlan
    from paragrad.trainer import TrainStep

    num_rows, d = (200_000 if quick else 1_000_000), 100
    repeats = 10 if quick else 20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        X = _write_features(Path(folder) / "X.npy", num_rows, d, rng)
        y = rng.standard_normal(num_rows)
        w = rng.standard_normal(d) * 0.01
        floor, numpy_step = _numpy_baselines(X, y, w, repeats)
        model = LinearRegression()
        model.setup(d)
        strategy, optimizer = GradientDescent(), SGDOptimizer(lr=0.1)
        params = np.zeros(model.num_params)
        state = optimizer.init(params)
        task = TrainStep(strategy, model, optimizer, RoundPlan(0, 1, 1))
        with LocalEngine(2) as engine:

            def local_step():
                strategy.combine(engine.run(task, params, 0), params, state, model, optimizer)

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


# -- MLP scaling ----------------------------------------------------------------------------


def bench_mlp_scaling(quick: bool) -> list[dict[str, Any]]:
    from paragrad.trainer import train

    data = make_classification(50_000 if quick else 200_000, 32, num_classes=4, seed=0)
    batch = 1024
    rates = {}
    for workers in (1, 2):
        run = train(
            MLP(hidden=(128,)),
            data,
            strategy=SGD(batch_size=batch),
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


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from threadpoolctl import threadpool_info

    blas = [f"{info.get('internal_api')} {info.get('version')}" for info in threadpool_info()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    from threadpoolctl import threadpool_limits

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


def run_suites(names: list[str], quick: bool, out: Path | None, echo: Callable[[str], None] = print) -> dict:
    """Run the named suites, print each row, and write ``results.json`` under ``out``."""
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "results": []}
    for name in names:
        for row in BENCHMARKS[name](quick):
            results["results"].append(row)
            if not row["benchmark"].endswith("curves"):
                echo(format_row(row))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "results.json", "w") as handle:
            json.dump(results, handle, indent=2)
        for path in write_plots(results, out):
            echo(f"wrote {path}")
    return results


def format_row(row: dict[str, Any]) -> str:
    def show(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return "  ".join(f"{key}={show(value)}" for key, value in row.items())


# -- solvers: time to a target loss ---------------------------------------------------------


def _shared_classification(num_rows: int, d: int, seed: int) -> Dataset:
    """Synthetic logistic data placed in shared memory, as :func:`paragrad.load` places a file."""
    from paragrad.data import shared_empty

    data = make_classification(num_rows, d, seed=seed)
    X = shared_empty(data.X.shape, np.float64)
    X[...] = data.X
    return Dataset(X, data.y)


def _curve(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    wall, sent = (
        np.cumsum([r["wall_s"] for r in history]),
        np.cumsum([r["bytes_sent"] + r["bytes_received"] for r in history]),
    )
    return {"wall_s": wall.tolist(), "bytes": sent.tolist(), "loss": [r["loss"] for r in history]}


def _time_to(curve: dict[str, list[float]], target: float) -> float | None:
    for wall, loss in zip(curve["wall_s"], curve["loss"], strict=True):
        if loss <= target:
            return wall
    return None


def bench_solvers(quick: bool) -> list[dict[str, Any]]:
    """Time to reach the optimum's loss + 1e-4 on logistic regression, against scikit-learn."""
    from sklearn.linear_model import LogisticRegression as SklearnLogistic

    from paragrad.models import LogisticRegression
    from paragrad.optim import LBFGS, Adam
    from paragrad.strategies import LocalSGD
    from paragrad.trainer import train

    num_rows, d = (200_000 if quick else 1_000_000), 100
    data = _shared_classification(num_rows, d, seed=0)
    start = time.perf_counter()
    reference = SklearnLogistic(C=1e12, tol=1e-8, max_iter=1000).fit(data.X, data.y)
    sklearn_s = time.perf_counter() - start
    z = data.X @ reference.coef_[0] + reference.intercept_[0]
    optimum = float(np.mean(np.logaddexp(0.0, z) - data.y * z))
    target = optimum + 1e-4
    runs = {
        "lbfgs": dict(strategy=GradientDescent(), optimizer=LBFGS(), epochs=100),
        "gd": dict(strategy=GradientDescent(), optimizer=Adam(lr=0.1), epochs=30 if quick else 15),
        "sgd": dict(strategy=SGD(batch_size=512), optimizer=Adam(lr=0.01), epochs=2),
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
            curves[name] = _curve(run.history)
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
                    "final_loss_over_optimum": run.model.loss(data.X, data.y) - optimum,
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


# -- float32 --------------------------------------------------------------------------------


def bench_float32(quick: bool) -> list[dict[str, Any]]:
    """Full-batch logistic step and L-BFGS final loss in float32 against float64."""
    from paragrad.models import LogisticRegression
    from paragrad.strategies import RoundPlan
    from paragrad.trainer import TrainStep, train

    num_rows, d = (200_000 if quick else 1_000_000), 100
    data = make_classification(num_rows, d, seed=1)
    steps, losses = {}, {}
    with LocalEngine(2) as engine:
        for dtype in ("float64", "float32"):
            with warnings.catch_warnings():  # float32 may stop when its precision runs out
                warnings.simplefilter("ignore")
                run = train(LogisticRegression(), data, engine=engine, epochs=50, tol=1e-8, dtype=dtype)
            losses[dtype] = run.model.loss(data.X, data.y)
            task = TrainStep(GradientDescent(), run.model, SGDOptimizer(0.1), RoundPlan(0, 1, 1))
            engine.start(data.astype(dtype), plan_shards(num_rows, 2))
            steps[dtype] = timings(lambda task=task, run=run: engine.run(task, run.params, 0), 10)["median_s"]
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


# -- distributed predict --------------------------------------------------------------------


def bench_predict(quick: bool) -> list[dict[str, Any]]:
    """Streaming ``predict`` of a float32 ``.npy`` on 2 workers against single-process numpy."""
    from paragrad.inference import predict_to_file
    from paragrad.models import LogisticRegression

    num_rows, d = (1_000_000 if quick else 10_000_000), 100
    rng = np.random.default_rng(2)
    model = LogisticRegression()
    model.setup(d, np.array([0.0, 1.0]))
    model.params_ = rng.standard_normal(d + 1) * 0.1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "X.npy"
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(num_rows, d))
        for start in range(0, num_rows, 500_000):
            stop = min(start + 500_000, num_rows)
            X[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
        X.flush()
        del X
        os.sync()  # let the written pages reach the disk before anything is timed

        def numpy_predict():
            mapped = np.load(path, mmap_mode="r")
            step = 500_000
            out = np.empty(num_rows, dtype=np.int64)
            for start in range(0, num_rows, step):
                out[start : start + step] = model.predict(mapped[start : start + step])
            with atomic_write(Path(folder) / "numpy.npy") as handle:  # as durable as ours
                np.save(handle, out)

        with LocalEngine(2) as engine:  # started once, as a cluster would be

            def ours():
                predict_to_file(model, path, Path(folder) / "p.npy", engine=engine, progress=False)

            numpy_runs, our_runs = [], []
            for _ in range(4):  # interleaved, so both see the same state of the page cache
                numpy_runs.append(timings(numpy_predict, 1, warmup=0)["median_s"])
                our_runs.append(timings(ours, 1, warmup=0)["median_s"])
            numpy_s, ours_s = statistics.median(numpy_runs[1:]), statistics.median(our_runs[1:])
    return [
        {
            "benchmark": "predict",
            "rows": num_rows,
            "features": d,
            "dtype": "float32",
            "workers": 2,
            "rows_per_s": num_rows / ours_s,
            "numpy_rows_per_s": num_rows / numpy_s,
            "speedup": numpy_s / ours_s,
            "target_speedup": 1.5,
        }
    ]


def _plot_smoothed(ax, curves: dict[str, dict[str, list[float]]], axis: str) -> None:
    """Each run's round loss against ``axis``; a moving average, since stochastic rounds see one batch."""
    for name, curve in curves.items():
        loss = np.asarray(curve["loss"])
        window = max(1, len(loss) // 25)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.asarray(curve[axis])[window - 1 :], smooth, label=name)


def _save(fig, path: Path) -> Path:
    """Write a finished figure as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots of a run: latency bars, loss against wall time and against bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    rows = results["results"]
    latency = [row for row in rows if row["benchmark"] == "round_latency"]
    if latency:
        fig, axes = plt.subplots(1, len(latency), figsize=(4 * len(latency), 3.2))
        for ax, row in zip(np.atleast_1d(axes), latency, strict=True):
            names = ["paragrad local", "pipes", "gloo all_reduce"]
            values = [row["local_median_s"], row["pipe_median_s"], row["gloo_median_s"]]
            shown = [(n, v * 1e3) for n, v in zip(names, values, strict=True) if v is not None]
            ax.bar([n for n, _ in shown], [v for _, v in shown], color=["C0", "C7", "C3"][: len(shown)])
            ax.set_title(f"round, d = {row['d']:,}, 2 workers")
            ax.set_ylabel("median ms")
        written.append(_save(fig, out / "latency.png"))
    compression = next((row for row in rows if row["benchmark"] == "communication_curves"), None)
    if compression is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        _plot_smoothed(ax, compression["curves"], "bytes")
        ax.set_xscale("log")
        ax.set_xlabel("bytes communicated")
        ax.set_ylabel("round loss (moving average)")
        ax.set_ylim(compression["optimum"] - 0.01, compression["optimum"] + 0.15)
        ax.set_title("compression: logistic regression, 2 local workers")
        ax.legend()
        written.append(_save(fig, out / "compression_loss_vs_bytes.png"))
    curves = next((row for row in rows if row["benchmark"] == "curves"), None)
    if curves is not None:
        sklearn_s = next(row["sklearn_lbfgs_s"] for row in rows if row["benchmark"] == "time_to_target")
        for axis, label, name in (
            ("wall_s", "wall time (s)", "loss_vs_time.png"),
            ("bytes", "bytes communicated", "loss_vs_bytes.png"),
        ):
            fig, ax = plt.subplots(figsize=(6, 4))
            _plot_smoothed(ax, curves["curves"], axis)
            ax.axhline(curves["optimum"], color="k", linewidth=0.8, label="optimum")
            if axis == "wall_s":
                ax.axvline(sklearn_s, color="k", linestyle="--", label="scikit-learn lbfgs (total)")
            ax.set_xscale("log")
            ax.set_ylim(curves["optimum"] - 0.005, curves["optimum"] + 0.1)
            ax.set_xlabel(label)
            ax.set_ylabel("round loss (moving average)")
            ax.set_title("logistic regression, 2 local workers")
            ax.legend()
            written.append(_save(fig, out / name))
    return written


# -- communication: compression against bytes and time --------------------------------------


def _reach(
    curve: dict[str, list[float]], target: float, rounds_per_epoch: float
) -> tuple[float | None, float | None]:
    """Bytes and wall time until the round loss, averaged over half an epoch, is at ``target``."""
    loss = np.asarray(curve["loss"])
    window = max(1, int(rounds_per_epoch // 2))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    below = np.flatnonzero(smooth <= target)
    if not len(below):
        return None, None
    at = below[0] + window - 1
    return curve["bytes"][at], curve["wall_s"][at]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def bench_communication(quick: bool) -> list[dict[str, Any]]:
    """Bytes and wall time of synchronous SGD and LocalSGD, each plain and compressed.

    Every run makes the same passes over the data; the target is the plain SGD's final
    loss + 1%, and a run reaches it when its round loss, averaged over half an epoch,
    does. Only worker-to-coordinator traffic is compressed; the parameters still go
    out whole, so only fewer rounds (LocalSGD) shrink both directions.
    """
    from paragrad.models import LogisticRegression
    from paragrad.optim import Cosine
    from paragrad.strategies import LocalSGD
    from paragrad.trainer import train

    num_rows, d, epochs = (50_000 if quick else 200_000), 500, 3
    data = _shared_classification(num_rows, d, seed=3)
    batches = epochs * math.ceil(num_rows / 2 / 256)
    runs = {
        "sgd": SGD(batch_size=256),
        "sgd_topk": SGD(batch_size=256, compress="topk:0.01"),
        "local_sgd": LocalSGD(local_steps=16, batch_size=256),
        "local_sgd_topk": LocalSGD(local_steps=16, batch_size=256, compress="topk:0.1"),
        "local_sgd_int8": LocalSGD(local_steps=16, batch_size=256, compress="int8"),
    }
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
            curves[name] = _curve(run.history)
            results[name] = {
                "loss": run.model.loss(data.X, data.y),
                "rounds_per_epoch": len(run.history) / epochs,
            }
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


# -- PyTorch: paragrad against DistributedDataParallel -----------------------------------


def _ddp_worker(rank: int, port: int, num_rows: int, d: int, epochs: int, queue) -> None:
    """One DDP rank: its shard, batches of 1024 drawn as paragrad's SGD draws them."""
    import torch
    import torch.distributed as dist

    from paragrad.strategies import batch_rows

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = make_classification(num_rows, d, seed=5, dtype=np.float32)
    plan = plan_shards(num_rows, 2)
    rows = plan.rows(rank)
    shard = Shard(data.X[rows], data.y[rows], rank, 2)
    X, y = torch.from_numpy(shard.X), torch.from_numpy(shard.y).long()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(d, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    per_epoch = math.ceil(max(plan.sizes) / 1024)
    times = []
    for epoch in range(epochs):
        dist.barrier()
        start = time.perf_counter()
        for position in range(per_epoch):
            batch = batch_rows(shard, 0, epoch, position, 1024)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    if rank == 0:
        queue.put(times)


def bench_torch(quick: bool) -> list[dict[str, Any]]:
    """Epoch time of a small torch model: 2 local workers against DDP on gloo, same batches."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return [{"benchmark": "torch_epoch", "skipped": "torch is not installed"}]
    import torch

    from paragrad.models.torch_module import Torch
    from paragrad.trainer import train

    num_rows, d, epochs = (200_000 if quick else 1_000_000), 100, 2
    ddp_times = _two_ranks(_ddp_worker, num_rows, d, epochs, timeout=600)
    data = make_classification(num_rows, d, seed=5, dtype=np.float32)
    torch.manual_seed(0)
    with LocalEngine(2) as engine:
        ours = []
        for _ in range(epochs):
            model = Torch(torch.nn.Linear(d, 2))
            options = dict(strategy=SGD(batch_size=1024), optimizer=SGDOptimizer(lr=0.1), engine=engine)
            run = train(model, data, epochs=1, tol=0, dtype="float32", **options)
            ours.append(sum(record["wall_s"] for record in run.history))
    ddp_s, ours_s = min(ddp_times), min(ours)
    return [
        {
            "benchmark": "torch_epoch",
            "model": f"Linear({d}, 2), cross-entropy",
            "rows": num_rows,
            "batch_per_worker": 1024,
            "workers": 2,
            "epoch_s": ours_s,
            "ddp_gloo_epoch_s": ddp_s,
            "ratio_to_ddp": ours_s / ddp_s,
            "target_ratio": 0.5,
        }
    ]


def bench_ray(quick: bool) -> list[dict[str, Any]]:
    """The Ray engine against the local engine, in a module of its own."""
    from paragrad import bench_ray as suite

    return suite.bench_ray(quick)


BENCHMARKS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "latency": bench_latency,
    "gd_step": bench_gd_step,
    "mlp_scaling": bench_mlp_scaling,
    "solvers": bench_solvers,
    "float32": bench_float32,
    "predict": bench_predict,
    "communication": bench_communication,
    "torch": bench_torch,
    "ray": bench_ray,
}
