"""When and where a run writes checkpoints, and the writer that writes them off the
rounds' critical path.

A checkpoint is a file of the run's whole state, or a record appended to the newest file's
log (:mod:`~paragrad.training.checkpoint_log`): a checkpoint goes in a file of its own when
the newest file is a minute old or its log would pass 4 MiB, else in the log. A file is
written in the background: the run takes its arrays (copies of a few vectors, the history's
rows, the metadata: see :class:`~paragrad.training.checkpoint.CheckpointEncoder`) and goes on
with its rounds while one thread of the run's own packs them, writes and renames the file,
and removes the run's older files with their logs. A record (a few kilobytes for a linear
model) is appended by the run's own thread in one write, less work than handing it over.

A renamed file and a record appended are whole for any process, so a run killed at any
moment resumes from its newest checkpoint. Waiting for the device to hold them, which
survives a power cut, costs more than a short round (0.2-3 ms), so that wait is taken in
the background at most once every :data:`SYNC_EVERY_S`, and at the run's end: a run that
checkpoints every round syncs its newest file and log once a second. The last file synced is
kept until a newer one is (one file past ``keep_checkpoints`` for a while), so a power cut
leaves at least one intact checkpoint; the newer files and the end of a log it damaged are
skipped at resume with a warning.

At most one write is in flight; the next waits for it, so the files still appear in order
(a log is opened once its file is renamed) and a failure (a full disk) is raised in the run
at the next write or at its end. The run knows the files it wrote (and, resumed, those its
run wrote before), so pruning neither lists the directory nor reads a file.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.core.atomic import remove_stale_temporaries, sync_to_device
from paragrad.errors import ConfigError, check_positive_int, in_terms, option
from paragrad.training.checkpoint import (
    CHECKPOINT_PATTERN,
    READABLE_VERSIONS,
    CheckpointEncoder,
    TrainingState,
    checkpoint_name,
    format_version,
    meta_of,
    owned_checkpoints,
    sealed_npz,
)
from paragrad.training.checkpoint_log import LogWriter, record_bytes, remove_checkpoint, write_checkpoint_file

SYNC_EVERY_S = 1.0  # the longest a written checkpoint waits to be synced to the device


class CheckpointWriter:
    """One thread for a run's writes, one write at a time; a write's error is raised at
    the next wait. The thread starts with the first write and ends at :meth:`close`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._ready = threading.Condition()
        self._job: Callable[[], object] | None = None
        self._busy = False  # a job handed over and not yet done
        self._closing = False
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], object]) -> None:
        """Start ``write`` once the one before has finished (raising its error, if any)."""
        self.wait()
        with self._ready:
            self._job, self._busy = write, True
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._serve, name="paragrad-checkpoint", daemon=True)
                self._thread.start()
            self._ready.notify_all()

    def wait(self) -> None:
        """Wait for the write in flight; raise what it raised."""
        with self._ready:
            while self._busy:
                self._ready.wait()
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Let the write in flight finish, end the thread, and raise the write's error."""
        thread = self._thread
        if thread is not None:
            with self._ready:
                self._closing = True  # the thread ends after its job, even if this join is interrupted
                self._ready.notify_all()
            thread.join()
            self._thread = None
        self.wait()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while self._job is None and not self._closing:
                    self._ready.wait()
                job, self._job = self._job, None
            if job is None:
                return
            error = None
            try:
                job()
            except BaseException as exc:  # handed to the caller at the next wait
                error = exc
            with self._ready:
                self._error, self._busy = error, False
                self._ready.notify_all()


@dataclass
class Checkpointing:
    """When and where a run writes checkpoints: every so many rounds or seconds."""

    directory: Path | None
    every_rounds: int | None
    every_s: float | None
    keep: int
    last_written: float = 0.0
    run_id: str = ""  # the run's identity, kept by a resumed run
    fingerprint: str = ""  # the data's (see paragrad.training.tasks.FingerprintShard)
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # one write at a time
    encoder: CheckpointEncoder | None = None  # the run's, made at its first write
    kept: list[tuple[int, Path]] = field(default_factory=list)  # the run's files by round
    synced: Path | None = None  # the newest file synced to the device: kept until a newer one is
    synced_at: float | None = None  # when it was handed to the writer
    failed: bool = False  # a write or sync failed: no file is removed on the strength of a later one
    log: LogWriter | None = None  # the newest file's, where the checkpoints after it go

    @classmethod
    def parse(cls, directory: str | os.PathLike | None, every: int | str | None, keep: int) -> Checkpointing:
        """The policy for ``checkpoint_dir``, ``checkpoint_every`` and ``keep_checkpoints``."""
        check_positive_int("keep_checkpoints", keep)
        if directory is None:
            if every is not None:
                raise ConfigError(
                    in_terms(
                        "checkpoint_every needs checkpoint_dir=", "--checkpoint-every needs --checkpoint DIR"
                    )
                )
            return cls(None, None, None, keep)
        text = "60s" if every is None else str(every).strip()
        try:
            if text.endswith("s"):
                seconds = float(text[:-1])
                if not seconds > 0:
                    raise ValueError
                return cls(Path(directory), None, seconds, keep, time.monotonic())
            rounds = int(text)
            if rounds < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"checkpoint_every must be a positive number of rounds (10) or seconds (30s), got {every!r}"
            ) from None
        return cls(Path(directory), rounds, None, keep, time.monotonic())

    def prepare(self, resume: bool) -> Checkpointing:
        """Before a run: remove the temporaries of writes killed midway, and refuse a fresh
        run in a directory that holds another run's checkpoints (resuming one would take
        it up; pruning would mix the two runs' files)."""
        if self.directory is None:
            return self
        remove_stale_temporaries(self.directory, CHECKPOINT_PATTERN)
        self.run_id = uuid.uuid4().hex
        found = sorted(self.directory.glob(CHECKPOINT_PATTERN)) if self.directory.is_dir() else []
        if found and not resume:
            meta = meta_of(found[-1])
            version = None if meta is None else format_version(meta.get("version"))
            if version is not None and version not in READABLE_VERSIONS:  # resume would refuse it
                raise ConfigError(
                    f"{self.directory} holds checkpoints of another paragrad version ({found[-1].name}, "
                    f"format {version}): give this run a directory of its own"
                )
            raise ConfigError(
                f"{self.directory} holds the checkpoints of another run ({found[-1].name}): go on with "
                f"that run with {option('resume')}, or give this run a directory of its own"
            )
        return self

    def adopt(
        self, resumed: TrainingState | None, fingerprints: tuple[str, ...], classes: list[Any] | None
    ) -> None:
        """Write as the run ``resumed`` belongs to (a fresh identity otherwise), on data
        with ``classes`` and the first of ``fingerprints`` (the others: other forms of it, as
        a checkpoint of the same rows may carry); refuse a checkpoint made on other data."""
        if resumed is not None:
            if resumed.config.get("classes") != classes:
                raise ConfigError(
                    f"{resumed.path}: the checkpoint was made for classes {resumed.config.get('classes')}, "
                    f"but this data has {classes}"
                )
            if resumed.fingerprint not in fingerprints:
                raise ConfigError(
                    f"{resumed.path}: the checkpoint belongs to a run on other data (the same shape, "
                    "other values): resume with the data it was made on, or start afresh in another "
                    "directory"
                )
            self.run_id = resumed.run_id
            assert self.directory is not None and resumed.path is not None
            # For pruning: the run's files up to the one resumed. A newer one was skipped as
            # damaged: it is not the newest to sync, nor counted among those kept, and stays.
            owned = owned_checkpoints(self.directory, self.run_id)
            self.kept = [(round_index, path) for round_index, path in owned if path.name <= resumed.path.name]
        self.fingerprint = fingerprints[0]

    def due(self, rounds_done: int) -> bool:
        if self.directory is None:
            return False
        if self.every_rounds is not None:
            return rounds_done % self.every_rounds == 0
        assert self.every_s is not None
        return time.monotonic() - self.last_written >= self.every_s

    def write(self, state: TrainingState, history_keys: tuple[str, ...]) -> None:
        """Take the checkpoint of ``state``: appended to the newest file's log (see
        :mod:`~paragrad.training.checkpoint_log`) where it goes there, else a file of its
        own, written in the background once the write before it is done, after which the
        run's files but the newest ``keep`` and the newest synced are removed. The rounds
        may change ``state`` as soon as this returns.
        """
        directory = self.directory
        assert directory is not None
        if self.log is not None and not self.log.opened:  # its file on disk (or its error) first
            self._settled(self.writer.wait)
        if self.encoder is None or self.encoder.history_keys != history_keys:
            directory.mkdir(parents=True, exist_ok=True)
            self.encoder = CheckpointEncoder(history_keys)
            self._close_log()
        state.run_id, state.fingerprint = self.run_id, self.fingerprint
        now = self.last_written = time.monotonic()
        if self.log is None or not self._logged(self.log, state, now):
            self._write_file(state, now)

    def _logged(self, log: LogWriter, state: TrainingState, now: float) -> bool:
        """Append the checkpoint to ``log``, if it goes there: the same run's, the log not
        full, the file not a minute old. Once a second the log is synced, in the
        background, and the files it makes stale are removed."""
        assert self.encoder is not None and self.synced_at is not None
        rows = self.encoder.history_rows(state.history)
        if log.fixed != _fixed_part(state) or len(rows) < log.rows:
            return False
        arrays = {**CheckpointEncoder.changing_arrays(state), "history": rows[log.rows :]}
        if not log.takes(arrays, now):
            return False
        record = record_bytes((self.run_id, log.round), state.round, state.convergence, arrays)
        self._settled(lambda: log.append(record))
        log.rows = len(rows)
        if now - self.synced_at >= SYNC_EVERY_S:  # the state changes once the sync is handed over
            kept, stale = self._trimmed()
            self._settled(lambda: self.writer.submit(lambda: _sync(log.checkpoint, log.path, stale)))
            self.kept, self.synced, self.synced_at, log.unsynced = kept, log.checkpoint, now, False
        return True

    def _write_file(self, state: TrainingState, now: float) -> None:
        """The checkpoint in a file of its own, handed to the writer; its log opens next."""
        assert self.directory is not None and self.encoder is not None
        self._settled(self.writer.wait)  # the write or sync in flight: its error first
        self._close_log()
        arrays = self.encoder.arrays(state)
        path = self.directory / checkpoint_name(state.round)
        newest = not self.kept or self.kept[-1][0] < state.round  # as rounds go on: no sort
        kept = [*self.kept, (state.round, path)] if newest else sorted({*self.kept, (state.round, path)})
        sync = self.synced_at is None or now - self.synced_at >= SYNC_EVERY_S or path == self.synced
        if sync:
            self.synced, self.synced_at = path, now
        stale = [old for _, old in kept[: -self.keep] if old != self.synced]
        self.kept = [entry for entry in kept if entry[1] not in stale]
        self.writer.submit(lambda: _store(path, arrays, stale, sync))
        self.log = LogWriter(path, state.round, len(arrays["history"]), now, _fixed_part(state))

    def finish(self) -> None:
        """Wait for the last write, raising its error (a full disk, say), sync the newest
        file and its log to the device, and remove the files but the newest ``keep``; the
        writer's thread is gone once this returns. Interrupted, it may be called again, and
        still owes the sync. After a failure the files are left as they are: a sync that
        succeeds after one that failed does not show that the data reached the device
        (Linux reports a lost write once)."""
        if self.directory is None:
            return
        log = self.log
        try:
            self._settled(self.writer.close)
        finally:
            if log is not None:
                log.close()  # known, and its sync owed, until it is synced
        if self.failed or not self.kept:
            return
        newest = self.kept[-1][1]
        if log is not None and log.unsynced:  # the log written last: its file is the newest
            self._settled(lambda: _sync(log.checkpoint, log.path))
        elif newest != self.synced:
            self._settled(lambda: _sync(newest))
        self.log, self.synced, self.synced_at = None, newest, time.monotonic()
        self.kept, stale = self._trimmed()
        _remove(stale)

    def _trimmed(self) -> tuple[list[tuple[int, Path]], list[Path]]:
        """The run's newest ``keep`` files, and the older ones to remove."""
        return self.kept[-self.keep :], [old for _, old in self.kept[: -self.keep]]

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _settled(self, step: Callable[[], object]) -> None:
        """``step`` (a wait for the writer, a sync), remembering that it failed if it raises
        (not if the run is interrupted meanwhile: the sync at its end is still due)."""
        try:
            step()
        except Exception:
            self.failed = True
            raise


def _fixed_part(state: TrainingState) -> tuple[Any, ...]:
    """What a checkpoint file holds that its log's records do not: a record goes in the log
    only while these are the file's (compared as objects first: the run's own, kept)."""
    return (CheckpointEncoder.fixed_part(state), state.standardizer)


def _store(path: Path, arrays: dict[str, np.ndarray], stale: list[Path], sync: bool) -> None:
    """Write one checkpoint file (synced to the device, its directory too, if ``sync``),
    then remove the older ones it replaces, with their logs."""
    write_checkpoint_file(path, sealed_npz(arrays), sync=sync)
    if sync:
        sync_to_device(path.parent)
    _remove(stale)


def _sync(path: Path, log: Path | None = None, stale: Sequence[Path] = ()) -> None:
    """Sync a written file, its log if given, and their directory to the device; then
    remove the ``stale`` files it replaces."""
    if log is not None:
        sync_to_device(log)
    sync_to_device(path)
    sync_to_device(path.parent)
    _remove(stale)


def _remove(stale: Sequence[Path]) -> None:
    for old in stale:
        remove_checkpoint(old)
