"""Engines: the local engine's real worker processes give the serial engine's answers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad.data import plan_shards
from paragrad.engines import make_engine
from paragrad.engines.local import LocalEngine

MODELS = {
    "linear": lambda: pg.models.LinearRegression(l2=0.01),
    "logistic": lambda: pg.models.LogisticRegression(l2=0.01),
    "softmax": lambda: pg.models.SoftmaxRegression(l2=0.01),
    "mlp": lambda: pg.models.MLP(hidden=(8,), activation="tanh"),
}
STRATEGIES = {
    "gd": pg.GradientDescent,
    "sgd": lambda: pg.SGD(batch_size=16),
    "local-sgd": lambda: pg.LocalSGD(local_steps=3, batch_size=8),
}


def data_for(kind: str) -> pg.Dataset:
    if kind == "linear":
        return pg.make_regression(151, 5, seed=0)
    return pg.make_classification(151, 5, num_classes=2 if kind == "logistic" else 3, seed=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", MODELS)
def test_local_engine_gives_the_serial_parameters(kind, strategy, local_engine):
    def fit(engine):
        return pg.train(
            MODELS[kind](),
            data_for(kind),
            strategy=STRATEGIES[strategy](),
            engine=engine,
            workers=2,
            epochs=3,
            standardize=True,
            seed=3,
            tol=0,
        )

    local, serial = fit(local_engine), fit("serial")
    assert local.engine == "local" and local.num_workers == 2
    assert relative_error(local.params, serial.params) <= 1e-12


def test_local_predict_returns_the_serial_predictions_in_input_order(local_engine):
    data = pg.make_classification(1001, 4, num_classes=3, seed=1)
    run = pg.train(pg.models.SoftmaxRegression(), data, engine="serial", workers=2, epochs=5, tol=0)
    expected = run.model.predict_proba(data.X)
    np.testing.assert_array_equal(pg.predict(run.model, data.X, engine=local_engine, proba=True), expected)
    np.testing.assert_array_equal(
        pg.predict(run.model, data.X, engine="serial", workers=3), np.argmax(expected, axis=1)
    )


def test_a_fresh_local_engine_trains_and_cleans_up():
    before, children_before = set(os.listdir("/dev/shm")), set(_children())
    run = pg.train(
        pg.models.LinearRegression(),
        pg.make_regression(200, 3, seed=0),
        engine="local",
        workers=2,
        epochs=3,
        tol=0,
    )
    assert run.engine == "local" and len(run.history) == 3
    assert set(os.listdir("/dev/shm")) <= before
    assert not [child for child in set(_children()) - children_before if _is_alive(child)]


class Boom:
    """A task that fails on one worker."""

    def __call__(self, shard):
        if shard.worker == 1:
            raise ValueError("boom")
        return shard.num_rows


class Die:
    """A task that kills its own worker process."""

    def __call__(self, shard):
        if shard.worker == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return shard.num_rows


def _children() -> list[int]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return [int(pid) for pid in path.read_text().split()]


def _is_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except FileNotFoundError:
        return False


def started_engine(rows: int = 50) -> LocalEngine:
    engine = make_engine("local", 2)
    engine.start(pg.make_regression(rows, 2, seed=0), plan_shards(rows, 2))
    return engine


def test_an_exception_in_a_worker_names_the_worker_and_keeps_the_engine_usable():
    with started_engine() as engine:
        with pytest.raises(pg.errors.WorkerError, match="worker 1 raised ValueError: boom"):
            engine.run(Boom())
        assert engine.run(lambda_free_count) == [25, 25]


def lambda_free_count(shard):
    return shard.num_rows


def test_a_killed_worker_is_reported_and_everything_is_released():
    before_shm = set(os.listdir("/dev/shm"))
    engine = started_engine()
    pids = engine.pids
    assert set(os.listdir("/dev/shm")) - before_shm
    with pytest.raises(pg.errors.WorkerLost, match=r"worker 1 died \(killed by signal 9\)"):
        engine.run(Die())
    engine.close()
    assert set(os.listdir("/dev/shm")) <= before_shm
    assert not any(_is_alive(pid) for pid in pids)


def test_unknown_engine_lists_the_choices():
    with pytest.raises(pg.ConfigError, match="unknown engine 'gpu'; choose one of serial, local, ray"):
        make_engine("gpu")
