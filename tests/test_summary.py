"""The run summary tells the truth: times, rows processed, training loss; warnings name the
caller's line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import paragrad as pg
from paragrad.core.shards import default_workers
from paragrad.errors import PerformanceWarning, flag_names
from paragrad.training.strategies import WorkerResult


def test_local_sgd_counts_the_rows_its_local_steps_processed(binary_data):
    strategy = pg.LocalSGD(local_steps=3, batch_size=10)

    run = pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        strategy=strategy,
        engine="serial",
        workers=2,
        max_rounds=2,
        tol=0,
    )

    assert [record["samples"] for record in run.history] == [3 * 10 * 2, 3 * 10 * 2]


def test_local_sgd_still_averages_by_shard_size():
    strategy = pg.LocalSGD(local_steps=2, batch_size=10)
    results = [
        WorkerResult(100, 1.0, np.array([1.0]), processed=20),
        WorkerResult(300, 3.0, np.array([5.0]), processed=20),
    ]

    outcome = strategy.combine(results, np.zeros(1))

    assert outcome.params.tolist() == [4.0]  # (100 * 1 + 300 * 5) / 400


def test_summary_splits_the_call_into_set_up_and_rounds(regression_data):
    run = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", workers=2)

    text = run.summary()

    assert run.total_s >= run.setup_s + run.wall_s > 0
    assert "training loss" in text and "final loss" not in text
    assert "in all: set-up" in text and f"({regression_data.num_rows} rows processed)" in text


def test_the_set_up_is_split_into_its_parts_on_the_local_engine(regression_data):
    run = pg.train(pg.models.LinearRegression(), regression_data, engine="local", workers=2)

    parts = run.setup_parts
    assert list(parts) == ["checks", "placing data", "starting workers", "set-up pass"]
    assert all(seconds >= 0 for seconds in parts.values())
    assert sum(parts.values()) == pytest.approx(run.setup_s, abs=1e-9)
    assert "placing data" in run.summary() and "starting workers" in run.summary()


def test_convergence_warnings_point_at_the_callers_line(binary_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pg.train(
            pg.models.LogisticRegression(), binary_data, strategy=pg.SGD(8), engine="serial", max_rounds=2
        )

    assert caught and {warning.filename for warning in caught} == {__file__}


def test_a_batch_larger_than_the_data_is_warned_about(binary_data):
    with pytest.warns(
        PerformanceWarning, match="batch_size=1000 is larger than the data .301 rows."
    ) as caught:
        pg.train(
            pg.models.LogisticRegression(),
            binary_data,
            strategy=pg.SGD(1000),
            engine="serial",
            workers=2,
            max_rounds=1,
            tol=0,
        )

    assert caught[0].filename == __file__
    with flag_names(), pytest.warns(PerformanceWarning, match="^--batch-size 1000 is larger than the data"):
        pg.train(pg.models.LogisticRegression(), binary_data, strategy=pg.SGD(1000), max_rounds=1)


def test_more_worker_threads_than_cores_are_warned_about(binary_data):
    threads = default_workers() + 1
    with pytest.warns(
        PerformanceWarning, match=rf"1 workers x {threads} thread.s. each .* threads_per_worker="
    ):
        pg.train(
            pg.models.LogisticRegression(),
            binary_data,
            workers=1,
            engine="local",
            threads_per_worker=threads,
            max_rounds=1,
            tol=0,
        )
