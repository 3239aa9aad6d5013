"""Callbacks: what a run tells them, in order, and stopping early."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import paragrad as pg
from paragrad.callbacks import Callback, TrainInfo
from paragrad.run import HISTORY_KEYS


def _sgd(data: pg.Dataset, **options) -> pg.Run:
    """Eight rounds of SGD on two serial workers: 151 rows per shard, batches of 50, 2 epochs."""
    return pg.train(
        pg.models.LogisticRegression(),
        data,
        strategy=pg.SGD(batch_size=50),
        engine="serial",
        workers=2,
        epochs=2,
        tol=0,
        **options,
    )


class Recorder(Callback):
    """Everything a run tells its callbacks, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_train_start(self, info: TrainInfo) -> None:
        self.calls.append(("start", info))

    def on_round_end(self, record: dict) -> bool | None:
        self.calls.append(("round", record))
        return None

    def on_train_end(self, run: pg.Run) -> None:
        self.calls.append(("end", run))

    def on_train_error(self, error: BaseException) -> None:
        self.calls.append(("error", error))


def test_a_callback_hears_the_start_every_round_in_order_and_the_end(binary_data):
    recorder = Recorder()

    run = _sgd(binary_data, callbacks=[recorder])

    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["start"] + ["round"] * 8 + ["end"]
    info = recorder.calls[0][1]
    assert (info.engine, info.num_workers, info.total_rounds, info.first_round) == ("serial", 2, 8, 0)
    assert info.params()["model"] == "logistic" and info.params()["strategy.batch_size"] == 50
    records = [record for kind, record in recorder.calls if kind == "round"]
    assert records == run.history
    assert all(tuple(record) == HISTORY_KEYS for record in records)
    assert recorder.calls[-1][1] is run


def test_a_function_that_returns_true_stops_the_run_after_that_round(binary_data):
    seen: list[int] = []

    def stop_at_three(record: dict) -> bool:
        seen.append(record["round"])
        return record["round"] == 3

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a requested stop is no convergence failure to warn of
        run = _sgd(binary_data, callbacks=[stop_at_three])

    assert seen == [0, 1, 2, 3]
    assert len(run.history) == 4
    assert run.stopped == "stopped by a callback" and not run.converged
    assert run.outcome == "not converged: stopped by a callback"
    assert "stopped by a callback" in run.summary()


def test_a_run_stopped_by_a_callback_resumes_to_the_uninterrupted_result(regression_data, tmp_path):
    def fit(**options) -> pg.Run:
        return pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=0.1),
            engine="serial",
            workers=2,
            epochs=12,
            tol=0,
            **options,
        )

    whole = fit()
    stopped = fit(checkpoint_dir=tmp_path, callbacks=[lambda record: record["round"] == 4])
    resumed = fit(checkpoint_dir=tmp_path, resume=True)

    assert len(stopped.history) == 5
    assert [record["loss"] for record in resumed.history] == [record["loss"] for record in whole.history]
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_callbacks_hear_of_a_run_that_raises(regression_data):
    recorder = Recorder()

    with pytest.raises(pg.TrainingDiverged):
        pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=1e9),
            engine="serial",
            workers=1,
            callbacks=[recorder],
        )

    assert recorder.calls[0][0] == "start"
    assert recorder.calls[-1][0] == "error" and isinstance(recorder.calls[-1][1], pg.TrainingDiverged)


@pytest.mark.parametrize("callbacks", [[3], Recorder(), print], ids=["number", "bare", "function"])
def test_callbacks_must_be_a_list_of_callbacks_or_functions(regression_data, callbacks):
    with pytest.raises(pg.ConfigError, match="callbacks"):
        pg.train(pg.models.LinearRegression(), regression_data, engine="serial", callbacks=callbacks)
