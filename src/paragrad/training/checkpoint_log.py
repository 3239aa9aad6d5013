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

import contextlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.core.atomic import atomic_write_bytes, write_all
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


def drop_log(checkpoint: Path) -> None:
    """Remove the log of ``checkpoint``, if it has one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(log_of(checkpoint))


def write_checkpoint_file(checkpoint: Path, content: bytes, sync: bool = True) -> None:
    """Write a checkpoint file atomically (see :func:`~paragrad.core.atomic.atomic_write_bytes`),
    after removing any log of the same name: an earlier file's, not this one's."""
    drop_log(checkpoint)
    atomic_write_bytes(checkpoint, content, sync=sync)


def remove_checkpoint(checkpoint: Path) -> None:
    """Remove a checkpoint file, after its log (a log left alone would be of no use)."""
    drop_log(checkpoint)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(checkpoint)


@dataclass
class LogRecord:
    """One checkpoint of a log: the file the log continues (its run and round), the
    checkpoint's round, convergence state and arrays."""

    of: tuple[str, int]
    round: int
    convergence: dict[str, Any]
    arrays: dict[str, np.ndarray]


def record_bytes(
    of: tuple[str, int], round_index: int, convergence: dict[str, Any], arrays: dict[str, np.ndarray]
) -> bytes:
    """A record's bytes: its frame, a JSON header naming the file it follows (``of``: its
    run and round) and the arrays, their bytes."""
    arrays = {name: np.asarray(array, order="C") for name, array in arrays.items()}  # 0-d stays 0-d
    described = [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]
    head = {"of": list(of), "round": round_index, "convergence": convergence, "arrays": described}
    header = json.dumps(head).encode()
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
    except OSError as exc:
        return [], f"could not be read ({exc.strerror})"
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
    (run, file_round), round_index, convergence = header["of"], header["round"], header["convergence"]
    if not isinstance(round_index, int) or not isinstance(convergence, dict):
        raise ValueError("no round or convergence state")
    return LogRecord((str(run), int(file_round)), round_index, convergence, arrays)


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


def opt_state_of(arrays: dict[str, np.ndarray], opt_state_type: type[Any]) -> Any:
    """The optimizer state a checkpoint's arrays hold (``opt_<field>``)."""
    return opt_state_type(**{name: arrays[f"opt_{name}"] for name in opt_state_type._fields})


def worker_state_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The workers' declared state a checkpoint's arrays hold, by field."""
    return {name[len(WORKER_STATE) :]: rows for name, rows in arrays.items() if name.startswith(WORKER_STATE)}


def with_log(
    state: TrainingState, history_keys: tuple[str, ...], opt_state_type: type[Any]
) -> tuple[TrainingState, str | None]:
    """``state``, read from its file, brought to its log's newest whole record; and, where
    the log's end is damaged or not this file's, a line saying so (the records before it
    are used)."""
    assert state.path is not None
    log = log_of(state.path)
    records, problem = read_log(log)
    history, last = list(state.history), None
    for record in records:
        try:
            last = _follows(record, state, history, history_keys, opt_state_type)
        except (KeyError, TypeError, ValueError) as exc:
            problem = str(exc)
            break
    if last is not None:
        record, opt_state = last
        state = replace(
            state,
            round=record.round,
            params=record.arrays["params"],
            opt_state=opt_state,
            history=history,
            convergence=record.convergence,
            worker_state=worker_state_of(record.arrays),
        )
    if problem is None:
        return state, None
    skipped = f"{log}: skipped the rest of a checkpoint log ({problem})"
    return state, f"{skipped}; resuming at round {state.round}"


def _follows(
    record: LogRecord,
    file: TrainingState,
    history: list[dict[str, Any]],
    history_keys: tuple[str, ...],
    opt_state_type: type[Any],
) -> tuple[LogRecord, Any]:
    """Check that ``record`` is the next checkpoint of ``file``'s log, whose records so far
    made ``history``, and add its rows to ``history``; the record and its optimizer state."""
    if record.of != (file.run_id, file.round):
        raise ValueError(f"a record of another checkpoint file (round {record.of[1]} of run {record.of[0]})")
    arrays = record.arrays
    added = history_records(arrays["history"], history_keys)
    if record.round != len(history) + len(added) or arrays["params"].shape != file.params.shape:
        raise ValueError(f"a record of round {record.round} does not follow round {len(history)}")
    ConvergenceCheck.check_state(record.convergence, record.round)
    opt_state = opt_state_of(arrays, opt_state_type)
    history.extend(added)
    return record, opt_state


class LogWriter:
    """The log of a run's newest checkpoint file, opened at its first record."""

    def __init__(
        self, checkpoint: Path, round_index: int, rows: int, started: float, fixed: tuple[Any, ...]
    ) -> None:
        self.checkpoint, self.path, self.round = checkpoint, log_of(checkpoint), round_index
        self.rows = rows  # the history rows the file and its records hold
        self.started = started  # when the file was handed to the writer
        self.fixed = fixed  # what the file holds that no record does (see Checkpointing)
        self.size = 0
        self.unsynced = False  # records appended since the last sync was handed over
        self._fd: int | None = None

    def takes(self, arrays: dict[str, np.ndarray], now: float) -> bool:
        """Whether a record of ``arrays`` goes in this log, or the checkpoint in a file of
        its own (known before the record is made: a large model's would be thrown away)."""
        size = sum(array.nbytes for array in arrays.values())
        return now - self.started < NEW_FILE_EVERY_S and self.size + size <= LOG_LIMIT_BYTES

    def append(self, record: bytes) -> None:
        """Append ``record``; a disk that refuses it is an OutputError naming the log (the
        bytes it took are an end the reader skips)."""
        try:
            if self._fd is None:  # the file's permissions: 0o666 less the umask
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
            write_all(self._fd, record)
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
