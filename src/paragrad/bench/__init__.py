"""Benchmarks behind ``paragrad bench``: each figure beside a baseline measured in the same run.

Suites, each in a module of this package (shared helpers in :mod:`paragrad.bench.common`):

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
- ``solvers``: time to a target loss on logistic regression, against scikit-learn.
- ``float32``: a full-batch step and the final loss in float32 against float64.
- ``predict``: streaming predict of a ``.npy`` on 2 workers against numpy.
- ``communication``: bytes and wall time to a target loss, plain and compressed.
- ``torch``: epoch time of a torch model against DistributedDataParallel.
- ``ray``: the Ray engine against the local engine (see :mod:`paragrad.bench.ray_suite`).
- ``elastic``: ``workers="auto"`` against every fixed worker count, and the cost of a
  change of the workers against a round (see :mod:`paragrad.bench.elastic_suite`).
- ``serve``: ``paragrad serve`` under closed-loop HTTP load (1, 8 and 64 clients, requests
  of 1 and 100 rows, logistic regression and an MLP) against the same HTTP stack answering
  a constant, a FastAPI service calling scikit-learn per request and, when installed,
  MLServer on the same model files; and one large request
  predicted in the server or split across 2 workers (see :mod:`paragrad.bench.serve_suite`).
- ``e2e``: whole calls as users time them (``pg.train`` cold and warm, the CLI on a CSV,
  MLPs, memory-mapped data as it grows, predict, cross-validation) against the
  single-process tools they replace (see :mod:`paragrad.bench.e2e_suite`).
- ``engine``: logistic regression of growing size in this process against the local
  workers, cold and warm, and where ``engine="auto"`` sends it (see
  :mod:`paragrad.bench.engine_suite`).
- ``energy``: joules per million rows trained by GradientDescent, SGD and LocalSGD on the
  same data, against GradientDescent's (see :mod:`paragrad.bench.energy_suite`).
- ``acceleration``: on digits, a teacher MLP(256) against its int8, float16 and pruned
  copies and a distilled MLP(16), with the MLP(16) trained on labels alone: file size,
  accuracy, agreement with the teacher, time to predict 100,000 rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paragrad.bench.common import Row, machine
from paragrad.bench.communication import bench_communication
from paragrad.bench.e2e_suite import bench_e2e
from paragrad.bench.elastic_suite import bench_elastic
from paragrad.bench.energy_suite import bench_acceleration, bench_energy
from paragrad.bench.engine_suite import bench_engine
from paragrad.bench.exact import bench_exact
from paragrad.bench.gd_step import bench_float32, bench_gd_step
from paragrad.bench.latency import bench_latency
from paragrad.bench.plots import write_plots
from paragrad.bench.predict import bench_predict
from paragrad.bench.ray_suite import bench_ray
from paragrad.bench.serve_suite import bench_serve
from paragrad.bench.solvers import bench_mlp_scaling, bench_solvers
from paragrad.bench.torch_suite import bench_torch
from paragrad.core.atomic import atomic_write

SUITES: dict[str, Callable[[bool], list[Row]]] = {
    "latency": bench_latency,
    "gd_step": bench_gd_step,
    "mlp_scaling": bench_mlp_scaling,
    "solvers": bench_solvers,
    "exact": bench_exact,
    "float32": bench_float32,
    "predict": bench_predict,
    "communication": bench_communication,
    "torch": bench_torch,
    "ray": bench_ray,
    "serve": bench_serve,
    "elastic": bench_elastic,
    "e2e": bench_e2e,
    "energy": bench_energy,
    "acceleration": bench_acceleration,
    "engine": bench_engine,
}


def format_row(row: Row) -> str:
    """A result row as one line of ``key=value`` pairs, floats to 4 significant digits."""

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return "  ".join(f"{key}={show(value)}" for key, value in row.items())


def run_suites(
    names: list[str], quick: bool, out: Path | None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the named suites, print each row, and write ``results.json`` under ``out``."""
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "results": []}
    for name in names:
        for row in SUITES[name](quick):
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
