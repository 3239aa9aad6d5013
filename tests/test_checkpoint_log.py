"""The log beside a checkpoint file: its records read back bit for bit, a damaged end is
found, and a run resumes exactly from any whole record, after a power cut too."""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
from conftest import newest_checkpointed_round, relative_error

import paragrad as pg
from paragrad.training import checkpoint_log, checkpointing
from paragrad.training.checkpoint import CheckpointWarning, TrainingState, checkpoint_name
from paragrad.training.checkpoint_log import log_of, read_log, record_bytes
from paragrad.training.run import HISTORY_KEYS

ARRAYS = {
    "params": np.linspace(-1.0, 1.0, 101),
    "history": np.arange(26.0).reshape(2, 13) / 7,
    "opt_step": np.array(7, dtype=np.int64),  # 0-d stays 0-d
    "opt_flags": np.array([True, False, True]),
    "empty": np.zeros((0, 13)),
    "worker_state.residual": np.arange(14.0).reshape(7, 2).T,  # Fortran-ordered
    "small": np.arange(5, dtype=np.float32),
}
CONVERGENCE = {"previous_epoch_loss": 0.25, "num_epoch_losses": 3}
OF = ("run-a", 1)  # the file a log continues: its run and round


class Moments(NamedTuple):
    mean: np.ndarray
    step: np.ndarray


def fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


def rounds_taken_from(run, resumed) -> int:
    """How many of ``resumed``'s history records it took from ``run``'s checkpoint (their
    times are that run's; the rounds it ran again took times of their own)."""
    same = [a["wall_s"] == b["wall_s"] for a, b in zip(run.history, resumed.history, strict=True)]
    return same.index(False) if False in same else len(same)


def test_records_read_back_bit_for_bit(tmp_path):
    log = tmp_path / "checkpoint-000000001.log"
    log.write_bytes(
        record_bytes(OF, 2, CONVERGENCE, ARRAYS) + record_bytes(OF, 3, {}, {"params": ARRAYS["params"]})
    )
    records, problem = read_log(log)
    assert problem is None and [(r.of, r.round) for r in records] == [(OF, 2), (OF, 3)]
    assert records[0].convergence == CONVERGENCE and records[1].convergence == {}
    assert list(records[0].arrays) == list(ARRAYS)
    for name, array in ARRAYS.items():
        read = records[0].arrays[name]
        assert (read.dtype, read.shape) == (array.dtype, array.shape), name
        np.testing.assert_array_equal(read, array)
        assert read.flags.writeable, name  # a resumed run may change them in place
    assert read_log(tmp_path / "none.log") == ([], None)


def test_a_damaged_end_is_found_wherever_it_is(tmp_path):
    """Cut at every byte of the last record, garbled, or zeros where the device lost it:
    the records before it are the log, and the reader says what is wrong."""
    first, last = record_bytes(OF, 2, CONVERGENCE, ARRAYS), record_bytes(OF, 3, CONVERGENCE, ARRAYS)
    log = tmp_path / "checkpoint-000000001.log"
    for cut in range(len(last)):
        log.write_bytes(first + last[:cut])
        records, problem = read_log(log)
        assert [r.round for r in records] == [2] and problem == (None if cut == 0 else "cut short"), cut
    flipped = bytearray(last)
    flipped[len(flipped) // 2] ^= 1
    for end, problem in [(bytes(flipped), "checksum mismatch"), (b"\0" * len(last), "not a record")]:
        log.write_bytes(first + end)
        assert [r.round for r in read_log(log)[0]] == [2] and read_log(log)[1] == problem


def test_every_record_resumes_exactly(tmp_path, binary_data):
    """A run checkpointing every round writes one file and its log; the log cut after any
    record (or within one) resumes to the uninterrupted run's parameters and history."""
    whole = fit(binary_data)
    folder = tmp_path / "run"
    run = fit(binary_data, checkpoint_dir=folder, checkpoint_every=1)
    assert run.checkpoints_written == 31 and f"{run.checkpoint_s:.3f} s (31 written)" in run.summary()
    assert "resumed" not in run.summary()
    assert sorted(p.name for p in folder.iterdir()) == [f"checkpoint-{1:09d}.{end}" for end in ("log", "npz")]
    content = log_of(folder / "checkpoint-000000001.npz").read_bytes()
    records, _ = read_log(folder / "checkpoint-000000001.log")
    assert [r.round for r in records] == [*range(2, 31), 30]  # every round, and the final one
    sizes = [len(record_bytes(r.of, r.round, r.convergence, r.arrays)) for r in records]
    ends = np.cumsum([0, *sizes])
    for kept, extra in [(0, 0), (6, 0), (6, 40), (17, 1), (len(records), 0)]:
        cut = tmp_path / f"cut-{kept}-{extra}"
        cut.mkdir()
        shutil.copy(folder / "checkpoint-000000001.npz", cut)
        (cut / "checkpoint-000000001.log").write_bytes(content[: ends[kept] + extra])
        expected_round = records[kept - 1].round if kept else 1
        assert newest_checkpointed_round(cut) == expected_round
        if extra:
            with pytest.warns(CheckpointWarning, match=f"cut short.*resuming at round {expected_round}"):
                resumed = fit(binary_data, checkpoint_dir=cut, resume=True)
        else:
            resumed = fit(binary_data, checkpoint_dir=cut, resume=True)
        assert relative_error(resumed.params, whole.params) <= 1e-12
        assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
        assert rounds_taken_from(run, resumed) == expected_round
        assert f"resumed       at round {expected_round}, from the checkpoints in {cut} " in resumed.summary()


def test_a_full_log_starts_a_file_and_pruning_takes_the_logs_with_their_files(
    tmp_path, binary_data, monkeypatch
):
    monkeypatch.setattr(checkpoint_log, "LOG_LIMIT_BYTES", 2000)  # about four records a log
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, keep_checkpoints=2)
    files = sorted(tmp_path.glob("checkpoint-*.npz"))
    logs = sorted(tmp_path.glob("checkpoint-*.log"))
    assert len(files) == 2 and {log.with_suffix(".npz") for log in logs} <= set(files)
    assert all(len(read_log(log)[0]) <= 4 for log in logs) and newest_checkpointed_round(tmp_path) == 30
    (tmp_path / "older").mkdir()  # the older file alone, its log gone: it resumes exactly too
    shutil.copy(files[0], tmp_path / "older")
    for folder in (tmp_path, tmp_path / "older"):
        resumed = fit(binary_data, checkpoint_dir=folder, resume=True)
        assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_a_file_written_again_drops_the_log_of_the_earlier_one(tmp_path, binary_data):
    """A resumed run that writes a file of the round it resumed from replaces the file,
    and the earlier file's log (later rounds of the same run, the end of it damaged) goes."""
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=9)
    log = tmp_path / "checkpoint-000000001.log"
    log.write_bytes(b"\0" * 64)  # its records lost
    with pytest.warns(CheckpointWarning, match="not a record.*resuming at round 1"):
        fit(binary_data, checkpoint_dir=tmp_path, resume=True, max_rounds=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000000001.npz"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
def test_a_power_cut_loses_only_the_logs_unsynced_end(tmp_path, binary_data, monkeypatch):
    """The log is synced at most every SYNC_EVERY_S, in the background, and at the end; a
    power cut keeps the records synced before it (the rest read as zeros here), and the run
    resumes exactly from the last of them."""
    # Longer than rounds 21-25 take, with room for a loaded machine; shorter than the pauses
    monkeypatch.setattr(checkpointing, "SYNC_EVERY_S", 1.0)
    folder, cut = tmp_path / "run", tmp_path / "after-the-cut"
    synced: list[int] = []  # the log's size at each of its syncs
    fsync = os.fsync

    def watched_fsync(fd):
        size = os.fstat(fd).st_size  # on the device once synced (records appended meanwhile may not be)
        fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
            synced.append(size)

    def slow_rounds_and_a_power_cut(record):
        if record["round"] in (10, 20):
            time.sleep(1.05)
        if record["round"] == 25:
            cut.mkdir()
            shutil.copy(folder / "checkpoint-000000001.npz", cut)  # synced as it was written
            content = (folder / "checkpoint-000000001.log").read_bytes()
            kept = synced[-1]
            (cut / "checkpoint-000000001.log").write_bytes(content[:kept] + bytes(len(content) - kept))

    monkeypatch.setattr(os, "fsync", watched_fsync)
    run = fit(binary_data, checkpoint_dir=folder, checkpoint_every=1, callbacks=[slow_rounds_and_a_power_cut])
    assert 3 <= len(synced) <= 5  # after each slow round, and at the end
    assert synced[-1] == (folder / "checkpoint-000000001.log").stat().st_size
    on_device = newest_checkpointed_round(cut)
    assert 11 <= on_device < 25  # synced after round 10's pause, not since rounds 21-25
    with pytest.warns(CheckpointWarning, match=f"not a record.*resuming at round {on_device}"):
        resumed = fit(binary_data, checkpoint_dir=cut, resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12
    assert rounds_taken_from(run, resumed) == on_device


def test_a_log_beside_another_runs_file_is_not_taken_up(tmp_path, binary_data):
    """Logs are named after their file, and every run's first file has the same name: a
    log beside another run's file (files copied back without their logs) is refused."""
    fit(binary_data, checkpoint_dir=tmp_path / "a", checkpoint_every=1, max_rounds=9)
    fit(binary_data, checkpoint_dir=tmp_path / "b", checkpoint_every=1, max_rounds=1)
    shutil.copy(tmp_path / "a" / "checkpoint-000000001.log", tmp_path / "b")
    with pytest.warns(CheckpointWarning, match="a record of another checkpoint file.*resuming at round 1"):
        resumed = fit(binary_data, checkpoint_dir=tmp_path / "b", resume=True)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_an_unreadable_log_leaves_its_file_to_resume_from(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=9)
    log = tmp_path / "checkpoint-000000001.log"
    log.unlink()
    log.mkdir()  # in the log's place: not a file
    with pytest.warns(CheckpointWarning, match="could not be read.*resuming at round 1"):
        resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=100)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_a_newer_file_skipped_as_damaged_is_neither_synced_nor_kept_in_place_of_the_run(
    tmp_path, binary_data, monkeypatch
):
    """Resume skips a damaged newer file whose metadata still reads: the resumed run syncs
    the log it wrote, not that file's, and keeps its own files, the damaged one left."""
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=10)
    monkeypatch.setattr(checkpoint_log, "NEW_FILE_EVERY_S", 0.0)
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=10, max_rounds=20, resume=True)
    monkeypatch.undo()
    damaged = tmp_path / "checkpoint-000000020.npz"
    with np.load(damaged) as archive:
        arrays = dict(archive)
    arrays["params"] = np.zeros_like(arrays["params"])  # the checksum no longer holds
    np.savez(damaged, **arrays)
    synced = []
    sync = checkpointing.sync_to_device
    monkeypatch.setattr(checkpointing, "sync_to_device", lambda path: (synced.append(path.name), sync(path)))
    with pytest.warns(CheckpointWarning, match="checkpoint-000000020.npz: skipped a damaged checkpoint"):
        resumed = fit(
            binary_data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=1, keep_checkpoints=1
        )
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12
    assert "checkpoint-000000011.log" in synced and "checkpoint-000000020.log" not in synced
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-000000011.log", "checkpoint-000000011.npz", "checkpoint-000000020.npz"]
    assert newest_checkpointed_round(tmp_path) == 30


class Clocked:
    """A run's checkpoints taken at the times given (its clock controlled), with the
    files and logs synced to the device recorded by name."""

    def __init__(self, folder, monkeypatch, keep):
        self.clock, self.synced, self.history = [0.0], [], []
        monkeypatch.setattr(checkpointing, "time", SimpleNamespace(monotonic=lambda: self.clock[0]))
        sync = checkpointing.sync_to_device
        monkeypatch.setattr(
            checkpointing, "sync_to_device", lambda path: (self.synced.append(path.name), sync(path))
        )
        self.checkpoints = checkpointing.Checkpointing.parse(folder, 1, keep=keep).prepare(resume=False)
        self.checkpoints.adopt(None, ("data",), None)

    def take(self, now):
        self.clock[0] = now
        self.history.append(dict.fromkeys(HISTORY_KEYS, float(len(self.history))))
        params = np.full(3, now)
        state = TrainingState(
            len(self.history), params, Moments(params, np.array(0)), self.history, {}, None, {}
        )
        self.checkpoints.write(state, HISTORY_KEYS)


def test_a_run_keeping_one_file_ends_with_one(tmp_path, monkeypatch):
    """A file written within a second of the last sync keeps the older, synced, one; once
    its own log is synced the older one goes, and at the end only the newest is left."""
    run = Clocked(tmp_path, monkeypatch, keep=1)
    for now in (0.0, 59.6, 60.1, 61.2):  # a file, a record (synced), a file (not), a record (synced)
        run.take(now)
        if now == 60.1:
            run.checkpoints.writer.wait()
            assert sorted(p.name for p in tmp_path.glob("*.npz")) == [checkpoint_name(1), checkpoint_name(3)]
    run.checkpoints.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000000003.log", checkpoint_name(3)]


def test_an_interrupted_run_still_syncs_its_log_and_keeps_what_it_should(tmp_path, monkeypatch):
    """Ctrl-C while a record's sync waits to be handed to the writer, or while the end
    waits for the writer: finish (called again, as the round loop does) syncs the log and
    leaves ``keep`` files."""
    run = Clocked(tmp_path / "handing-over", monkeypatch, keep=1)
    wait, interrupt = checkpointing.CheckpointWriter.wait, [False]

    def interrupted_wait(writer):
        if interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt
        wait(writer)

    monkeypatch.setattr(checkpointing.CheckpointWriter, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        for now in (0.0, 59.6, 60.1, 60.5, 61.2):  # the last record's sync is due, and interrupted
            interrupt[0] = now == 61.2
            run.take(now)
    run.checkpoints.finish()
    assert run.synced[-3:] == ["checkpoint-000000003.log", checkpoint_name(3), "handing-over"]
    assert sorted(p.name for p in (tmp_path / "handing-over").iterdir()) == [
        "checkpoint-000000003.log",
        checkpoint_name(3),
    ]

    run = Clocked(tmp_path / "at-the-end", monkeypatch, keep=1)
    for now in (0.0, 1.5, 1.6, 1.7):  # a file, a record (synced), two records (not yet)
        run.take(now)
    interrupt[0] = True  # in finish's wait for the writer
    with pytest.raises(KeyboardInterrupt):
        run.checkpoints.finish()
    run.checkpoints.finish()
    assert run.synced[-3:] == ["checkpoint-000000001.log", checkpoint_name(1), "at-the-end"]


def test_a_record_larger_than_a_log_holds_is_never_made(tmp_path, binary_data, monkeypatch):
    """A model whose checkpoint would pass the log's limit writes files, without making
    (and throwing away) the record first."""
    monkeypatch.setattr(checkpoint_log, "LOG_LIMIT_BYTES", 100)  # less than the parameters
    made = []
    monkeypatch.setattr(checkpointing, "record_bytes", lambda *args: made.append(args))
    run = fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, keep_checkpoints=2)
    assert run.checkpoints_written == 31 and not made and not list(tmp_path.glob("*.log"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{r:09d}.npz" for r in (29, 30)]
