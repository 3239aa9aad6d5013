"""Elastic runs: the same rows and parameters whatever the workers, resize, shrink, auto."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import relative_error, run_cli

import paragrad as pg
from paragrad.core.shards import Shard, Task, move_state, plan_shards
from paragrad.engines.local import LocalEngine
from paragrad.engines.serial import SerialEngine
from paragrad.errors import WorkerLost
from paragrad.training.elastic import AutoScaler, WorkerBounds
from paragrad.training.sampling import stream_rows
from paragrad.training.strategies import Strategy


@dataclass(frozen=True)
class DrawnRows(Task):
    """The data rows (global indices) SGD draws on a worker in a round."""

    batch_size: int
    rounds_per_epoch: int

    def __call__(self, shard: Shard, round_index: int) -> np.ndarray:
        epoch, position = divmod(round_index, self.rounds_per_epoch)
        start = position * self.batch_size
        rows = stream_rows(shard, 0, epoch, start, start + self.batch_size)
        return int(shard.held.starts()[0]) + np.arange(shard.num_rows)[rows]


def test_the_rows_drawn_each_round_are_the_same_on_1_2_3_and_7_workers():
    data = pg.make_regression(1003, 3, seed=0)
    task = DrawnRows(batch_size=37, rounds_per_epoch=28)  # 1003 rows: 27 batches of 37 and one of 4
    drawn = {}
    for workers in (1, 2, 3, 7):
        with LocalEngine(workers) as engine:
            engine.start(data, plan_shards(1003, workers))
            drawn[workers] = [np.concatenate(engine.run(task, r)) for r in range(56)]
    for workers in (2, 3, 7):
        assert all(np.array_equal(a, b) for a, b in zip(drawn[1], drawn[workers], strict=True))
    for epoch in (drawn[1][:28], drawn[1][28:]):
        assert sorted(np.concatenate(epoch)) == list(range(1003))  # every row once an epoch
        assert [len(rows) for rows in epoch] == [37] * 27 + [4]
    assert not np.array_equal(drawn[1][0], drawn[1][28])  # and in another order the next


def _fit(strategy: Strategy, engine, workers=2, **options) -> pg.Run:
    data = pg.make_classification(600, 5, seed=3)
    data = pg.Dataset(data.X, 2.0 * data.y - 1.0)  # labels -1 and 1: encoded on the workers, a set-up step
    common = dict(optimizer=pg.optim.Adam(lr=0.05), epochs=40 if strategy.name == "gd" else 3, tol=0)
    return pg.train(
        pg.models.LogisticRegression(l2=0.01),
        data,
        strategy=strategy,
        engine=engine,
        workers=workers,
        standardize=True,
        **{**common, **options},
    )


STRATEGIES = {"gd": pg.GradientDescent, "sgd": lambda: pg.SGD(batch_size=32)}


@pytest.mark.parametrize("name", STRATEGIES)
def test_gd_and_sgd_give_the_same_parameters_on_any_number_of_workers(name):
    reference = _fit(STRATEGIES[name](), "serial", workers=1)
    for workers in (2, 3, 7):
        assert (
            relative_error(_fit(STRATEGIES[name](), "serial", workers=workers).params, reference.params)
            <= 1e-12
        )
    assert relative_error(_fit(STRATEGIES[name](), "local", workers=2).params, reference.params) <= 1e-12


def resizing(engine, at: dict[int, int]):
    """A callback that resizes ``engine`` after the rounds in ``at``."""

    def callback(record: dict) -> None:
        if record["round"] in at:
            engine.resize(at[record["round"]])

    return callback


@pytest.mark.parametrize("name", STRATEGIES)
def test_resize_from_a_callback_grows_and_shrinks_mid_run_and_the_parameters_stay(name):
    fixed = _fit(STRATEGIES[name](), "serial", workers=2)
    with LocalEngine(2) as engine:
        run = _fit(STRATEGIES[name](), engine, callbacks=[resizing(engine, {5: 1, 12: 3, 20: 2})])
        assert engine.num_workers == 2 and len(engine.pids) == 2
    assert relative_error(run.params, fixed.params) <= 1e-12
    assert [record["round"] for record in run.history] == list(
        range(len(fixed.history))
    )  # none lost or repeated
    counts = [record["workers"] for record in run.history]
    assert counts == [2] * 6 + [1] * 7 + [3] * 8 + [2] * (len(counts) - 21)
    assert [(c.round, c.before, c.after, c.cause) for c in run.changes] == [
        (6, 2, 1, "resize"),
        (13, 1, 3, "resize"),
        (21, 3, 2, "resize"),
    ]
    assert "workers       1 -> 3 before round 13 (resize;" in run.summary()


def test_a_resize_between_runs_applies_at_the_next_start():
    with LocalEngine(2) as engine:
        _fit(pg.SGD(batch_size=32), engine)
        engine.resize(1)
        run = _fit(pg.SGD(batch_size=32), engine, workers=None)
        assert run.num_workers == 1 and not run.changes and len(engine.pids) == 1


def kill_worker(engine: LocalEngine, worker: int, at_round: int):
    def callback(record: dict) -> None:
        if record["round"] == at_round:
            os.kill(engine.pids[worker], signal.SIGKILL)

    return callback


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_killed_worker_with_no_restart_left_shrinks_the_run_which_ends_undisturbed(name):
    fixed = _fit(STRATEGIES[name](), "serial", workers=2)
    with LocalEngine(2, max_restarts=0) as engine:
        victim = engine
        run = _fit(STRATEGIES[name](), victim, workers=(1, 2), callbacks=[kill_worker(victim, 1, 7)])
        assert len(engine.pids) == 1
    assert relative_error(run.params, fixed.params) <= 1e-12
    assert [record["round"] for record in run.history] == list(range(len(fixed.history)))
    assert [record["workers"] for record in run.history][7:9] == [2, 1]
    (change,) = run.changes
    assert (change.round, change.before, change.after) == (8, 2, 1)
    assert change.cause.startswith("worker 1 died (killed by signal 9)")


def test_without_room_to_shrink_a_lost_worker_still_ends_the_run():
    with (
        LocalEngine(2, max_restarts=0) as engine,
        pytest.raises(WorkerLost, match="round 8: worker 1 died"),
    ):
        _fit(pg.SGD(batch_size=32), engine, workers=(2, 2), callbacks=[kill_worker(engine, 1, 7)])


def test_workers_auto_measures_settles_and_keeps_the_parameters():
    def patience(record: dict) -> None:  # time for the second worker to start, outside the rounds
        if record["workers"] == 1 and 5 <= record["round"] < 60:
            time.sleep(0.05)

    fixed = _fit(pg.SGD(batch_size=8), "serial", workers=1, epochs=1)
    run = _fit(pg.SGD(batch_size=8), "local", workers="auto", epochs=1, callbacks=[patience])
    assert relative_error(run.params, fixed.params) <= 1e-12
    counts = [record["workers"] for record in run.history]
    assert counts[:5] == [1] * 5 and set(counts) == {1, 2}  # measured on one, then two
    assert run.changes[0].cause == "workers=auto: measuring 2"
    chosen = 2 if counts[-1] == 2 else 1
    assert run.scaling.startswith(f"workers=auto chose {chosen}, the fastest measured")
    assert f"scaling       workers=auto chose {chosen}" in run.summary()


def test_auto_tries_growing_counts_and_keeps_the_fastest():
    scaler = AutoScaler(max_workers=8)
    speeds = {1: 100.0, 2: 190.0, 4: 200.0, 8: 150.0}
    workers, asked = 1, []
    for _ in range(40):
        record = {"workers": workers, "samples": speeds[workers], "wall_s": 1.0}
        count = scaler.next_count(record)
        if count is not None:
            asked.append(count)
            workers = count
    assert asked == [2, 4, 8, 4] and scaler.chosen == 4
    assert scaler.describe() == (
        "workers=auto chose 4, the fastest measured (rows/s by workers: 1: 100, 2: 190, 4: 200, 8: 150)"
    )


def test_worker_seconds_count_each_round_at_its_membership():
    with LocalEngine(2) as engine:
        run = _fit(pg.SGD(batch_size=32), engine, callbacks=[resizing(engine, {10: 1})])
    rounds = sum(record["wall_s"] * record["workers"] for record in run.history)
    outside = run.total_s - run.setup_s - sum(record["wall_s"] for record in run.history)
    assert run.worker_seconds == pytest.approx(run.setup_s * 2 + rounds + outside * 1, rel=1e-12)
    assert run.worker_seconds < run.total_s * 2


def test_state_moves_with_the_rows_and_its_total_is_kept():
    rng = np.random.default_rng(0)
    states = [{"residual": rng.standard_normal(4)} for _ in range(3)]
    old, new = ((0, 30), (30, 60), (60, 100)), ((0, 50), (50, 100))
    moved = move_state(states, old, new)
    np.testing.assert_allclose(moved[0]["residual"], states[0]["residual"] + states[1]["residual"] * 20 / 30)
    total = sum(state["residual"] for state in states)
    np.testing.assert_allclose(moved[0]["residual"] + moved[1]["residual"], total, rtol=1e-14)
    assert (
        move_state([None, states[1]], ((0, 5), (5, 10)), ((0, 10),))[0]["residual"]
        is not states[1]["residual"]
    )


def test_compressed_runs_move_their_residuals_alike_on_every_engine():
    """Top-k's residuals follow the rows through resizes: serial and local agree."""
    strategy = pg.SGD(batch_size=32, compress="topk:0.2")
    with SerialEngine(2) as serial, LocalEngine(2) as local:
        runs = [
            _fit(strategy, engine, callbacks=[resizing(engine, {4: 3, 9: 1})]) for engine in (serial, local)
        ]
    assert relative_error(runs[0].params, runs[1].params) <= 1e-12
    assert [c.after for c in runs[0].changes] == [3, 1] == [c.after for c in runs[1].changes]


def test_a_checkpointed_run_resumes_on_another_worker_count_with_the_same_parameters(tmp_path):
    uninterrupted = _fit(pg.SGD(batch_size=32), "serial", workers=2)
    _fit(pg.SGD(batch_size=32), "serial", workers=2, checkpoint_dir=tmp_path, max_rounds=20)
    resumed = _fit(pg.SGD(batch_size=32), "serial", workers=3, checkpoint_dir=tmp_path, resume=True)
    assert relative_error(resumed.params, uninterrupted.params) <= 1e-12


@pytest.mark.parametrize(
    ("workers", "parsed"),
    [
        (np.int64(2), (2, 2, False)),
        ([1, 3], (1, 3, False)),
        ("Auto", (1, None, True)),
        (None, (None, None, False)),
        (3, (3, 3, False)),
        ((1, 4), (1, 4, False)),
        ("2:5", (2, 5, False)),
        ("auto", (1, None, True)),
    ],
)
def test_worker_settings_are_read(workers, parsed):
    bounds = WorkerBounds.parse(workers)
    assert (bounds.min, bounds.max, bounds.auto) == parsed


@pytest.mark.parametrize("workers", [0, (2, 1), (0, 2), "3:x", "many", 2.5, (True, 2)])
def test_bad_worker_settings_are_refused_by_name(workers):
    with pytest.raises(pg.ConfigError, match="workers="):
        pg.train(pg.models.LinearRegression(), pg.make_regression(50, 2), engine="serial", workers=workers)


def test_an_elastic_run_never_has_more_workers_than_rows():
    assert WorkerBounds.parse((1, 8)).resolve(capacity=8, num_rows=3) == (3, 1, 3)
    assert WorkerBounds.parse((1, 5000)).resolve(capacity=5000, num_rows=10**6) == (1024, 1, 1024)
    assert WorkerBounds.parse("auto").resolve(capacity=2, num_rows=100) == (1, 1, 2)
    with pytest.raises(pg.ConfigError, match="at least 4 workers, but only 3 fit"):
        WorkerBounds.parse((4, 8)).resolve(capacity=8, num_rows=3)


def test_the_command_line_takes_min_max_and_auto(tmp_path):
    data, out = tmp_path / "d.csv", tmp_path / "m.npz"
    made = run_cli("make-data", "classification", "--rows", "400", "--features", "3", "--out", data)
    assert made.returncode == 0, made.stderr
    for workers in ("1:2", "auto"):
        result = run_cli(
            "train", data, "--target", "y", "--workers", workers, "--strategy", "sgd", "--out", out
        )
        assert result.returncode == 0, result.stderr
    bad = run_cli("train", data, "--target", "y", "--workers", "2:1", "--out", out)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "paragrad train: error: argument --workers: MIN:MAX needs 1 <= MIN <= MAX, got '2:1' "
        "(see paragrad train --help)"
    ]


def test_a_resize_the_rows_cannot_take_is_refused_when_asked():
    with SerialEngine(1) as engine:
        engine.start(pg.make_regression(300, 2), plan_shards(300, 1))
        with pytest.raises(pg.ConfigError, match=r"resize\(400\): this run can have at most 300 workers"):
            engine.resize(400)
        with pytest.raises(pg.ConfigError, match="resize needs a worker count of at least 1, got 0"):
            engine.resize(0)
        engine.resize(np.int64(3))
        engine.between_rounds(0)
        assert engine.num_workers == 3 and engine.changes[0].after == 3


def test_a_worker_dying_while_the_workers_change_is_replaced_or_dropped():
    """A death noticed during a change: a restart while they last, else one worker fewer."""
    fixed = _fit(pg.SGD(batch_size=32), "serial")

    for max_restarts, workers, final in ((1, 2, 3), (0, (1, 3), 2)):
        with LocalEngine(2, max_restarts=max_restarts) as engine:

            def grow_and_kill(record: dict) -> None:
                if record["round"] == 3:
                    engine.resize(3)
                    os.kill(engine.pids[0], signal.SIGKILL)
                    time.sleep(0.2)

            run = _fit(pg.SGD(batch_size=32), engine, workers=workers, callbacks=[grow_and_kill])
        assert relative_error(run.params, fixed.params) <= 1e-12
        (change,) = run.changes
        assert (change.round, change.before, change.after) == (4, 2, final)
        assert [record["round"] for record in run.history] == list(range(len(fixed.history)))


def test_float32_runs_agree_across_worker_counts_to_float32_rounding():
    """The same rows, summed in another order: float32's rounding, not float64's."""
    runs = [_fit(pg.SGD(batch_size=32), "serial", workers=w, dtype="float32") for w in (1, 3)]
    assert relative_error(runs[0].params, runs[1].params) <= 1e-6


def test_rows_gathered_from_several_blocks_are_the_blocks_one_after_another():
    from paragrad.engines.ray_sources import stacked

    blocks = [np.arange(12.0).reshape(4, 3), np.arange(12.0, 18.0).reshape(2, 3)]
    rows = stacked(blocks)
    np.testing.assert_array_equal(rows, np.concatenate(blocks))
    rows[0, 0] = -1.0  # a shard the worker may standardise in place
    assert stacked([np.zeros((0, 3))]).shape == (0, 3)
