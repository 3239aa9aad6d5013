"""When and where a run writes checkpoints, and the writer that writes them off the
rounds' critical path.

A checkpoint is a snapshot written to disk: the run takes the snapshot (a copy of a few
vectors) and goes on with its rounds while the file is written, flushed and synced. At
most one write is in flight; the next waits for it, so the files still appear in order and
a failure (a full disk) is raised in the run at the next write or at its end.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paragrad.core.atomic import remove_stale_temporaries
from paragrad.errors import ConfigError, check_positive_int, in_terms, option
from paragrad.training.checkpoint import (
    CHECKPOINT_PATTERN,
    CHECKPOINT_VERSION,
    TrainingState,
    format_version,
    meta_of,
    save_checkpoint,
)


class CheckpointWriter:
    """Runs one write at a time on a thread; a write's error is raised at the next wait."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], object]) -> None:
        """Start ``write`` once the one before has finished (raising its error, if any)."""
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the caller at the next wait
                self._error = exc

        self._thread = threading.Thread(target=run, name="paragrad-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


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
            if version is not None and version != CHECKPOINT_VERSION:  # resume would refuse it
                raise ConfigError(
                    f"{self.directory} holds checkpoints of another paragrad version ({found[-1].name}, "
                    f"format {version}): give this run a directory of its own"
                )
            raise ConfigError(
                f"{self.directory} holds the checkpoints of another run ({found[-1].name}): go on with "
                f"that run with {option('resume')}, or give this run a directory of its own"
            )
        return self

    def adopt(self, resumed: TrainingState | None, fingerprint: str, classes: list[Any] | None) -> None:
        """Write as the run ``resumed`` belongs to (a fresh identity otherwise), on data
        with ``fingerprint`` and ``classes``; refuse a checkpoint made on other data."""
        if resumed is not None:
            if resumed.config.get("classes") != classes:
                raise ConfigError(
                    f"{resumed.path}: the checkpoint was made for classes {resumed.config.get('classes')}, "
                    f"but this data has {classes}"
                )
            if resumed.fingerprint != fingerprint:
                raise ConfigError(
                    f"{resumed.path}: the checkpoint belongs to a run on other data (the same shape, "
                    "other values): resume with the data it was made on, or start afresh in another "
                    "directory"
                )
            self.run_id = resumed.run_id
        self.fingerprint = fingerprint

    def due(self, rounds_done: int) -> bool:
        if self.directory is None:
            return False
        if self.every_rounds is not None:
            return rounds_done % self.every_rounds == 0
        assert self.every_s is not None
        return time.monotonic() - self.last_written >= self.every_s

    def write(self, state: TrainingState, history_keys: tuple[str, ...]) -> None:
        """Write a snapshot in the background; wait only for the write before it."""
        directory = self.directory
        assert directory is not None
        state.run_id, state.fingerprint = self.run_id, self.fingerprint
        self.writer.submit(lambda: save_checkpoint(directory, state, history_keys, self.keep))
        self.last_written = time.monotonic()

    def finish(self) -> None:
        """Wait for the last write, raising its error (a full disk, say)."""
        self.writer.wait()
