"""Faults a run must survive or refuse plainly: another run's checkpoints, killed writes,
lost and stopped workers, engines shared between threads, full disks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
from conftest import is_running, newest_checkpointed_round, relative_error, rewrite_meta

import paragrad as pg
from paragrad.core.model_file import VERSIONS
from paragrad.engines.local import LocalEngine
from paragrad.errors import WorkerLost
from paragrad.training import checkpoint

GD = dict(strategy=pg.GradientDescent(), optimizer=pg.optim.SGD(lr=0.1), epochs=8, tol=0, seed=0)


def fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


# -- a checkpoint belongs to its run ----------------------------------------------------------


def test_a_fresh_run_in_a_directory_of_another_run_says_so_and_deletes_nothing(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(pg.ConfigError, match=r"holds the checkpoints of another run .*resume=True"):
        fit(binary_data, checkpoint_dir=tmp_path, max_rounds=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resume_refuses_a_checkpoint_made_on_other_data_of_the_same_shape(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    other = pg.Dataset(binary_data.X[::-1].copy(), binary_data.y[::-1].copy())
    with pytest.raises(pg.ConfigError, match=r"checkpoint-000000005.npz: .*a run on other data"):
        fit(other, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    "other",
    [dict(optimizer=pg.optim.SGD(lr=0.1)), dict(strategy=pg.GradientDescent())],
    ids=["sgd", "newton"],
)
def test_resume_refuses_a_checkpoint_of_another_optimizer_and_touches_nothing(tmp_path, binary_data, other):
    """An optimizer whose state differs from the checkpoint's (Adam's moments, SGD's
    velocity) is another run: refused by name, not skipped as damaged for a fresh start that
    would overwrite the run's files."""
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=5, max_rounds=12)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(
        pg.ConfigError, match=r"checkpoint-000000005.npz: .*differs in optimizer \(made with adam"
    ):
        fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=5, resume=True, **other)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_the_fingerprint_does_not_depend_on_the_worker_count(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True, workers=3)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_pruning_removes_the_runs_own_oldest_and_leaves_other_runs_files(
    tmp_path, binary_data, a_file_per_checkpoint
):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=8, checkpoint_every=4)
    foreign = tmp_path / "checkpoint-000000002.npz"
    foreign.write_bytes((tmp_path / "checkpoint-000000004.npz").read_bytes())
    rewrite_meta(foreign, run="another run", round=2)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=1, keep_checkpoints=2)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.npz"))
    assert names == ["checkpoint-000000002.npz", "checkpoint-000000029.npz", "checkpoint-000000030.npz"]


@pytest.mark.parametrize(
    "version", [checkpoint.CHECKPOINT_VERSION + 1, str(checkpoint.CHECKPOINT_VERSION + 1)]
)
def test_a_newer_checkpoint_is_refused_by_name_and_never_pruned(tmp_path, binary_data, version):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    rewrite_meta(path, version=version)
    with pytest.raises(pg.ConfigError, match=r"checkpoint-000000005.npz: a checkpoint of a newer paragrad"):
        fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    other_version = rf"another paragrad version \(checkpoint-000000005.npz, format {int(version)}\)"
    with pytest.raises(pg.ConfigError, match=other_version):
        fit(binary_data, checkpoint_dir=tmp_path)
    assert path.exists()


def test_the_same_version_written_as_text_is_this_version(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    rewrite_meta(path, version=str(checkpoint.CHECKPOINT_VERSION))
    assert len(fit(binary_data, checkpoint_dir=tmp_path, resume=True).history) == 30


def test_temporaries_of_killed_writes_are_removed_at_the_next_start(tmp_path, binary_data):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(gone.stdout)
    stale = [
        tmp_path / f".checkpoint-000000005.npz.{dead_pid}.abc123.tmp",
        tmp_path / ".checkpoint-000000005.npz.x1y2z3.tmp",  # written before temporaries named a pid
    ]
    live = tmp_path / f".checkpoint-000000005.npz.{os.getpid()}.def456.tmp"
    for path in [*stale, live]:
        path.write_bytes(b"partial")
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=3)
    assert not any(path.exists() for path in stale) and live.exists()


def test_the_command_line_removes_the_temporaries_of_a_killed_out(tmp_path, binary_data):
    from conftest import run_cli

    pg.save_dataset(binary_data, tmp_path / "d.npz")
    stale = tmp_path / ".m.npz.999999999.abc.tmp"
    stale.write_bytes(b"partial")
    result = run_cli("train", str(tmp_path / "d.npz"), "--engine", "serial", "--out", str(tmp_path / "m.npz"))
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and (tmp_path / "m.npz").exists()


# -- nothing waits forever ---------------------------------------------------------------------


def stop_a_worker_at(engine, round_index, stopped):
    """A callback that stops worker 1 with SIGSTOP after ``round_index`` (its pid kept)."""

    def callback(record):
        if record["round"] == round_index and not stopped:
            stopped.append(engine.pids[1])
            os.kill(stopped[0], signal.SIGSTOP)

    return callback


@pytest.mark.parametrize(
    ("workers", "max_restarts", "expected_workers"),
    [(2, 1, 2), ((1, 2), 0, 1)],
    ids=["replaced", "shrunk"],
)
def test_a_stopped_worker_is_lost_after_the_round_timeout(
    regression_data, workers, max_restarts, expected_workers
):
    reference = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", workers=2, **GD)
    stopped: list[int] = []
    with LocalEngine(2, max_restarts=max_restarts) as engine:
        options = dict(engine=engine, workers=workers, round_timeout_s=1.5, **GD)
        started = time.monotonic()
        run = pg.train(
            pg.models.LinearRegression(),
            regression_data,
            callbacks=[stop_a_worker_at(engine, 2, stopped)],
            **options,
        )
        took = time.monotonic() - started
        assert run.num_workers == expected_workers
    assert relative_error(run.params, reference.params) <= 1e-12
    assert took < 30  # the deadline and a round, with room for a loaded machine
    assert not is_running(stopped[0])


def test_a_stopped_worker_with_no_restart_left_is_named_with_its_round(regression_data):
    stopped: list[int] = []
    with LocalEngine(2) as engine:
        callbacks = [stop_a_worker_at(engine, 1, stopped)]
        with pytest.raises(WorkerLost, match=r"round 2: worker 1 died \(silent for 1.5 s: stopped or hung"):
            pg.train(
                pg.models.LinearRegression(),
                regression_data,
                engine=engine,
                round_timeout_s=1.5,
                callbacks=callbacks,
                **GD,
            )
    assert not is_running(stopped[0])


@pytest.mark.parametrize("name", ["round_timeout_s", "start_timeout_s"])
def test_the_timeouts_are_checked(regression_data, name):
    with pytest.raises(pg.ConfigError, match=f"{name} must be a number of seconds, at least 1"):
        pg.train(pg.models.LinearRegression(), regression_data, engine="serial", **{name: 0})


def test_an_engine_used_by_two_threads_at_once_refuses_the_second(binary_data):
    started, release = threading.Event(), threading.Event()
    trained = pg.train(pg.models.LogisticRegression(), binary_data, engine="serial", max_rounds=3, tol=0)

    def hold(record):
        started.set()
        release.wait(30)

    with LocalEngine(2) as engine:
        options = dict(engine=engine, workers=2, max_rounds=3, tol=0)
        first = threading.Thread(
            target=pg.train,
            args=(pg.models.LogisticRegression(), binary_data),
            kwargs={**options, "callbacks": [hold]},
        )
        first.start()
        try:
            assert started.wait(60)
            with pytest.raises(pg.ConfigError, match="in use by a call in another thread"):
                pg.train(pg.models.LogisticRegression(), binary_data, **options)
            with pytest.raises(pg.ConfigError, match="in use by a call in another thread"):
                pg.predict(trained.model, binary_data.X, engine=engine)
        finally:
            release.set()
            first.join(60)
        assert not first.is_alive()
        run = pg.train(pg.models.LogisticRegression(), binary_data, **options)  # free again
        assert len(run.history) == 3


def test_the_command_line_takes_a_round_timeout(tmp_path, binary_data):
    from conftest import run_cli

    pg.save_dataset(binary_data, tmp_path / "d.npz")
    result = run_cli("train", tmp_path / "d.npz", "--engine", "serial", "--round-timeout", "0.5")
    assert (
        result.returncode != 0 and "round_timeout_s must be a number of seconds, at least 1" in result.stderr
    )
    timeouts = ["--round-timeout", "5", "--start-timeout", "30"]
    assert run_cli("train", tmp_path / "d.npz", "--workers", "2", *timeouts).returncode == 0


# -- messages that name the file ----------------------------------------------------------------


def test_a_model_file_version_is_compared_by_value(tmp_path, binary_data):
    path = tmp_path / "m.npz"
    fit(binary_data, max_rounds=2).save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    np.savez(path, **{**arrays, "meta": np.array(json.dumps({**meta, "version": "1"}))})
    assert pg.load_model(path).num_features_ == 5
    newer = max(VERSIONS) + 1
    np.savez(path, **{**arrays, "meta": np.array(json.dumps({**meta, "version": newer}))})
    with pytest.raises(
        pg.ModelFileError, match=f"version {newer} is not supported .written by a newer paragrad."
    ):
        pg.load_model(path)


def test_evaluate_takes_the_labels_of_a_model_trained_from_arrays_from_a_target_file(tmp_path, binary_data):
    from conftest import run_cli

    fit(pg.Dataset(binary_data.X, binary_data.y), max_rounds=2).save(tmp_path / "m.npz")
    np.save(tmp_path / "X.npy", binary_data.X)
    np.save(tmp_path / "y.npy", binary_data.y)
    result = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "X.npy", "--target-file", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    assert "rows      301" in result.stdout and "accuracy" in result.stdout
    result = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "X.npy")
    assert "give the labels with --target-file y.npy" in result.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(small_disk, binary_data):
    from conftest import run_cli

    out = small_disk / "data.csv"
    out.write_text("a,y\n1,0\n")
    result = run_cli("make-data", "regression", "--rows", "100000", "--features", "5", "--out", out)
    assert result.returncode != 0
    written = "could not be written (No space left on device); the file there before is kept"
    assert result.stderr.strip() == f"paragrad: error: {out}: {written}", result.stderr
    assert out.read_text() == "a,y\n1,0\n"
    assert [p.name for p in small_disk.iterdir()] == ["data.csv"]  # no temporary left
    with pytest.raises(pg.OutputError, match=r"model.npz: could not be written \(No space left on device\)"):
        with open(small_disk / "filler", "wb") as handle:  # the disk full to the last byte
            with contextlib.suppress(OSError):
                handle.write(b"\0" * (2 << 20))
        fit(binary_data, max_rounds=2).save(small_disk / "model.npz")


def test_a_checkpoint_the_disk_refuses_in_the_background_stops_the_run_in_one_line(small_disk, binary_data):
    """Checkpoints are written while the rounds go on; a write that fails is raised in the
    run (at the next checkpoint or at its end), naming the file, and nothing is left half."""
    with open(small_disk / "filler", "wb") as handle:  # the disk full to the last byte
        with contextlib.suppress(OSError):
            handle.write(b"\0" * (2 << 20))
    with pytest.raises(pg.OutputError, match=r"checkpoint-\d{9}\.npz: could not be written \(No space"):
        fit(binary_data, checkpoint_dir=small_disk / "runs", checkpoint_every=1)
    assert sorted(p.name for p in (small_disk / "runs").iterdir()) == []


def test_a_checkpoint_log_the_disk_refuses_stops_the_run_and_its_whole_records_resume(
    small_disk, binary_data
):
    """The disk fills while checkpoints are appended to a log: one line naming the log,
    and the records before the refused one resume exactly once there is room again."""
    filler = small_disk / "filler"

    def fill_the_disk(record):
        if record["round"] == 12:
            with open(filler, "wb") as handle, contextlib.suppress(OSError):
                handle.write(b"\0" * (2 << 20))

    folder = small_disk / "runs"
    with pytest.raises(pg.OutputError, match=r"checkpoint-000000001\.log: could not be written \(No space"):
        fit(binary_data, checkpoint_dir=folder, checkpoint_every=1, callbacks=[fill_the_disk])
    filler.unlink()
    assert 12 <= newest_checkpointed_round(folder) < 30  # the page the log had, filled
    resumed = fit(binary_data, checkpoint_dir=folder, resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_rows_in_messages_say_they_count_from_1(tmp_path):
    X = np.ones((4, 2))
    X[1, 1] = np.inf  # the second row
    with pytest.raises(pg.DataError, match=r"first at row 2, column 1 \(infinite\); rows count from 1"):
        pg.Dataset(X, np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(pg.DataError, match=r"first at row 2 \(counting from 1\)"):
        pg.Dataset(np.ones((3, 2)), np.array(["a", None, "b"], dtype=object))


# -- elastic to the edges ----------------------------------------------------------------------


@pytest.mark.parametrize(("max_restarts", "final"), [(1, 3), (0, 2)], ids=["replaced", "given-up"])
def test_a_worker_dying_while_started_for_growth_is_replaced_or_given_up(
    regression_data, max_restarts, final
):
    reference = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", workers=2, **GD)
    killed: ClassVar[list[int]] = []
    with LocalEngine(2, max_restarts=max_restarts) as engine:

        def grow_then_kill(record):
            if record["round"] == 1:
                engine.resize(3, wait=False)  # started at the next boundary, used once ready
            elif record["round"] == 2 and not killed:
                killed.append(engine.pids[2])
                os.kill(killed[0], signal.SIGKILL)
                time.sleep(0.3)
            elif record["round"] == 3 and max_restarts:  # its replacement, started at round 3
                deadline = time.monotonic() + 60
                while not engine._ready(2) and time.monotonic() < deadline:
                    time.sleep(0.05)

        run = pg.train(
            pg.models.LinearRegression(), regression_data, engine=engine, callbacks=[grow_then_kill], **GD
        )
        assert run.num_workers == final and killed[0] not in engine.pids
    assert relative_error(run.params, reference.params) <= 1e-12
    (change,) = run.changes
    if final == 2:
        assert (change.before, change.after) == (2, 2) and "given up" in change.cause
        assert "died before they could be used" in change.cause
    else:
        assert (change.before, change.after) == (2, 3)


class LosesAWorkerWhilePlacing(LocalEngine):
    """A local engine whose worker 1 is killed once, while the data is being placed."""

    killed: ClassVar[list[int]] = []

    def _place(self, dataset, plan):
        super()._place(dataset, plan)
        if not self.killed:
            self.killed.append(self.pids[1])
            os.kill(self.pids[1], signal.SIGKILL)
            self._workers[1].process.wait()


def test_an_elastic_run_losing_a_worker_while_starting_shrinks(regression_data):
    reference = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", workers=2, **GD)
    with LosesAWorkerWhilePlacing(2) as engine:
        run = pg.train(pg.models.LinearRegression(), regression_data, engine=engine, workers=(1, 2), **GD)
        assert run.num_workers == 1 and len(engine.pids) == 1
    assert relative_error(run.params, reference.params) <= 1e-12
    (change,) = run.changes
    assert (change.round, change.before, change.after) == (0, 2, 1) and "worker 1 died" in change.cause
    with LosesAWorkerWhilePlacing(2) as engine:
        engine.killed = []
        with pytest.raises(WorkerLost, match="worker 1 died"):  # a fixed count cannot shrink
            pg.train(pg.models.LinearRegression(), regression_data, engine=engine, workers=2, **GD)


def test_local_sgd_resumed_on_a_count_that_changes_its_rounds_is_refused_with_the_reason(
    tmp_path, binary_data
):
    options = dict(strategy=pg.LocalSGD(local_steps=2, batch_size=16), engine="serial", epochs=2, tol=0)
    whole = pg.train(pg.models.LogisticRegression(), binary_data, workers=1, **options)
    pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        workers=1,
        max_rounds=4,
        checkpoint_dir=tmp_path,
        **options,
    )
    resume = dict(checkpoint_dir=tmp_path, resume=True, **options)
    refused = r"the run has 19 rounds on 1 worker.*5 on 4.*resume with workers=1"
    with pytest.raises(pg.ConfigError, match=refused):
        pg.train(pg.models.LogisticRegression(), binary_data, workers=4, **resume)
    resumed = pg.train(pg.models.LogisticRegression(), binary_data, workers=1, **resume)
    assert relative_error(resumed.params, whole.params) <= 1e-12
