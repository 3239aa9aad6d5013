"""How checkpoints are written: the lean ``.npz`` encoder, the run's encoder that keeps the
history's rows, the writer's one thread, and pruning by the files the run wrote."""

from __future__ import annotations

import errno
import io
import os
import threading
import time
import zipfile
from typing import NamedTuple

import numpy as np
import pytest
from conftest import newest_checkpointed_round, relative_error, rewrite_meta
from numpy.lib import format as npy_format

import paragrad as pg
from paragrad.core.npz import npy_header, npz_bytes
from paragrad.training import checkpoint, checkpointing
from paragrad.training.checkpoint import (
    CheckpointEncoder,
    CheckpointWarning,
    TrainingState,
    load_latest_checkpoint,
    save_checkpoint,
)
from paragrad.training.checkpointing import CheckpointWriter
from paragrad.training.run import HISTORY_KEYS

ARRAYS = {
    "params": np.linspace(-1.0, 1.0, 101),
    "history": np.arange(39.0).reshape(3, 13) / 7,
    "meta": np.array('{"a": "\u00e9t\u00e9", "b": [1, 2]}'),  # 0-d text, past latin-1
    "count": np.array(7, dtype=np.int64),
    "flags": np.array([True, False, True]),
    "empty": np.zeros((0, 13)),
    "worker_state.residual": np.arange(14.0).reshape(7, 2).T,  # Fortran-ordered
    "small": np.arange(5, dtype=np.float32),
}


def fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


def writer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "paragrad-checkpoint"]


# -- the lean .npz encoder ----------------------------------------------------------------------


def test_npz_bytes_read_back_bit_for_bit_with_numpy():
    content = npz_bytes(ARRAYS)
    assert zipfile.ZipFile(io.BytesIO(content)).testzip() is None  # every entry's CRC holds
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        assert archive.files == list(ARRAYS)
        for name, array in ARRAYS.items():
            read = archive[name]
            assert (read.dtype, read.shape) == (array.dtype, array.shape), name
            assert read.tobytes() == array.tobytes(), name


def test_npy_headers_are_numpys_own_for_the_arrays_in_c_order():
    for array in (np.array(value, order="C") for value in ARRAYS.values()):
        expected = io.BytesIO()
        npy_format.write_array_header_1_0(expected, npy_format.header_data_from_array_1_0(array))
        assert npy_header(array) == expected.getvalue()


def test_npz_bytes_refuses_python_objects():
    with pytest.raises(ValueError, match="objects"):
        npz_bytes({"names": np.array(["a", None], dtype=object)})


# -- a run's encoder ----------------------------------------------------------------------------


class Moments(NamedTuple):
    mean: np.ndarray
    step: np.ndarray


def state_at(round_index: int, history: list[dict[str, float]]) -> TrainingState:
    params = np.full(4, 0.5**round_index)
    opt_state = Moments(params * 3, np.array(round_index))
    convergence = {"previous_epoch_loss": 1.0 / (round_index + 1), "num_epoch_losses": 0, "converged": False}
    state = TrainingState(
        round_index, params, opt_state, history, convergence, None, {"seed": 1, "k": [1, 2]}
    )
    state.run_id, state.fingerprint = "run-a", "data-b"
    return state


def test_a_runs_encoder_writes_what_a_fresh_one_writes_as_the_history_grows(tmp_path):
    """Rows kept from one checkpoint to the next give the same bytes as rows made afresh,
    and every file reads back as the state it was made of."""
    encoder, history = CheckpointEncoder(HISTORY_KEYS), []
    for round_index in range(1, 40):
        history.append({key: round_index + 0.25 * k for k, key in enumerate(HISTORY_KEYS)})
        state = state_at(round_index, history)
        content = encoder.encode(state)
        assert content == CheckpointEncoder(HISTORY_KEYS).encode(state)
    (tmp_path / "checkpoint-000000039.npz").write_bytes(content)
    read = load_latest_checkpoint(tmp_path, HISTORY_KEYS, Moments)
    assert read is not None and read.round == 39 and (read.run_id, read.fingerprint) == ("run-a", "data-b")
    np.testing.assert_array_equal(read.params, state.params)
    np.testing.assert_array_equal(read.opt_state.mean, state.opt_state.mean)
    assert read.convergence == state.convergence and read.config == state.config
    assert [record["loss"] for record in read.history] == [record["loss"] for record in history]


def test_save_checkpoint_writes_the_encoders_file_and_keeps_the_newest(tmp_path):
    history: list[dict[str, float]] = []
    for round_index in range(1, 6):
        history.append(dict.fromkeys(HISTORY_KEYS, float(round_index)))
        path = save_checkpoint(tmp_path, state_at(round_index, history), HISTORY_KEYS, keep=2)
    assert path.read_bytes() == CheckpointEncoder(HISTORY_KEYS).encode(state_at(5, history))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000004.npz",
        "checkpoint-000000005.npz",
    ]


def test_a_checkpoint_resumes_exactly_after_resuming_once_already(tmp_path, binary_data):
    """A resumed run's files (its encoder starting from a read history) resume exactly too."""
    whole = fit(binary_data)
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=9)
    fit(binary_data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=1, max_rounds=17)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert relative_error(resumed.params, whole.params) <= 1e-12
    np.testing.assert_array_equal([r["loss"] for r in resumed.history], [r["loss"] for r in whole.history])


# -- the writer's thread ------------------------------------------------------------------------


def test_the_writer_runs_writes_in_order_on_one_thread_and_ends_with_close():
    writer, seen = CheckpointWriter(), []
    for index in range(5):
        writer.submit(lambda index=index: seen.append((index, threading.current_thread())))
    writer.close()
    assert [index for index, _ in seen] == list(range(5))
    assert len({thread for _, thread in seen}) == 1 and not seen[0][1].is_alive()
    writer.close()  # twice: nothing to do


def test_a_failed_write_is_raised_at_the_next_write_and_at_close():
    def fail() -> None:
        raise OSError("the disk is gone")

    writer = CheckpointWriter()
    writer.submit(fail)
    with pytest.raises(OSError, match="the disk is gone"):
        writer.submit(lambda: None)
    writer.submit(fail)
    with pytest.raises(OSError, match="the disk is gone"):
        writer.close()
    assert not writer_threads()


def test_no_writer_thread_outlives_a_run_ended_or_interrupted(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path / "ended", checkpoint_every=1)
    assert not writer_threads()

    def interrupt(record):
        if record["round"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(binary_data, checkpoint_dir=tmp_path / "interrupted", checkpoint_every=1, callbacks=[interrupt])
    assert not writer_threads()
    # The checkpoints written before the interruption are whole: the newest resumes.
    names = sorted(p.name for p in (tmp_path / "interrupted").iterdir())
    assert names == ["checkpoint-000000001.log", "checkpoint-000000001.npz"]
    assert newest_checkpointed_round(tmp_path / "interrupted") == 5
    resumed = fit(binary_data, checkpoint_dir=tmp_path / "interrupted", resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_pruning_removes_only_files_the_run_knows_as_its_own(tmp_path, binary_data, a_file_per_checkpoint):
    """A file put beside the run's while it runs, named like a checkpoint, is left alone."""
    stranger = tmp_path / "checkpoint-000000000.npz"

    def drop_a_file(record):
        if record["round"] == 3:
            stranger.write_bytes(b"not ours")

    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, keep_checkpoints=2, callbacks=[drop_a_file])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-000000000.npz", "checkpoint-000000029.npz", "checkpoint-000000030.npz"]
    assert stranger.read_bytes() == b"not ours"


@pytest.mark.parametrize("before_the_end", [5, 10], ids=["mid-epoch", "at-an-epoch-end"])
def test_a_run_resumed_within_its_last_epoch_converges_at_the_same_round(
    tmp_path, binary_data, before_the_end
):
    """The epoch's losses so far come back from the checkpoint's history (its state keeps
    only their count, none at an epoch's end): the epoch's mean, and so the round the run
    converges at, are the uninterrupted run's."""
    whole = fit(binary_data, epochs=30, tol=3e-3)
    assert whole.converged and len(whole.history) % 10 == 0  # 10 rounds an epoch, at an epoch's end
    stop = len(whole.history) - before_the_end
    with pytest.warns(pg.ConvergenceWarning):
        fit(binary_data, epochs=30, tol=3e-3, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=stop)
    resumed = fit(binary_data, epochs=30, tol=3e-3, checkpoint_dir=tmp_path, resume=True)
    assert resumed.converged and len(resumed.history) == len(whole.history)
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_checkpoint_of_format_4_with_the_losses_themselves_resumes_exactly(
    tmp_path, binary_data, a_file_per_checkpoint
):
    whole = fit(binary_data, epochs=30, tol=3e-3)
    stop = len(whole.history) - 5
    with pytest.warns(pg.ConvergenceWarning):
        fit(binary_data, epochs=30, tol=3e-3, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=stop)
    newest = sorted(tmp_path.glob("checkpoint-*.npz"))[-1]
    convergence = dict(checkpoint.meta_of(newest)["convergence"])
    count = convergence.pop("num_epoch_losses")
    assert count == 5
    with np.load(newest) as archive:
        convergence["epoch_losses"] = archive["history"][-count:, HISTORY_KEYS.index("loss")].tolist()
    rewrite_meta(newest, version=4, convergence=convergence)
    resumed = fit(binary_data, epochs=30, tol=3e-3, checkpoint_dir=tmp_path, resume=True)
    assert resumed.converged and len(resumed.history) == len(whole.history)
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_checkpoint_counting_more_losses_than_its_history_is_skipped_as_damaged(
    tmp_path, binary_data, a_file_per_checkpoint
):
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=4)
    newest = sorted(tmp_path.glob("checkpoint-*.npz"))[-1]
    convergence = checkpoint.meta_of(newest)["convergence"]
    rewrite_meta(newest, convergence={**convergence, "num_epoch_losses": 7})
    with pytest.warns(CheckpointWarning, match="counting 7 of the epoch's losses in 4 rounds"):
        resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_a_convergence_state_of_either_form_restores_the_epochs_losses():
    from paragrad.training.convergence import ConvergenceCheck

    history = [{"loss": loss} for loss in (0.9, 0.8, 0.7, 0.65, 0.6)]
    check = ConvergenceCheck(1e-3, stochastic=True)
    check.previous_epoch_loss, check.epoch_losses = 0.85, [0.7, 0.65, 0.6]
    for state in (check.state(), {"previous_epoch_loss": 0.85, "epoch_losses": [0.7, 0.65, 0.6]}):
        restored = ConvergenceCheck(1e-3, stochastic=True)
        restored.restore(state, history)
        assert (restored.previous_epoch_loss, restored.epoch_losses) == (0.85, [0.7, 0.65, 0.6])
    assert check.state() == {"previous_epoch_loss": 0.85, "num_epoch_losses": 3}


# -- syncing to the device ----------------------------------------------------------------------


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")


def failing_fsync(monkeypatch, fails, error):
    """os.fsync raising ``error`` (an errno) where ``fails(path)`` says so, the real one else."""
    fsync = os.fsync

    def maybe_failing(fd):
        if fails(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(error, os.strerror(error))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", maybe_failing)


class DeviceLog:
    """Which checkpoints the device holds, watched through the real system calls: a file
    whose bytes were synced, then its directory after the rename. ``check`` raises if a
    removal leaves none of them in the directory (a power cut then would leave no intact
    checkpoint)."""

    def __init__(self, monkeypatch, directory):
        self.directory, self.pending, self.durable, self.removed = directory, set(), set(), 0
        self.file_syncs = 0
        fsync, unlink = os.fsync, os.unlink

        def watched_fsync(fd):
            fsync(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.isdir(path):
                self.durable |= {name for name in self.pending if (directory / name).exists()}
            else:
                self.file_syncs += 1
                name = os.path.basename(path)
                self.pending.add(name.split(".")[1] + ".npz" if name.endswith(".tmp") else name)

        def watched_unlink(path, *args, **kwargs):
            unlink(path, *args, **kwargs)
            if os.path.dirname(os.fspath(path)) == os.fspath(directory) and str(path).endswith(".npz"):
                self.removed += 1
                assert self.durable & set(os.listdir(directory)), "no synced checkpoint left"

        monkeypatch.setattr(os, "fsync", watched_fsync)
        monkeypatch.setattr(os, "unlink", watched_unlink)

    def power_cut(self, into):
        """Copy the directory as a power cut could leave it: the files the device holds
        whole, the others empty (their bytes never reached it)."""
        into.mkdir()
        for name in os.listdir(self.directory):
            try:
                content = (self.directory / name).read_bytes() if name in self.durable else b""
            except FileNotFoundError:  # removed by the writer meanwhile
                continue
            (into / name).write_bytes(content)


@linux_only
def test_checkpoints_reach_the_device_once_a_second_and_a_synced_one_is_always_kept(
    tmp_path, binary_data, monkeypatch, a_file_per_checkpoint
):
    """A checkpoint every round, each a file, syncs a file at most every SYNC_EVERY_S (and
    the last at the end); a removal never leaves the directory without a synced file, so a
    power cut at any moment leaves one that resumes exactly."""
    monkeypatch.setattr(checkpointing, "SYNC_EVERY_S", 0.05)
    folder = tmp_path / "run"
    log = DeviceLog(monkeypatch, folder)

    def slow_rounds_and_a_power_cut(record):
        if record["round"] in (10, 20):
            time.sleep(0.06)
        if record["round"] == 25:
            log.power_cut(tmp_path / "after-the-cut")

    run = fit(binary_data, checkpoint_dir=folder, checkpoint_every=1, callbacks=[slow_rounds_and_a_power_cut])
    assert run.checkpoints_written == 31 and log.removed >= 25
    assert 3 <= log.file_syncs <= 5  # the first file, one after each slow round, the last
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"checkpoint-{r:09d}.npz" for r in (28, 29, 30)] and names[-1] in log.durable

    cut = tmp_path / "after-the-cut"
    damaged = [p for p in cut.iterdir() if p.stat().st_size == 0]
    assert damaged and len(damaged) < len(list(cut.iterdir()))
    with pytest.warns(CheckpointWarning, match="skipped a damaged checkpoint"):
        resumed = fit(binary_data, checkpoint_dir=cut, resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


@linux_only
@pytest.mark.parametrize("error", [errno.EINVAL, errno.EOPNOTSUPP], ids=["EINVAL", "EOPNOTSUPP"])
def test_a_file_system_that_cannot_sync_a_directory_still_takes_checkpoints(
    tmp_path, binary_data, monkeypatch, error
):
    """Some network and FUSE file systems refuse to sync a directory: the files are synced,
    the run goes on, and it resumes exactly."""
    failing_fsync(monkeypatch, os.path.isdir, error)
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=9)
    assert newest_checkpointed_round(tmp_path) == 9
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


@linux_only
def test_a_failed_sync_names_the_file_and_no_later_sync_removes_the_synced_checkpoint(
    tmp_path, binary_data, monkeypatch, a_file_per_checkpoint
):
    """The last file's sync fails at the end (EIO): one error naming it, and the files are
    left as they are: a second sync of the same file may succeed without its data on the
    device (Linux reports a lost write once), so the checkpoint synced before stays."""
    monkeypatch.setattr(checkpointing, "SYNC_EVERY_S", 0.05)
    failed = []

    def last_file_once(path):
        if path.endswith("checkpoint-000000030.npz") and not failed:
            failed.append(path)
            return True
        return False

    failing_fsync(monkeypatch, last_file_once, errno.EIO)
    slow_round = [lambda record: time.sleep(0.06) if record["round"] == 20 else None]
    with pytest.raises(pg.errors.OutputError, match=r"checkpoint-000000030.npz: could not be synced"):
        fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, callbacks=slow_round)
    names = sorted(p.name for p in tmp_path.iterdir())
    synced_before = "checkpoint-000000021.npz"  # the first file written after the slow round
    assert names == [synced_before, *(f"checkpoint-{r:09d}.npz" for r in (28, 29, 30))]


@linux_only
def test_a_file_system_refusing_a_files_sync_names_the_checkpoint(tmp_path, binary_data, monkeypatch):
    failing_fsync(monkeypatch, lambda path: path.endswith(".tmp"), errno.EROFS)
    refused = r"checkpoint-000000001.npz: could not be synced to the device \(Read-only file system\)"
    with pytest.raises(pg.errors.OutputError, match=refused):
        fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert not list(tmp_path.glob(".*.tmp"))
