"""The ``predict`` suite: streaming prediction of a float32 ``.npy`` on 2 local workers
against single-process numpy."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from paragrad.bench.common import Row, timings, write_features
from paragrad.core.atomic import atomic_write
from paragrad.engines.local import LocalEngine
from paragrad.inference import predict_to_file
from paragrad.models import LogisticRegression


def bench_predict(quick: bool) -> list[Row]:
    """Streaming ``predict`` of a float32 ``.npy`` on 2 workers against single-process numpy."""
    num_rows, d = (1_000_000 if quick else 10_000_000), 100
    rng = np.random.default_rng(2)
    model = LogisticRegression()
    model.setup(d, np.array([0.0, 1.0]))
    model.params_ = rng.standard_normal(d + 1) * 0.1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "X.npy"
        write_features(path, num_rows, d, rng, dtype=np.float32, chunk=500_000)
        os.sync()  # let the written pages reach the disk before anything is timed

        def numpy_predict() -> None:
            mapped = np.load(path, mmap_mode="r")
            step = 500_000
            out = np.empty(num_rows, dtype=np.int64)
            for start in range(0, num_rows, step):
                out[start : start + step] = model.predict(mapped[start : start + step])
            with atomic_write(Path(folder) / "numpy.npy") as handle:  # as durable as ours
                np.save(handle, out)

        with LocalEngine(2) as engine:  # started once, as a cluster would be

            def ours() -> None:
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
