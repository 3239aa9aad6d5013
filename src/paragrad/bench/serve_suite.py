"""The ``serve`` suite: ``paragrad serve`` under closed-loop load, beside its baselines.

The same requests go to servers running side by side, one cell at a time, so that each
figure is measured next to its baselines:

- paragrad's server with its default batching (``--max-batch 256 --max-wait-ms 2``);
- (a) the HTTP floor: the same stack (uvicorn, uvloop, httptools, Starlette) answering a
  constant, which no model server on it can beat;
- (b) a hand-written FastAPI service calling scikit-learn's ``predict`` and
  ``predict_proba`` per request, with a ``def`` handler (FastAPI's advice for blocking
  calls) and, in the full run, also with an ``async def`` one; each figure of (b) is the
  better of the two (see :mod:`paragrad.bench.serve_baselines`).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench.common import Row
from paragrad.bench.serve_load import Load, LoadGenerator
from paragrad.bench.serve_servers import (
    baseline_command,
    batch_totals,
    paragrad_command,
    predicted_labels,
    running,
)
from paragrad.data import make_classification
from paragrad.models import MLP, LogisticRegression

FEATURES = 100
MODELS = ("logistic", "mlp")
MAX_WAIT_MS = 2.0  # paragrad serve's default, which the p50 target allows over the baseline's
TARGET_SPEEDUP = 2.0  # over (b), 1-row requests, 64 clients
TARGET_FRACTION_OF_FLOOR = 0.7
TARGET_BINARY = 2.0  # binary tensors over JSON, 100-row requests
Cells = dict[tuple[str, str, int, int], dict[str, Any]]  # (server, model, rows, clients) -> figures


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


def _matrix(generator: LoadGenerator, ports: dict[str, int], quick: bool) -> Cells:
    """Every cell's figures; the floor's model is '-'. The cells of one request size and
    concurrency run one after the other, so that each is measured beside its baselines."""
    cells: Cells = {}
    warmup_s, measure_s = (0.2, 0.6) if quick else (0.5, 2.5)
    for rows in (1, 100):
        for clients in (1, 8, 64):
            for server in ports:
                for model in ("-",) if server == "floor" else MODELS:
                    load = Load(ports[server], model, rows, FEATURES, clients, warmup_s, measure_s, 100_000)
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


def _binary(generator: LoadGenerator, port: int, quick: bool) -> list[Row]:
    """100-row requests to paragrad's server, as JSON and as binary tensors, side by side."""
    warmup_s, measure_s = (0.2, 0.6) if quick else (0.5, 2.5)
    rows = []
    for model in MODELS:
        for clients in (1, 8, 64):
            figures = {
                binary: generator.run(
                    Load(port, model, 100, FEATURES, clients, warmup_s, measure_s, 100_000, binary=binary)
                )
                for binary in (False, True)
            }
            speedup = _ratio(figures[True]["requests_per_s"], figures[False]["requests_per_s"])
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
                    "binary_verdict": _verdict(None if speedup is None else speedup >= TARGET_BINARY),
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
                "speedup_workers2": _ratio(two["requests_per_s"], one["requests_per_s"]),
                "errors": one["errors"] + two["errors"],
            }
        )
    return split


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _best(cells: Cells, model: str, rows: int, clients: int) -> dict[str, Any]:
    """Baseline (b) in one cell: the better of the FastAPI variants measured, figure by
    figure (all None when FastAPI is not installed)."""
    keys = [(server, model, rows, clients) for server in ("fastapi", "fastapi_async")]
    variants = [cells[key] for key in keys if key in cells]
    p50s = [v["p50_ms"] for v in variants if v["p50_ms"] is not None]
    p99s = [v["p99_ms"] for v in variants if v["p99_ms"] is not None]
    return {
        "requests_per_s": max((v["requests_per_s"] for v in variants), default=None),
        "p50_ms": min(p50s, default=None),
        "p99_ms": min(p99s, default=None),
        "errors": sum(v["errors"] for v in variants),
    }


def _cell_rows(cells: Cells) -> list[Row]:
    """One row per model, request size and concurrency: paragrad beside both baselines."""
    rows = []
    for (server, model, request_rows, clients), ours in cells.items():
        if server != "paragrad":
            continue
        floor, fastapi = (
            cells["floor", "-", request_rows, clients],
            _best(cells, model, request_rows, clients),
        )
        rows.append(
            {
                "benchmark": "serve",
                "model": model,
                "request_rows": request_rows,
                "concurrency": clients,
                "requests": ours["requests"],
                "requests_per_s": ours["requests_per_s"],
                "p50_ms": ours["p50_ms"],
                "p99_ms": ours["p99_ms"],
                "avg_batch_rows": ours["avg_batch_rows"],
                "floor_requests_per_s": floor["requests_per_s"],
                "floor_p50_ms": floor["p50_ms"],
                "floor_p99_ms": floor["p99_ms"],
                "fastapi_requests_per_s": fastapi["requests_per_s"],
                "fastapi_p50_ms": fastapi["p50_ms"],
                "fastapi_p99_ms": fastapi["p99_ms"],
                "speedup_over_fastapi": _ratio(ours["requests_per_s"], fastapi["requests_per_s"]),
                "fraction_of_floor": _ratio(ours["requests_per_s"], floor["requests_per_s"]),
                "errors": ours["errors"] + floor["errors"] + fastapi["errors"],
            }
        )
    return rows


def _verdict(flag: bool | None) -> str:
    return "n/a" if flag is None else "met" if flag else "not met"


def _target_rows(rows: list[Row], same_labels: dict[str, bool | None]) -> list[Row]:
    """The targets for 1-row requests, for each model, each with its verdict."""
    targets = []
    for model in MODELS:
        cell = {row["concurrency"]: row for row in rows if row["model"] == model and row["request_rows"] == 1}
        busy, alone = cell[64], cell[1]
        speedup, floor = busy["speedup_over_fastapi"], busy["fraction_of_floor"]
        p99, p99_limit = busy["p99_ms"], busy["fastapi_p99_ms"]
        p50, p50_limit = alone["p50_ms"], alone["fastapi_p50_ms"]
        p50_limit = None if p50_limit is None else p50_limit + MAX_WAIT_MS
        targets.append(
            {
                "benchmark": "serve_targets",
                "model": model,
                "request_rows": 1,
                "same_labels_as_sklearn": same_labels[model],
                "speedup_c64": speedup,
                "speedup_target": TARGET_SPEEDUP,
                "speedup_verdict": _verdict(None if speedup is None else speedup >= TARGET_SPEEDUP),
                "fraction_of_floor_c64": floor,
                "floor_target": TARGET_FRACTION_OF_FLOOR,
                "floor_verdict": _verdict(None if floor is None else floor >= TARGET_FRACTION_OF_FLOOR),
                "p99_ms_c64": p99,
                "p99_limit_ms_c64": p99_limit,
                "p99_verdict": _verdict(None if p99 is None or p99_limit is None else p99 <= p99_limit),
                "p50_ms_c1": p50,
                "p50_limit_ms_c1": p50_limit,
                "p50_verdict": _verdict(None if p50 is None or p50_limit is None else p50 <= p50_limit),
            }
        )
    return targets


def _shown(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def table(cells: Cells, split: list[Row], targets: list[Row], binary: Sequence[Row] = ()) -> str:
    """The figures as a compact text table: every cell, the large requests, the verdicts."""
    lines = [f"{'server':<14}{'model':<10}{'rows':>5}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'batch':>7}{'errors':>7}"]  # fmt: skip
    for (server, model, rows, clients), cell in cells.items():
        lines.append(
            f"{server:<14}{model:<10}{rows:>5}{clients:>6}{cell['requests_per_s']:>9.0f}"
            f"{_shown(cell['p50_ms']):>9}{_shown(cell['p99_ms']):>9}"
            f"{_shown(cell.get('avg_batch_rows')):>7}{cell['errors']:>7}"
        )
    for row in binary:
        lines.append(
            f"{row['model']}, 100-row requests, {row['concurrency']} clients: binary tensors "
            f"{_shown(row['binary_requests_per_s'])} req/s (p50 {_shown(row['binary_p50_ms'])} ms), "
            f"JSON {_shown(row['json_requests_per_s'])} req/s (p50 {_shown(row['json_p50_ms'])} ms): "
            f"{_shown(row['speedup_binary'])}x [>= {row['binary_target']:g}: {row['binary_verdict']}]"
        )
    for row in split:
        lines.append(
            f"mlp, one request of {row['request_rows']} rows at a time: "
            f"in the server process {_shown(row['in_server_requests_per_s'])} req/s "
            f"(p50 {_shown(row['in_server_p50_ms'], 4)} ms); on 2 workers "
            f"{_shown(row['workers2_requests_per_s'])} req/s (p50 {_shown(row['workers2_p50_ms'], 4)} ms)"
        )
    for row in targets:
        lines.append(
            f"targets, {row['model']}, 1-row requests: at 64 clients "
            f"{_shown(row['speedup_c64'])}x (b) [>= {row['speedup_target']:g}: {row['speedup_verdict']}], "
            f"{_shown(row['fraction_of_floor_c64'])}x the floor "
            f"[>= {row['floor_target']:g}: {row['floor_verdict']}], "
            f"p99 {_shown(row['p99_ms_c64'])} ms "
            f"[<= (b)'s {_shown(row['p99_limit_ms_c64'])}: {row['p99_verdict']}]; "
            f"at 1 client p50 {_shown(row['p50_ms_c1'])} ms "
            f"[<= (b)'s + {MAX_WAIT_MS:g} = {_shown(row['p50_limit_ms_c1'])}: {row['p50_verdict']}]"
        )
    return "\n".join(lines)


def bench_serve(quick: bool) -> list[Row]:
    """paragrad serve against the HTTP floor and FastAPI + scikit-learn, then large requests."""
    with tempfile.TemporaryDirectory() as folder, LoadGenerator() as generator:
        files = _fitted_models(Path(folder))
        ours = {name: pair[0] for name, pair in files.items()}
        theirs = {name: pair[1] for name, pair in files.items()}
        commands = {"floor": baseline_command("floor", {}), "paragrad": paragrad_command(ours)}
        if importlib.util.find_spec("fastapi") is not None:  # looked up: baseline (b) needs it
            commands["fastapi"] = baseline_command("fastapi", theirs)
            if not quick:
                commands["fastapi_async"] = baseline_command("fastapi-async", theirs)
        with contextlib.ExitStack() as servers:
            ports = {name: servers.enter_context(running(command)) for name, command in commands.items()}
            same_labels = {
                model: predicted_labels(ports["paragrad"], model, 50, FEATURES)
                == predicted_labels(ports["fastapi"], model, 50, FEATURES)
                if "fastapi" in ports
                else None
                for model in MODELS
            }
            cells = _matrix(generator, ports, quick)
            binary = _binary(generator, ports["paragrad"], quick)
        split = _split(generator, ours["mlp"], quick)
    rows = _cell_rows(cells)
    targets = _target_rows(rows, same_labels)
    print(table(cells, split, targets, binary), flush=True)
    return [*rows, *targets, *binary, *split]
