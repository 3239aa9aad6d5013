"""The local engine kept between calls made without an engine object: its workers and
placed data serve the next call, it never trains on stale data, and it leaves nothing
behind once released, idle or ended with the program."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import is_running, relative_error, run_cli, shared_memory_of

import paragrad as pg
from paragrad.engines import kept


@pytest.fixture
def kept_for(monkeypatch):
    """Calls keep their engine for the given idle time; it is released after the test."""

    def keep(seconds: float) -> None:
        monkeypatch.setenv("PARAGRAD_IDLE_S", str(seconds))

    yield keep
    kept.release_kept_engine()


def kept_pids() -> list[int]:
    engine = kept._kept.engine
    return [] if engine is None else list(engine.pids)  # type: ignore[attr-defined]


def serial_params(data: pg.Dataset) -> np.ndarray:
    return pg.train(pg.models.LogisticRegression(), data, engine="serial", workers=2).params


def test_calls_share_the_workers_and_release_them(kept_for):
    kept_for(30)
    before = shared_memory_of()  # what other tests' engines hold
    data = pg.make_classification(3000, 5, seed=0)
    first = pg.train(pg.models.LogisticRegression(), data, workers=2, engine="local")
    pids = kept_pids()
    assert len(pids) == 2 and all(is_running(pid) for pid in pids)
    second = pg.train(pg.models.LogisticRegression(), data, workers=2, engine="local")
    labels = pg.predict(second.model, data.X, workers=2, engine="local")
    assert kept_pids() == pids  # the same processes served all three calls
    expected = serial_params(data)
    assert relative_error(first.params, expected) <= 1e-12
    assert relative_error(second.params, expected) <= 1e-12
    np.testing.assert_array_equal(labels, second.model.predict(data.X))
    kept.release_kept_engine()
    assert kept_pids() == [] and not any(is_running(pid) for pid in pids)
    assert shared_memory_of() <= before


def test_data_changed_in_place_between_calls_is_what_the_next_call_trains_on(kept_for):
    kept_for(30)
    data = pg.make_classification(4000, 6, seed=1)
    X, y = data.X.copy(), data.y.copy()
    pg.train(pg.models.LogisticRegression(), pg.Dataset(X, y), workers=2, engine="local")
    X[:, 2] *= -3.0  # the same arrays, the same shapes: the placed copy is now stale
    y[:100] = 1 - y[:100]
    again = pg.train(pg.models.LogisticRegression(), pg.Dataset(X, y), workers=2, engine="local")
    assert relative_error(again.params, serial_params(pg.Dataset(X, y))) <= 1e-12
    X[:5] = 0.0
    np.testing.assert_array_equal(
        pg.predict(again.model, X, workers=2, engine="local", proba=True), again.model.predict_proba(X)
    )


def test_the_kept_engine_stops_once_idle(kept_for):
    kept_for(0.3)
    before = shared_memory_of()
    pg.train(
        pg.models.LogisticRegression(), pg.make_classification(500, 3, seed=0), workers=2, engine="local"
    )
    pids = kept_pids()
    assert pids
    deadline = time.monotonic() + 10
    while (kept_pids() or not shared_memory_of() <= before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kept_pids() == [] and not any(is_running(pid) for pid in pids)
    assert shared_memory_of() <= before


def test_other_settings_start_another_engine(kept_for):
    kept_for(30)
    data = pg.make_classification(600, 3, seed=0)
    pg.train(pg.models.LogisticRegression(), data, workers=2, engine="local")
    two = kept_pids()
    pg.train(pg.models.LogisticRegression(), data, workers=1, engine="local")
    assert len(kept_pids()) == 1 and not any(is_running(pid) for pid in two)


def test_a_call_while_the_kept_engine_is_busy_gets_an_engine_of_its_own(kept_for):
    kept_for(30)
    data = pg.make_classification(800, 4, seed=2)
    inner = []

    def train_again(record):
        if not inner:  # a call from within a call: the kept engine is in use
            inner.append(pg.train(pg.models.LogisticRegression(), data, workers=2, engine="local"))

    outer = pg.train(pg.models.LogisticRegression(), data, workers=2, engine="local", callbacks=[train_again])
    assert relative_error(inner[0].params, outer.params) <= 1e-12
    assert len(kept_pids()) == 2


def test_workers_of_the_kept_engine_end_with_the_program():
    script = (
        "import paragrad as pg\n"
        "from paragrad.engines import kept\n"
        "data = pg.make_classification(500, 3, seed=0)\n"
        "pg.train(pg.models.LogisticRegression(), data, workers=2, engine='local')\n"
        "print(*kept._kept.engine.pids)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PARAGRAD_IDLE_S": "600"},
    )
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_running(pid) for pid in pids)


def test_the_command_line_starts_its_workers_while_it_reads_the_file(tmp_path):
    data = pg.make_classification(2000, 4, seed=3)
    path, out = tmp_path / "train.csv", tmp_path / "model.npz"
    pg.save_dataset(data, path)
    done = run_cli(
        "train", path, "--target", "y", "--workers", "2", "--out", out, env={"PARAGRAD_IDLE_S": "30"}
    )
    assert done.returncode == 0, done.stderr
    assert "starting workers" in done.stdout
    expected = pg.train(pg.models.LogisticRegression(), pg.load(path, "y"), engine="serial", workers=2)
    assert relative_error(pg.load_model(out).params, expected.params) <= 1e-12


def _fit_scaled(scale: float) -> np.ndarray:
    data = pg.make_regression(3000, 4, seed=5)
    return pg.train(pg.models.LinearRegression(), pg.Dataset(data.X, scale * data.y), workers=2).params


def test_a_forked_child_starts_its_own_engine_and_leaves_the_parents_alone(kept_for):
    kept_for(30)
    expected = {scale: _fit_scaled(scale) for scale in (1.0, 2.0, 3.0, 4.0)}  # the parent's engine is kept
    pids = kept_pids()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        found = dict(zip((2.0, 3.0, 4.0), pool.map(_fit_scaled, (2.0, 3.0, 4.0)), strict=True))
    for scale, params in found.items():
        assert relative_error(params, expected[scale]) <= 1e-12
    assert kept_pids() == pids and all(is_running(pid) for pid in pids)
    assert relative_error(_fit_scaled(1.0), expected[1.0]) <= 1e-12  # and it still serves


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "1e300"])
def test_a_bad_idle_time_is_one_clear_error_for_the_local_engine_alone(monkeypatch, value):
    monkeypatch.setenv("PARAGRAD_IDLE_S", value)
    data = pg.make_classification(100, 2, seed=0)
    with pytest.raises(pg.ConfigError, match="PARAGRAD_IDLE_S must be a number of seconds from 0"):
        pg.train(pg.models.LogisticRegression(), data, engine="local")
    pg.train(pg.models.LogisticRegression(), data, engine="serial")  # which never keeps one


def test_each_call_on_the_kept_engine_has_its_own_restart_budget(kept_for):
    kept_for(30)
    data = pg.make_classification(600, 4, seed=5)
    expected = pg.train(pg.models.LogisticRegression(), data, engine="serial", workers=2, max_rounds=4)

    def kill_one(record):
        if record["round"] == 0:
            os.kill(kept_pids()[1], signal.SIGKILL)

    for _ in range(3):  # each call loses a worker; with max_restarts=1 every one succeeds
        options = dict(workers=2, max_restarts=1, max_rounds=4, callbacks=[kill_one], engine="local")
        run = pg.train(pg.models.LogisticRegression(), data, **options)
        assert relative_error(run.params, expected.params) <= 1e-12
