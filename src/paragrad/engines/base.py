"""The engine interface: where workers run. Engines know nothing of models or losses.

An engine starts ``num_workers`` workers, gives each its shard of a data set once, and
then runs *tasks*: a :class:`Task` is a picklable callable ``task(shard, *args)``. ``run``
calls it on every worker and returns the results in worker order. An engine may send a
task to its workers once and afterwards only its arguments, so a task must not change
between calls; a round sends the arguments (parameters, O(d)), never the data.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from paragrad.core.shards import NUM_VIRTUAL, MembershipChange, Shard, ShardPlan, Task, default_workers
from paragrad.data import Dataset
from paragrad.errors import ConfigError, ParagradError, WorkerError, option, setting

# How long a worker may stay silent (no result, no heartbeat) during a call before it is
# lost: replaced within max_restarts, else shrunk around, else WorkerLost. Workers send a
# heartbeat several times a second while they compute, so only a stopped or hung one (or
# a lost node) stays silent; a minute leaves room for a machine under heavy load.
ROUND_TIMEOUT_S = 60.0
ROUND_TIMEOUT_MIN_S = 1.0
# How long a new worker may take to start (a process's imports; a Ray actor waiting for a
# CPU, and then its node's start): one that is not up by then is lost.
START_TIMEOUT_S = 120.0


def check_timeout(name: str, value: object) -> float:
    """A timeout setting as a float, refused unless a number of at least ``ROUND_TIMEOUT_MIN_S``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= ROUND_TIMEOUT_MIN_S:
        raise ConfigError(
            f"{name} must be a number of seconds, at least {ROUND_TIMEOUT_MIN_S:g}, got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class TakeState(Task):
    """A worker's state arrays, before its shard changes hands."""

    def __call__(self, shard: Shard) -> dict[str, np.ndarray]:
        return {name: np.array(array) for name, array in shard.state.items()}


@dataclass(frozen=True)
class GiveState(Task):
    """State arrays for every worker (``states[w]`` for worker ``w``), after a regroup."""

    states: tuple[dict[str, np.ndarray], ...]

    def __call__(self, shard: Shard) -> None:
        shard.state = dict(self.states[shard.worker])


_SCALARS = frozenset({int, float, bool, np.float64, np.float32, np.int64, np.intp})


def payload_nbytes(value: Any) -> int:
    """Bytes of the numbers in a task's arguments or result: arrays, scalars, tuples."""
    kind = type(value)  # the common types by identity first: this runs twice a pass
    if kind is np.ndarray:
        return value.nbytes
    if kind in _SCALARS:
        return 8
    if value is None:
        return 0
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        total = 0
        for item in value:
            total += payload_nbytes(item)
        return total
    if isinstance(value, dict):
        return sum(payload_nbytes(item) for item in value.values())
    if isinstance(value, (int, float, np.number, bool)):
        return 8
    return 0


def task_failure(worker: int, exc: BaseException | None, text: str) -> Exception:
    """What to raise for a task that failed on ``worker``: a paragrad error (bad data, say)
    as it is, named after the worker; anything else as WorkerError with the traceback."""
    if isinstance(exc, ParagradError):
        exc.args = (f"worker {worker}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
        return exc
    last = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    error = WorkerError(f"worker {worker} raised {last}\n{text}")
    error.__cause__ = exc
    return error


def refuse_address(name: str, address: str | None) -> None:
    if address is not None:
        raise ConfigError(
            f"{setting('address')} joins a Ray cluster: use {option('engine', 'ray')}, not {name!r}"
        )


_Engine = TypeVar("_Engine", bound="Engine")  # an engine's own class, from its with statement


class Engine(ABC):
    """Runs tasks on workers that each hold one shard of a data set."""

    name: str
    parallel: ClassVar[bool] = True  # whether the workers compute at the same time
    shares_cores: ClassVar[bool] = False  # whether the workers are processes on this machine
    # Whether the workers compute at the same time on this process's own objects (threads):
    # the model then must allow that (Model.thread_safe).
    shares_objects: ClassVar[bool] = False
    threads_per_worker: int = 1
    # Whether each worker reads its own rows of a data file, so a lazily opened table
    # (load(..., lazy=True)) need not be read by the coordinator first.
    reads_own_rows: ClassVar[bool] = False
    round_timeout_s: float = ROUND_TIMEOUT_S  # see ROUND_TIMEOUT_S; set per call by train
    start_timeout_s: float = START_TIMEOUT_S  # see START_TIMEOUT_S; set per call by train

    def __init__(self, workers: int | None = None) -> None:
        self.num_workers = default_workers() if workers is None else int(workers)
        self.last_bytes_sent = 0
        self.last_bytes_received = 0
        self.placing_s: float | None = None  # of the last start, where it is measured apart
        self.min_workers, self.max_workers = self.num_workers, self.num_workers
        self.changes: list[MembershipChange] = []  # since the last start
        self._requested: tuple[int, str, bool] | None = None  # count, cause, whether to wait
        self._round_index = 0  # the round about to run, for the membership records
        self._most: int | None = None  # the most workers the running plan can have
        self._held = False  # a resize was asked for: the engine grows no more on its own
        self._claim = threading.RLock()  # held by the call using the engine (see claimed)

    @contextlib.contextmanager
    def claimed(self) -> Iterator[Engine]:
        """The engine for one caller. A call from another thread meanwhile is refused at
        once: two callers would mix their messages to the workers, and each wait forever."""
        if not self._claim.acquire(blocking=False):
            raise ConfigError(
                f"this {self.name} engine is in use by a call in another thread: give each thread an "
                "engine of its own, or pass engine by name (each call then starts what it needs)"
            )
        try:
            yield self
        finally:
            self._claim.release()

    def _begin(self, plan: ShardPlan) -> None:
        """A new plan: no change asked for or made yet."""
        self._requested, self.changes, self._held = None, [], False
        self._most = min(plan.num_rows, NUM_VIRTUAL)
        self._round_index = 0  # changes made while starting are before round 0

    def set_bounds(self, min_workers: int, max_workers: int) -> None:
        """How far the engine may shrink (a worker lost) or grow (capacity found) on its own."""
        if not 1 <= min_workers <= max_workers:
            raise ConfigError(f"workers=(min, max) needs 1 <= min <= max, got ({min_workers}, {max_workers})")
        self.min_workers, self.max_workers = int(min_workers), int(max_workers)

    def resize(self, num_workers: int, *, cause: str = "resize", wait: bool = True) -> None:
        """Run on ``num_workers`` workers: at once between runs, and from the next round
        during one (a callback may call it). The coordinator keeps the parameters; the
        shards are handed out again, and the sample stream stays what it was.

        Any count the rows allow may be asked for (``min`` and ``max`` of an elastic run
        bound only what the engine does on its own), and the engine then no longer grows
        on its own. With ``wait=False`` a run grows only once its new workers have
        started, and rounds go on meanwhile on the workers it has.
        """
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 1:
            raise ConfigError(f"resize needs a worker count of at least 1, got {num_workers!r}")
        if self._most is not None and num_workers > self._most:
            raise ConfigError(
                f"resize({num_workers}): this run can have at most {self._most} workers "
                "(one a row, and at most one for each of its virtual shards)"
            )
        self._held = True
        self._ask(int(num_workers), cause, wait)

    def _ask(self, num_workers: int, cause: str, wait: bool) -> None:
        """Ask for a change of the workers, due at the next round boundary."""
        self._requested = (num_workers, cause, wait)

    @property
    def planned_workers(self) -> int:
        """The workers the next ``start`` should plan for: a resize asked for, if any."""
        return self.num_workers if self._requested is None else self._requested[0]

    def between_rounds(self, round_index: int) -> None:
        """Apply a membership change that is due before round ``round_index``."""
        self._round_index = round_index
        if self._requested is not None:
            (count, cause, _), self._requested = self._requested, None
            if count != self.num_workers:
                self._timed_regroup(round_index, count, cause)

    def _timed_regroup(self, round_index: int, count: int, cause: str, lost: tuple[int, ...] = ()) -> None:
        started, before = time.perf_counter(), self.num_workers
        self._regroup(count, lost)  # may end with fewer, when a worker dies meanwhile
        self.changes.append(
            MembershipChange(round_index, before, self.num_workers, cause, time.perf_counter() - started)
        )

    def _regroup(self, count: int, lost: tuple[int, ...]) -> None:
        """Give the run's shards to ``count`` workers (the ``lost`` ones gone)."""
        raise ConfigError(f"the {self.name} engine cannot change its number of workers during a run")

    @classmethod
    def from_options(
        cls, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
    ) -> Engine:
        """An engine with the options of :func:`~paragrad.engines.make_engine` that apply to it."""
        refuse_address(cls.name, address)
        return cls(workers)

    @abstractmethod
    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Start the workers and place shard ``i`` of ``plan`` on worker ``i``."""

    @abstractmethod
    def run(self, task: Task | Callable[..., Any], *args: Any) -> list[Any]:
        """Call ``task(shard, *args)`` on every worker; results in worker order."""

    def inline_shard(self) -> Shard | None:
        """The shard of an engine whose one worker is a plain call in this process, on this
        thread, of a task on that shard: the caller may then call a task on it itself, for
        what :meth:`run` would give, less its bookkeeping. None for any other engine."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Stop the workers and release what they hold; safe to call twice."""

    def __enter__(self: _Engine) -> _Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
