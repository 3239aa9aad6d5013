"""The ``e2e`` suite: whole calls as a user times them, each against the single-process
tool a user would pick, measured in the same run on the same data.

Every row is a ratio (ours over the baseline, best of ``repeats``), with its target and
whether the answers agree (final training loss within 1e-4, or accuracy within 0.2
points). Calls without an engine object use the engine kept between calls, as a user's
script would: "cold" rows release it first, "warm" rows call again on the same arrays.
The rows where fixed costs decide (small data, grid searches, checkpoints) are in
:mod:`paragrad.bench.fixed_costs`; the command line's rows time a fresh process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench.common import Row, best_time, interleaved_best, ratio_row, targets, write_features
from paragrad.bench.fixed_costs import checkpoint_row, fresh_process_row, grid_search_rows, small_rows
from paragrad.core.atomic import atomic_write
from paragrad.core.shards import default_workers
from paragrad.data import Dataset, make_classification
from paragrad.engines.kept import release_kept_engine
from paragrad.errors import ConvergenceWarning
from paragrad.inference import predict_to_file
from paragrad.models import MLP, LogisticRegression
from paragrad.optim import Adam
from paragrad.training.strategies import SGD
from paragrad.training.trainer import train


def _logistic_loss(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float) -> float:
    z = X @ coef + intercept
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _logistic_rows(num_rows: int, repeats: int, warm: bool) -> list[Row]:
    """``pg.train`` (a Dataset built from the arrays, the default engine and optimizer)
    against scikit-learn's ``LogisticRegression(solver="lbfgs")``, cold and warm."""
    from sklearn.linear_model import LogisticRegression as SklearnLogistic

    data = make_classification(num_rows, 100, seed=0)
    X, y = np.ascontiguousarray(data.X), np.ascontiguousarray(data.y)
    fitted: dict[str, Any] = {}

    def sklearn() -> None:
        fitted["sklearn"] = SklearnLogistic(solver="lbfgs").fit(X, y)

    def ours() -> None:
        fitted["ours"] = train(LogisticRegression(), Dataset(X, y))

    sklearn_times, cold_times = [], []
    for _ in range(repeats):  # taking turns, so that both see the same machine
        sklearn_times.append(best_time(sklearn, 1))
        cold_times.append(best_time(ours, 1, before=release_kept_engine))
    sklearn_s, cold_s = min(sklearn_times), min(cold_times)
    reference = fitted["sklearn"]
    gap = fitted["ours"].model.loss(X, y) - _logistic_loss(X, y, reference.coef_[0], reference.intercept_[0])
    label = f"logistic {num_rows:.0e} x 100"
    rows = [
        ratio_row(
            f"pg.train {label}, cold",
            cold_s,
            "sklearn lbfgs",
            sklearn_s,
            0.6 if num_rows >= 1_000_000 else 1.0,
            loss_minus_baseline=gap,
            setup_s=fitted["ours"].setup_s,
            engine=fitted["ours"].engine,
        )
    ]
    rows += _peer_rows(label, X, y, cold_s, fitted["ours"].model.loss(X, y), repeats)
    if warm:
        warm_s = best_time(ours, repeats)
        rows.append(
            ratio_row(
                f"pg.train {label}, warm",
                warm_s,
                "sklearn lbfgs",
                sklearn_s,
                0.4,
                setup_s=fitted["ours"].setup_s,
            )
        )
        rows.append(_placement_row(X, y, *_local_placing(X, y)))
    release_kept_engine()
    return rows


def _peers(X: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The installed tools a user picks for speed, each fitting unpenalised logistic
    regression: scikit-learn-intelex (Intel's oneDAL) and glum."""
    found: dict[str, Callable[[], Any]] = {}
    if importlib.util.find_spec("sklearnex") is not None:
        from sklearnex.linear_model import LogisticRegression as IntelLogistic

        found["sklearnex"] = lambda: IntelLogistic(penalty=None, max_iter=1000).fit(X, y)
    if importlib.util.find_spec("glum") is not None:
        from glum import GeneralizedLinearRegressor

        found["glum"] = lambda: GeneralizedLinearRegressor(family="binomial", alpha=0).fit(X, y)
    return found


def _keep(fit: Callable[[], Any], fitted: dict[str, Any]) -> None:
    with warnings.catch_warnings():  # scikit-learn 1.8 deprecates the penalty=None it passes on
        warnings.simplefilter("ignore", FutureWarning)
        fitted["model"] = fit()


def _peer_rows(
    label: str, X: np.ndarray, y: np.ndarray, ours_s: float, ours_loss: float, repeats: int
) -> list[Row]:
    """The cold call against each installed peer, and against the fastest of them (<= 0.8x)."""
    times: dict[str, float] = {}
    rows = []
    for name, fit in _peers(X, y).items():
        fitted: dict[str, Any] = {}
        times[name] = best_time(functools.partial(_keep, fit, fitted), repeats)
        model = fitted["model"]
        coef, intercept = np.ravel(model.coef_), float(np.ravel(model.intercept_)[0])
        gap = ours_loss - _logistic_loss(X, y, coef, intercept)
        rows.append(
            ratio_row(f"pg.train {label}, cold", ours_s, name, times[name], 1.0, loss_minus_baseline=gap)
        )
    if times:
        fastest = min(times, key=times.__getitem__)
        rows.append(ratio_row(f"pg.train {label}, cold, fastest peer", ours_s, fastest, times[fastest], 0.8))
    return rows


def _local_placing(X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The local engine's placing of the data, cold (workers started afresh) and warm (the
    kept engine's pages reused), as its runs report it; whatever engine="auto" chose."""
    release_kept_engine()
    placing = []
    for _ in range(2):
        run = train(LogisticRegression(), Dataset(X, y), engine="local", max_rounds=1, tol=0)
        placing.append(run.setup_parts["placing data"])
    return placing[0], placing[1]


def _placement_row(X: np.ndarray, y: np.ndarray, cold_s: float, warm_s: float) -> Row:
    """Placing the arrays for the workers, cold (fresh shared pages) and warm (the pages
    of the data placed before), against a copy at the memory's speed (numpy into memory
    already written); and letting the kept engine go, against the cold placement."""
    target = np.empty_like(X)
    target[...] = X  # its pages faulted in: what is left is the copy itself
    copy_s = best_time(lambda: np.copyto(target, X), 3) * (X.nbytes + y.nbytes) / X.nbytes

    release_s = best_time(release_kept_engine, 1)
    return ratio_row(
        f"placing {X.nbytes + y.nbytes:.1e} bytes, warm",
        warm_s,
        "memory copy",
        copy_s,
        1.0,
        cold_s=cold_s,
        cold_ratio=cold_s / copy_s,
        release_s=release_s,
        release_over_cold_placement=release_s / cold_s,
    )


def _cross_validation_row(num_rows: int, repeats: int) -> Row:
    """``cross_val_score`` with 5 folds: ParagradClassifier(workers=2) against scikit-learn."""
    from sklearn.linear_model import LogisticRegression as SklearnLogistic
    from sklearn.model_selection import cross_val_score
    from threadpoolctl import threadpool_limits

    from paragrad.sklearn import ParagradClassifier

    data = make_classification(num_rows, 100, seed=1)
    X, y = data.X, data.y
    scores: dict[str, float] = {}

    def score(name: str, estimator: Any) -> Callable[[], None]:
        return lambda: scores.__setitem__(name, float(cross_val_score(estimator, X, y, cv=5).mean()))

    def one_thread() -> None:
        with threadpool_limits(1):
            score("sklearn", SklearnLogistic())()

    steps = {
        "sklearn": score("sklearn", SklearnLogistic()),
        "sklearn_one_thread": one_thread,
        "ours": score("ours", ParagradClassifier(workers=2)),
    }
    best = interleaved_best(steps, repeats, before=release_kept_engine)  # each of ours cold
    sklearn_s, ours_s = best["sklearn"], best["ours"]
    release_kept_engine()
    # scikit-learn as it runs by default (BLAS and OpenMP on every core) is the target's
    # baseline; on one thread it can be faster (mid-sized data on few cores): shown beside.
    return ratio_row(
        f"cross_val_score 5 folds, {num_rows:.0e} x 100",
        ours_s,
        "LogisticRegression",
        sklearn_s,
        1.0,
        accuracy_points=100 * (scores["ours"] - scores["sklearn"]),
        one_thread_baseline_s=best["sklearn_one_thread"],
        ratio_to_one_thread=ours_s / best["sklearn_one_thread"],
    )


def _mlp_rows(num_rows: int, repeats: int) -> list[Row]:
    """A 100-128-2 MLP, 3 epochs of global batches of 2048 with Adam, where the default engine
    sends it (Torch and the numpy MLP), against a plain PyTorch loop with all cores."""
    if importlib.util.find_spec("torch") is None:
        return [{"benchmark": "e2e", "row": "mlp", "skipped": "torch is not installed"}]
    import torch

    from paragrad.models.torch_module import TorchClassifier

    data = make_classification(num_rows, 100, seed=3, dtype=np.float32)
    X, y = data.X, data.y
    accuracy: dict[str, float] = {}

    def plain_torch() -> None:
        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(100, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        features, labels = torch.from_numpy(X), torch.from_numpy(y).long()
        for _ in range(3):
            for batch in torch.randperm(num_rows).split(2048):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(net(features[batch]), labels[batch]).backward()
                optimizer.step()
        with torch.no_grad():
            accuracy["torch"] = float((net(features).argmax(1) == labels).float().mean())

    def ours(make: Callable[[], Any], name: str) -> Callable[[], None]:
        def step() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                run = train(make(), data, strategy=SGD(2048), optimizer=Adam(lr=0.01), epochs=3, tol=0)
            accuracy[name] = float(np.mean(run.model.predict(X) == y))

        return step

    def torch_model() -> Any:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(100, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
        return TorchClassifier(net)

    plain_times, times = [best_time(plain_torch, 1)], {}
    for name, make in (("pg_torch", torch_model), ("pg_mlp", lambda: MLP(hidden=(128,)))):
        release_kept_engine()  # cold: the workers start (and import torch) within the call
        times[name] = [best_time(ours(make, name), 1)]
        for _ in range(repeats):  # warm, taking turns with the plain loop
            plain_times.append(best_time(plain_torch, 1))
            times[name].append(best_time(ours(make, name), 1))
    release_kept_engine()
    torch_s = min(plain_times)
    points = {name: 100 * (accuracy[name] - accuracy["torch"]) for name in ("pg_torch", "pg_mlp")}
    label = f"MLP 100-128-2, {num_rows:.0e} x 100, 3 epochs"
    rows = []
    targets = {"pg_torch": {"cold": 1.5, "warm": 1.0}, "pg_mlp": {"cold": 1.0, "warm": 1.0}}
    for name, title in (("pg_torch", "pg.models.Torch"), ("pg_mlp", "pg.models.MLP")):
        cold, *warm = times[name]
        for kind, seconds in (("cold", cold), ("warm", min(warm))):
            target = targets[name][kind]
            rows.append(
                ratio_row(
                    f"{title} {label}, {kind}",
                    seconds,
                    "plain PyTorch loop",
                    torch_s,
                    target,
                    accuracy_points=points[name],
                )
            )
    return rows


def _process_seconds(command: list[str]) -> tuple[float, str, float]:
    """Wall time of a process as a user starts it from a shell, its output, and the peak
    memory (RSS, bytes) of the largest process it ran (itself, for a coordinator)."""
    measured = [sys.executable, "-c", PEAK_OF_CHILD, *command]
    start = time.perf_counter()
    done = subprocess.run(measured, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed: {done.stderr.strip()[-500:]}")
    *output, peak = done.stdout.rstrip("\n").split("\n")
    return seconds, "\n".join(output), float(peak) * 1024


PEAK_OF_CHILD = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


PANDAS_SKLEARN = """
import sys
import pandas as pd
from sklearn.linear_model import LogisticRegression
frame = pd.read_csv(sys.argv[1])
LogisticRegression(solver="lbfgs").fit(frame.drop(columns="y").to_numpy(), frame["y"].to_numpy())
"""


def _csv_row(num_rows: int, repeats: int, folder: Path, num_features: int = 100) -> Row:
    """``paragrad train data.csv --target y`` as a process against a script reading the CSV
    with pandas and fitting scikit-learn; on small data, what a fresh process costs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if importlib.util.find_spec("pandas") is None:
        return {"benchmark": "e2e", "row": "paragrad train data.csv", "skipped": "pandas is not installed"}
    data = make_classification(num_rows, num_features, seed=4)
    path, out = folder / "data.csv", folder / "model.npz"
    columns = {name: data.X[:, j] for j, name in enumerate(data.feature_names or [])}
    pacsv.write_csv(pa.table({**columns, "y": targets(data).astype(np.int64)}), path)
    del data, columns
    ours_command = [sys.executable, "-m", "paragrad", "train", str(path), "--target", "y", "--out", str(out)]
    baseline_command = [sys.executable, "-c", PANDAS_SKLEARN, str(path)]
    ours = [_process_seconds(ours_command) for _ in range(repeats)]
    baseline = [_process_seconds(baseline_command) for _ in range(repeats)]
    data_bytes = num_rows * (num_features + 1) * 8  # the features and labels in memory, as float64
    memory = {
        "peak_over_data": max(peak for *_, peak in ours) / data_bytes,
        "peak_target": 1.5,
        "baseline_peak_over_data": max(peak for *_, peak in baseline) / data_bytes,
    }
    return ratio_row(
        f"paragrad train data.csv, {num_rows:.0e} x {num_features}"
        if num_rows >= 10_000
        else f"paragrad train data.csv, {num_rows} x {num_features}, a fresh process",
        min(seconds for seconds, *_ in ours),
        "pandas + sklearn script",
        min(seconds for seconds, *_ in baseline),
        0.6 if num_rows >= 10_000 else 1.0,
        csv_mb=path.stat().st_size / 1e6,
        **(memory if data_bytes >= 10**8 else {}),  # a small file's peak is the interpreter's
    )


MMAP_TRAIN = """
import resource, sys, time
import numpy as np
import paragrad as pg
start = time.perf_counter()
data = pg.Dataset(np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2]), dtype=None)
run = pg.train(pg.models.LogisticRegression(), data)
whole = time.perf_counter() - start
rounds = sum(record["wall_s"] for record in run.history)
print(whole, rounds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _mmap_rows(sizes: list[int], folder: Path) -> list[Row]:
    """A whole call on a memory-mapped float32 ``.npy`` as the rows grow: its time against
    the rounds plus one read of the file, and the coordinator's peak memory."""
    rows, previous = [], None
    rng = np.random.default_rng(6)
    for num_rows in sizes:
        x_path, y_path = folder / f"X{num_rows}.npy", folder / f"y{num_rows}.npy"
        write_features(x_path, num_rows, 100, rng, dtype=np.float32, chunk=500_000)
        np.save(y_path, (rng.random(num_rows) < 0.5).astype(np.float32))
        read_s = best_time(functools.partial(_read_once, x_path), 1)
        output = _process_seconds([sys.executable, "-c", MMAP_TRAIN, str(x_path), str(y_path)])[1]
        whole_s, rounds_s, peak = (float(value) for value in output.split()[-3:])  # peak: its own
        rows.append(
            ratio_row(
                f"mmap float32 .npy {num_rows:.0e} x 100, whole call",
                whole_s,
                "rounds + one read of the file",
                rounds_s + read_s,
                1.5,
                coordinator_peak_gb=peak / 1e9,
                peak_target_gb=1.0,
                growth_vs_previous=None if previous is None else whole_s / previous,
            )
        )
        previous = whole_s
        x_path.unlink()
    return rows


def _read_once(path: Path) -> float:
    """Read a ``.npy`` once through a mapping, one thread a core each on its part, with the
    cheapest pass numpy has (a maximum): the floor of any pass over the file."""
    mapped = np.load(path, mmap_mode="r")
    edges = np.linspace(0, len(mapped), default_workers() + 1).astype(np.intp).tolist()

    def part(index: int) -> float:
        return max(
            float(mapped[start : min(start + 500_000, edges[index + 1])].max())
            for start in range(edges[index], edges[index + 1], 500_000)
        )

    with ThreadPoolExecutor(len(edges) - 1) as pool:
        return max(pool.map(part, range(len(edges) - 1)))


def _predict_row(num_rows: int, folder: Path, repeats: int) -> list[Row]:
    """``predict_to_file`` of a float32 ``.npy`` to a ``.npy`` (the engine kept between
    calls) against single-process numpy, and against one read of the file."""
    d, rng = 100, np.random.default_rng(2)
    model = LogisticRegression()
    model.setup(d, np.array([0.0, 1.0]))
    model.params_ = rng.standard_normal(d + 1) * 0.1
    path = folder / "P.npy"
    write_features(path, num_rows, d, rng, dtype=np.float32, chunk=500_000)

    weights, intercept = model.params_[:d].astype(np.float32), np.float32(model.params_[d])

    def numpy_predict() -> None:  # as a user writes it: the file mapped, a block at a time
        mapped = np.load(path, mmap_mode="r")
        out = np.empty(num_rows, dtype=np.float64)
        for start in range(0, num_rows, 500_000):
            out[start : start + 500_000] = mapped[start : start + 500_000] @ weights + intercept > 0
        with atomic_write(folder / "numpy.npy") as handle:  # as durable as ours (fsync, rename)
            np.save(handle, out)

    def ours() -> None:
        predict_to_file(model, path, folder / "ours.npy", progress=False, workers=2)

    steps = {"numpy": numpy_predict, "ours": ours, "read": lambda: _read_once(path)}
    best = interleaved_best(steps, repeats, warmup=1)  # the same page cache for all; the first warms it
    release_kept_engine()
    # Labels agree but where a score is within round-off of 0 (BLAS sums in another order).
    differ = int(np.sum(np.load(folder / "ours.npy") != np.load(folder / "numpy.npy")))
    path.unlink()
    label = f"predict {num_rows:.0e} x 100 float32 .npy to .npy"
    return [
        ratio_row(label, best["ours"], "single-process numpy", best["numpy"], 1.0, labels_differing=differ),
        ratio_row(label, best["ours"], "one read of the file", best["read"], 1.3),
    ]


def bench_e2e(quick: bool) -> list[Row]:
    """Every row of the end-to-end table; ``quick`` runs smaller sizes once."""
    if importlib.util.find_spec("sklearn") is None:
        return [{"benchmark": "e2e", "skipped": "scikit-learn, the baseline, is not installed"}]
    repeats = 1 if quick else 3
    rows = _logistic_rows(200_000 if quick else 1_000_000, repeats, warm=True)
    if not quick:
        rows += _logistic_rows(200_000, repeats, warm=False)
    rows.append(fresh_process_row(200_000 if quick else 1_000_000, repeats))
    rows.append(_cross_validation_row(50_000 if quick else 200_000, repeats))
    rows += _mlp_rows(50_000 if quick else 200_000, repeats)
    rows += small_rows(repeats) + grid_search_rows(repeats)
    rows.append(checkpoint_row(200_000 if quick else 1_000_000, repeats))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        rows.append(_csv_row(100_000 if quick else 1_000_000, repeats, folder))
        rows.append(_csv_row(500, repeats, folder, num_features=5))
        rows += _predict_row(1_000_000 if quick else 10_000_000, folder, repeats)
        rows += _mmap_rows([100_000, 1_000_000] if quick else [1_000_000, 10_000_000, 30_000_000], folder)
    return rows
