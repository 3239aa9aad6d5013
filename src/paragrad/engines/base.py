"""The engine interface: where workers run. Engines know nothing of models or losses.

An engine starts ``num_workers`` workers, gives each its shard of a data set once, and
then runs *tasks*: a :class:`Task` is a picklable callable ``task(shard, *args)``. ``run``
calls it on every worker and returns the results in worker order. An engine may send a
task to its workers once and afterwards only its arguments, so a task must not change
between calls; a round sends the arguments (parameters, O(d)), never the data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from paragrad.data import Dataset
from paragrad.errors import ConfigError, ParagradError, WorkerError
from paragrad.shards import ShardPlan, Task, default_workers


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


def refuse_address(name: str, address: str | None) -> None:
    if address is not None:
        raise ConfigError(f"address= joins a Ray cluster: use engine='ray', not {name!r}")


class Engine(ABC):
    """Runs tasks on workers that each hold one shard of a data set."""

    name: str
    parallel: ClassVar[bool] = True  # whether the workers compute at the same time
    shares_cores: ClassVar[bool] = False  # whether the workers are processes on this machine
    threads_per_worker: int = 1
    # Whether each worker reads its own rows of a data file, so a lazily opened table
    # (load(..., lazy=True)) need not be read by the coordinator first.
    reads_own_rows: ClassVar[bool] = False

    def __init__(self, workers: int | None = None) -> None:
        self.num_workers = default_workers() if workers is None else int(workers)
        self.last_bytes_sent = 0
        self.last_bytes_received = 0

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

    @abstractmethod
    def close(self) -> None:
        """Stop the workers and release what they hold; safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
