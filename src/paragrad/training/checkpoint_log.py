"""The log beside a checkpoint file: the run's later checkpoints, appended as records of
what changes from one to the next.

A checkpoint file (``checkpoint-<round>.npz``) holds a run's whole state. A checkpoint taken
soon after it is appended to its log (``checkpoint-<round>.log``) as one record: the round,
the parameters, the optimizer's and the workers' state, the convergence state and the
history's rows since the record before. The file read with its log's records, in order,
is the state of the newest checkpoint. A run that checkpoints every round so writes a few
kilobytes a round to one open file where a file a round cost a create, a rename and a
removal (each longer than a short round), and the history, which a file holds whole, is
written once.

Each record is framed by its length and a CRC-32 of its bytes, so a log's end cut short or
garbled (a power cut before it was synced, a full disk) is found: the records before it
are the log. A record is appended by one system call of the run's own thread; a run killed
within it may leave the last record cut short, which is skipped.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.errors import OutputError
from paragrad.training.convergence import ConvergenceCheck

if TYPE_CHECKING:
    from paragrad.training.checkpoint import TrainingState

LOG_SUFFIX = ".log"
NEW_FILE_EVERY_S = 60.0  # a checkpoint this long after the newest file is a file of its own
LOG_LIMIT_BYTES = 4 << 20  # and so is one that would grow its log past this
_MAGIC = b"PGLR"
_FRAME = struct.Struct("<4sIQI")  # magic, header bytes, payload bytes, CRC-32 of both
_KINDS = frozenset("biuf")  # the arrays a record holds: numbers and flags, never objects
WORKER_STATE = "worker_state."  # + a StateField's name: that field of every worker, a row each


def log_of(checkpoint: Path) -> Path:
    """The log of the checkpoint file ``checkpoint``."""
    return checkpoint.with_suffix(LOG_SUFFIX)


@dataclass
class LogRecord:
    """One checkpoint of a log: its round, convergence state and arrays."""

    round: int
    convergence: dict[str, Any]
    arrays: dict[str, np.ndarray]


def record_bytes(round_index: int, convergence: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """A record's bytes: its frame, a JSON header naming the arrays, their bytes."""
    arrays = {name: np.asarray(array, order="C") for name, array in arrays.items()}  # 0-d stays 0-d
    described = [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]
    header = json.dumps({"round": round_index, "convergence": convergence, "arrays": described}).encode()
    payload = b"".join(array.data for array in arrays.values())
    check = zlib.crc32(payload, zlib.crc32(header))
    return b"".join((_FRAME.pack(_MAGIC, len(header), len(payload), check), header, payload))


def read_log(path: Path) -> tuple[list[LogRecord], str | None]:
    """The whole records of the log at ``path`` (none if there is no log), and what is
    wrong with the bytes after them (None where there are none)."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return [], None
    records: list[LogRecord] = []
    offset = 0
    while offset < len(content):
        if len(content) - offset < _FRAME.size:
            return records, "cut short"
        magic, header_size, payload_size, check = _FRAME.unpack_from(content, offset)
        start = offset + _FRAME.size
        end = start + header_size + payload_size
        if magic != _MAGIC:
            return records, "not a record"
        if end > len(content):
            return records, "cut short"
        header, payload = content[start : start + header_size], content[start + header_size : end]
        if zlib.crc32(payload, zlib.crc32(header)) != check:
            return records, "checksum mismatch"
        try:
            records.append(_record(json.loads(header), payload))
        except (KeyError, TypeError, ValueError) as exc:
            return records, f"a record not of this version ({exc})"
        offset = end
    return records, None


def _record(header: dict[str, Any], payload: bytes) -> LogRecord:
    arrays, offset = {}, 0
    for name, dtype_text, shape in header["arrays"]:
        dtype = np.dtype(dtype_text)
        if dtype.kind not in _KINDS:
            raise ValueError(f"array {name!r} of {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(payload, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    if offset != len(payload):
        raise ValueError("arrays and bytes differ in size")
    round_index, convergence = header["round"], header["convergence"]
    if not isinstance(round_index, int) or not isinstance(convergence, dict):
        raise ValueError("no round or convergence state")
    return LogRecord(round_index, convergence, arrays)


def history_records(rows: np.ndarray, history_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The history records of a checkpoint's table, a row each."""
    if rows.ndim != 2 or rows.shape[1] > len(history_keys):
        raise ValueError("history has more columns than this version records")
    # A checkpoint written before a key was added has NaN for it (the energy of old rounds).
    history = [
        {key: math.nan for key in history_keys} | dict(zip(history_keys, row.tolist(), strict=False))
        for row in rows
    ]
    for record in history:
        for key in ("round", "epoch", "bytes_sent", "bytes_received", "samples", "workers"):
            record[key] = int(record[key])
    return history


def with_log(
    state: TrainingState, history_keys: tuple[str, ...], opt_state_type: type[Any]
) -> tuple[TrainingState, str | None]:
    """``state``, read from its file, brought to its log's newest whole record; and, where
    the log's end is damaged, a line saying so (the records before it are used)."""
    assert state.path is not None
    log = log_of(state.path)
    records, problem = read_log(log)
    for record in records:
        try:
            state = _replayed(state, record, history_keys, opt_state_type)
        except (KeyError, TypeError, ValueError) as exc:
            problem = str(exc)
            break
    if problem is None:
        return state, None
    skipped = f"{log}: skipped the damaged end of a checkpoint log ({problem})"
    return state, f"{skipped}; resuming at round {state.round}"


def _replayed(
    state: TrainingState, record: LogRecord, history_keys: tuple[str, ...], opt_state_type: type[Any]
) -> TrainingState:
    """The state of the checkpoint ``record`` describes, taken after ``state``'s."""
    arrays = record.arrays
    history = state.history + history_records(arrays["history"], history_keys)
    if record.round != len(history) or arrays["params"].shape != state.params.shape:
        raise ValueError(f"a record of round {record.round} does not follow round {state.round}")
    ConvergenceCheck.check_state(record.convergence, len(history))
    opt_state = opt_state_type(**{name: arrays[f"opt_{name}"] for name in opt_state_type._fields})
    worker_state = {
        name[len(WORKER_STATE) :]: rows for name, rows in arrays.items() if name.startswith(WORKER_STATE)
    }
    return replace(
        state,
        round=record.round,
        params=arrays["params"],
        opt_state=opt_state,
        history=history,
        convergence=record.convergence,
        worker_state=worker_state,
    )


class LogWriter:
    """The log of a run's newest checkpoint file, opened at its first record."""

    def __init__(self, checkpoint: Path, rows: int, started: float, fixed: tuple[Any, ...]) -> None:
        self.checkpoint, self.path = checkpoint, log_of(checkpoint)
        self.rows = rows  # the history rows the file and its records hold
        self.started = started  # when the file was handed to the writer
        self.fixed = fixed  # what the file holds that no record does (see Checkpointing)
        self.size = 0
        self.unsynced = False  # records appended since the last sync was handed over
        self._fd: int | None = None

    def takes(self, record: bytes, now: float) -> bool:
        """Whether ``record`` goes in this log, or the checkpoint in a file of its own."""
        return now - self.started < NEW_FILE_EVERY_S and self.size + len(record) <= LOG_LIMIT_BYTES

    def append(self, record: bytes) -> None:
        """Append ``record`` by one write; a disk that refuses it is an OutputError naming
        the log (the bytes it took are an end the reader skips)."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            written = os.write(self._fd, record)
            while written < len(record):  # a short write: a full disk, a signal
                more = os.write(self._fd, memoryview(record)[written:])
                if more == 0:
                    raise OSError(28, os.strerror(28))
                written += more
        except OSError as exc:
            raise OutputError(f"{self.path}: could not be written ({exc.strerror})") from None
        self.size += len(record)
        self.unsynced = True

    @property
    def opened(self) -> bool:
        """Whether a record was appended (its file then on disk)."""
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
