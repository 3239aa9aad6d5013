"""The engine interface: where workers run. Engines know nothing of models or losses.

An engine starts ``num_workers`` workers, gives each its shard of a data set once, and
then runs *tasks*: a task is a picklable callable ``task(shard, *args)``. ``run`` calls it
on every worker and returns the results in worker order. An engine may send a task to
its workers once and afterwards only its arguments, so a task must not change between
calls; a round sends the arguments (parameters, O(d)), never the data. A task that
changes its shard (standardising it, say) sets ``mutates_shard = True``: an engine that
restarts a worker replays such tasks on it before the round.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paragrad.data import Dataset, ShardPlan
from paragrad.errors import ParagradError, WorkerError, WorkerLost

Task = Callable[..., Any]


@dataclass
class Shard:
    """One worker's rows, its position among the workers, and a cache it may keep.

    The cache holds what a task can always recompute (a sampling permutation, say), so a
    restarted worker that starts with an empty cache still gives the same results.
    ``state`` holds what it cannot (error-feedback residuals): checkpoints carry it.
    """

    X: np.ndarray
    y: np.ndarray | None
    worker: int
    num_workers: int
    cache: dict[Any, Any] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.X.shape[0]


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def payload_nbytes(value: Any) -> int:
    """Bytes of the numbers in a task's arguments or result: arrays, scalars, tuples."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(payload_nbytes(item) for item in value)
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


class Engine(ABC):
    """Runs tasks on workers that each hold one shard of a data set."""

    name: str
    parallel = True  # whether the workers compute at the same time

    def __init__(self, workers: int | None = None) -> None:
        self.num_workers = default_workers() if workers is None else int(workers)
        self.last_bytes_sent = 0
        self.last_bytes_received = 0

    @abstractmethod
    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Start the workers and place shard ``i`` of ``plan`` on worker ``i``."""

    @abstractmethod
    def run(self, task: Task, *args: Any) -> list[Any]:
        """Call ``task(shard, *args)`` on every worker; results in worker order."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers and release what they hold; safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class WorkerProcessEngine(Engine):
    """An engine whose workers are other processes, which may die.

    It keeps the tasks sent to the workers (``_tasks``: ``id(task)`` to its key, the task
    and what was sent) and the runs of shard-changing tasks (``_setup_log``), which a
    restarted worker replays. Subclasses run a round in ``_run``.
    """

    _tasks: dict[int, tuple[int, Task, Any]]
    _setup_log: list[tuple[int, tuple]]

    @abstractmethod
    def _check_started(self) -> None:
        """Raise ConfigError when there are no workers to run on."""

    @abstractmethod
    def _run(self, task: Task, args: tuple) -> list[Any]:
        """Send the round to every worker and gather the results in worker order."""

    def run(self, task: Task, *args: Any) -> list[Any]:
        """Run ``task`` on every worker; results in worker order.

        A task that raises leaves the engine usable; a worker lost for good, or an
        interruption (Ctrl-C), stops all workers, so the next ``start`` begins afresh.
        """
        self._check_started()
        try:
            results = self._run(task, args)
        except WorkerLost:
            self.close()
            raise
        except ParagradError:
            raise  # a task failed, but every worker replied: the engine is in order
        except BaseException:
            self.close()
            raise
        if getattr(task, "mutates_shard", False):
            self._setup_log.append((self._tasks[id(task)][0], args))
        return results
