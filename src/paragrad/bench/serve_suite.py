"""The ``serve`` suite: ``paragrad serve`` under closed-loop load, beside its baselines.

The same requests go to servers running side by side, one cell at a time, so that each
figure is measured next to its baselines:

- paragrad's server with its default batching (``--max-batch 256 --max-wait-ms 2``);
- (a) the HTTP floor: the same stack (uvicorn, uvloop, httptools, Starlette) answering a
  constant, which no model server on it can beat;
- (b) a hand-written FastAPI service calling scikit-learn's ``predict`` and
  ``predict_proba`` per request, with a ``def`` handler (FastAPI's advice for blocking
  calls) and, in the full run, also with an ``async def`` one; each figure of (b) is the
  better of the two (see :mod:`paragrad.bench.serve_baselines`);
- (c) MLServer, when installed (see :mod:`paragrad.bench.serve_mlserver`), serving the
  same model files through a small runtime that predicts as paragrad does (answers
  checked equal): with its defaults (one inference worker process, no adaptive batching)
  and, in the full run, also predicting in its server process, without and with adaptive
  batching set as paragrad's (256 rows, 2 ms); each figure of (c) is the best of them.
  The targets: paragrad at 3x its requests/s for 1-row requests and 1.5x for 100-row
  ones, at every client count.

Both models (logistic regression on 100 features, an MLP 100-128-10) are fitted by
scikit-learn, and paragrad's carry the same parameters, so that both services answer
alike (checked). Requests hold 1 row or 100; 1, 8 or 64 clients send them, each as soon
as its previous answer is in (:mod:`paragrad.bench.serve_load`, a process of its own).
The average batch of paragrad's server comes from its ``/metrics``.

Then 100-row requests to paragrad's server as JSON and as Triton's binary tensors (what
Triton's clients send by default), at 1, 8 and 64 clients; the target is binary at twice
JSON's requests/s. Last, one large MLP request at a time, predicted in the server process (``--workers 1``)
or split across 2 local engine workers (``--workers 2 --split-rows 1``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench.common import Row
from paragrad.bench.serve_load import Load, LoadGenerator
from paragrad.bench.serve_mlserver import VARIANTS, mlserver_executable, mlserver_running, mlserver_version
from paragrad.bench.serve_report import (
    MODELS,
    TARGET_BINARY,
    Cells,
    cell_rows,
    mlserver_rows,
    ratio,
    table,
    target_rows,
    verdict,
)
from paragrad.bench.serve_servers import (
    baseline_command,
    batch_totals,
    paragrad_command,
    predicted,
    running,
)
from paragrad.data import make_classification
from paragrad.models import MLP, LogisticRegression

FEATURES = 100


@dataclass(frozen=True)
class Plan:
    """What the matrix and the binary tensors measure, and for how long each cell."""

    models: tuple[str, ...] = MODELS
    features: int = FEATURES
    request_rows: tuple[int, ...] = (1, 100)
    clients: tuple[int, ...] = (1, 8, 64)
    warmup_s: float = 0.5
    measure_s: float = 2.5

    def load(self, port: int, model: str, rows: int, clients: int, binary: bool = False) -> Load:
        """One cell's load: its clients send requests of ``rows`` rows for this plan's time."""
        timing = (self.warmup_s, self.measure_s, 100_000)
        return Load(port, model, rows, self.features, clients, *timing, binary=binary)


FULL, QUICK = Plan(), Plan(warmup_s=0.2, measure_s=0.6)


def _fitted_models(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Each model's paragrad file and scikit-learn pickle, fitted once on the same data."""
    from sklearn.linear_model import LogisticRegression as SkLogistic
    from sklearn.neural_network import MLPClassifier as SkMLP

    binary = make_classification(2000, FEATURES, seed=11)
    tenfold = make_classification(2000, FEATURES, num_classes=10, seed=12)
    assert binary.y is not None and tenfold.y is not None
    binary_y, tenfold_y = binary.y.astype(np.int64), tenfold.y.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP stops before converging: its speed is what counts
        logistic = SkLogistic(max_iter=200).fit(binary.X, binary_y)
        mlp = SkMLP(hidden_layer_sizes=(128,), max_iter=20, random_state=0).fit(tenfold.X, tenfold_y)
    ours_logistic = LogisticRegression()
    ours_logistic.setup(FEATURES, np.unique(binary_y))
    ours_logistic.params_ = np.concatenate([logistic.coef_.ravel(), logistic.intercept_])
    ours_mlp = MLP(hidden=(128,))
    ours_mlp.setup(FEATURES, np.unique(tenfold_y))
    layers = zip(mlp.coefs_, mlp.intercepts_, strict=True)
    ours_mlp.params_ = np.concatenate([part for W, b in layers for part in (W.ravel(), b)])
    files = {}
    for name, ours, theirs in (("logistic", ours_logistic, logistic), ("mlp", ours_mlp, mlp)):
        ours.save(folder / f"{name}.pgm")
        with open(folder / f"{name}.pkl", "wb") as handle:
            pickle.dump(theirs, handle)
        files[name] = (folder / f"{name}.pgm", folder / f"{name}.pkl")
    return files


def start_servers(
    stack: contextlib.ExitStack, ours: dict[str, Path], theirs: dict[str, Path], folder: Path, quick: bool
) -> tuple[dict[str, int], str]:
    """paragrad's server and every baseline there is, each stopped when ``stack`` closes:
    their ports by name, and which MLServer ran (or why none did)."""
    commands = {"floor": baseline_command("floor", {}), "paragrad": paragrad_command(ours)}
    if theirs and importlib.util.find_spec("fastapi") is not None:  # looked up: baseline (b) needs it
        commands["fastapi"] = baseline_command("fastapi", theirs)
        if not quick:
            commands["fastapi_async"] = baseline_command("fastapi-async", theirs)
    ports = {name: stack.enter_context(running(command)) for name, command in commands.items()}
    executable, mlserver = mlserver_executable()
    if executable is not None:
        mlserver = f"MLServer {mlserver_version(executable)} ({mlserver})"
        for name, variant in list(VARIANTS.items())[: 1 if quick else None]:  # quick: the defaults
            ports[name] = stack.enter_context(mlserver_running(executable, ours, folder / name, variant))
    return ports, mlserver


def same_answers(ports: dict[str, int], plan: Plan) -> dict[str, dict[str, bool | None]]:
    """Per model, whether FastAPI's labels and MLServer's whole answers (labels and
    probabilities, both variants) equal paragrad's for 50 rows; None without the server."""
    checks: dict[str, dict[str, bool | None]] = {}
    for model in plan.models:
        ours = predicted(ports["paragrad"], model, 50, plan.features)
        theirs = {
            name: predicted(port, model, 50, plan.features)
            for name, port in ports.items()
            if name not in ("floor", "paragrad")
        }
        mlservers = [answer == ours for name, answer in theirs.items() if name.startswith("mlserver")]
        checks[model] = {
            "fastapi": theirs["fastapi"]["predict"] == ours["predict"] if "fastapi" in theirs else None,
            "mlserver": all(mlservers) if mlservers else None,
        }
    return checks


def matrix(generator: LoadGenerator, ports: dict[str, int], plan: Plan) -> Cells:
    """Every cell's figures; the floor's model is '-'. The cells of one request size and
    concurrency run one after the other, so that each is measured beside its baselines."""
    cells: Cells = {}
    for rows in plan.request_rows:
        for clients in plan.clients:
            for server in ports:
                for model in ("-",) if server == "floor" else plan.models:
                    load = plan.load(ports[server], model, rows, clients)
                    if server != "paragrad":
                        cells[server, model, rows, clients] = generator.run(load)
                        continue
                    before = batch_totals(ports[server], model)
                    result = generator.run(load)
                    after = batch_totals(ports[server], model)
                    batches = after[1] - before[1]
                    result["avg_batch_rows"] = (after[0] - before[0]) / batches if batches else None
                    cells[server, model, rows, clients] = result
    return cells


def binary_rows(generator: LoadGenerator, port: int, plan: Plan) -> list[Row]:
    """100-row requests to paragrad's server, as JSON and as binary tensors, side by side."""
    rows = []
    for model in plan.models:
        for clients in plan.clients:
            figures = {
                binary: generator.run(plan.load(port, model, 100, clients, binary=binary))
                for binary in (False, True)
            }
            speedup = ratio(figures[True]["requests_per_s"], figures[False]["requests_per_s"])
            rows.append(
                {
                    "benchmark": "serve_binary",
                    "model": model,
                    "request_rows": 100,
                    "concurrency": clients,
                    "requests": figures[False]["requests"] + figures[True]["requests"],
                    "json_requests_per_s": figures[False]["requests_per_s"],
                    "json_p50_ms": figures[False]["p50_ms"],
                    "json_p99_ms": figures[False]["p99_ms"],
                    "binary_requests_per_s": figures[True]["requests_per_s"],
                    "binary_p50_ms": figures[True]["p50_ms"],
                    "binary_p99_ms": figures[True]["p99_ms"],
                    "speedup_binary": speedup,
                    "binary_target": TARGET_BINARY,
                    "binary_verdict": verdict(None if speedup is None else speedup >= TARGET_BINARY),
                    "errors": figures[False]["errors"] + figures[True]["errors"],
                }
            )
    return rows


def _split(generator: LoadGenerator, mlp: Path, quick: bool) -> list[Row]:
    """One large MLP request at a time, in the server process and across 2 workers."""
    sizes = (20_000,) if quick else (20_000, 100_000)
    figures: dict[tuple[int, int], dict[str, Any]] = {}
    for workers in (1, 2):
        options = ["--workers", str(workers), "--max-body-mb", "1024"]
        options += ["--split-rows", "1"] if workers > 1 else []
        with running(paragrad_command({"mlp": mlp}, *options)) as port:
            for rows in sizes:
                measure_s, max_requests = (3.0, 3) if quick else (10.0, 10)
                load = Load(port, "mlp", rows, FEATURES, 1, 0.0, measure_s, max_requests, stall_s=300.0)
                figures[workers, rows] = generator.run(load)
    split = []
    for rows in sizes:
        one, two = figures[1, rows], figures[2, rows]
        split.append(
            {
                "benchmark": "serve_split",
                "model": "mlp",
                "request_rows": rows,
                "concurrency": 1,
                "requests": one["requests"] + two["requests"],
                "in_server_requests_per_s": one["requests_per_s"],
                "in_server_p50_ms": one["p50_ms"],
                "workers2_requests_per_s": two["requests_per_s"],
                "workers2_p50_ms": two["p50_ms"],
                "speedup_workers2": ratio(two["requests_per_s"], one["requests_per_s"]),
                "errors": one["errors"] + two["errors"],
            }
        )
    return split


def bench_serve(quick: bool) -> list[Row]:
    """paragrad serve against the HTTP floor, FastAPI + scikit-learn and MLServer, then
    large requests."""
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as folder, LoadGenerator() as generator:
        files = _fitted_models(Path(folder))
        ours = {name: pair[0] for name, pair in files.items()}
        theirs = {name: pair[1] for name, pair in files.items()}
        with contextlib.ExitStack() as servers:
            ports, mlserver = start_servers(servers, ours, theirs, Path(folder), quick)
            same = same_answers(ports, plan)
            cells = matrix(generator, ports, plan)
            binary = binary_rows(generator, ports["paragrad"], plan)
        split = _split(generator, ours["mlp"], quick)
    rows = cell_rows(cells, mlserver)
    targets = target_rows(rows, {model: checks["fastapi"] for model, checks in same.items()})
    versus_mlserver = mlserver_rows(rows, {model: checks["mlserver"] for model, checks in same.items()})
    print(table(cells, split, targets, binary, versus_mlserver), flush=True)
    return [*rows, *targets, *versus_mlserver, *binary, *split]
