"""Shards: which rows each worker holds, what it keeps beside them, and what runs on them.

Data, strategies, tasks and engines all speak of shards; this module depends on none of
them. A :class:`Task` is what an engine runs on every shard; engines know nothing more of it
than the capabilities it declares.
"""

from __future__ import annotations

import itertools
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np

from paragrad.errors import ConfigError


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class StateField:
    """One array a strategy keeps on every worker between rounds (``size`` float64 values).

    Strategies declare their fields; checkpoints carry them, one array per field with a
    row per worker, and a restarted or new worker starts them at zero.
    """

    name: str
    size: int


@dataclass(frozen=True)
class EpochOrder:
    """The order in which a shard's rows are drawn in one epoch: recomputable, never saved."""

    epoch: int
    permutation: np.ndarray


@dataclass
class Shard:
    """One worker's rows, its position among the workers, and what it keeps between rounds.

    ``order`` caches what a task can always recompute (the epoch's sampling order), so a
    restarted worker that starts without it still gives the same results. ``state`` holds
    the arrays of the strategy's declared :class:`StateField` s, which it cannot.
    """

    X: Any  # np.ndarray, or a scipy.sparse CSR matrix
    y: np.ndarray | None
    worker: int
    num_workers: int
    order: EpochOrder | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """The labels, which training needs (data to predict on has none)."""
        if self.y is None:
            raise ValueError(f"worker {self.worker}'s shard has no labels to train on")
        return self.y


@dataclass(frozen=True)
class ShardPlan:
    """Which rows each worker holds: contiguous near-equal blocks of ``order``.

    ``order`` is ``None`` for the rows as they are, or a permutation when shuffled.
    Block sizes differ by at most one row, as with ``np.array_split``.
    """

    bounds: tuple[tuple[int, int], ...]
    order: np.ndarray | None = None

    @property
    def num_shards(self) -> int:
        return len(self.bounds)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.bounds)

    def rows(self, shard: int) -> slice | np.ndarray:
        """A slice (contiguous plan) or an index array (shuffled plan) for one shard."""
        start, stop = self.bounds[shard]
        if self.order is None:
            return slice(start, stop)
        return self.order[start:stop]


def plan_shards(num_rows: int, num_shards: int, *, shuffle: bool = False, seed: int = 0) -> ShardPlan:
    """Split ``num_rows`` rows into ``num_shards`` near-equal contiguous blocks."""
    if num_shards < 1:
        raise ConfigError(f"workers must be at least 1, got {num_shards}")
    if num_shards > num_rows:
        raise ConfigError(
            f"{num_shards} workers need at least {num_shards} rows, but the data has {num_rows}"
        )
    base, extra = divmod(num_rows, num_shards)
    sizes = [base + 1] * extra + [base] * (num_shards - extra)
    edges = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    bounds = tuple(itertools.pairwise(edges))
    order = np.random.default_rng(seed).permutation(num_rows) if shuffle else None
    return ShardPlan(bounds, order)


class Task:
    """What workers run: ``task(shard, *args)``, with its capabilities declared.

    ``mutates_shard``: the task changes its shard (standardises it, say), so an engine
    that restarts a worker replays it there before the round. ``zero_copy_results``: the
    caller is done with the results before the next ``run``, so an engine may return
    views of its buffers instead of copies.
    """

    mutates_shard: ClassVar[bool] = False
    zero_copy_results: ClassVar[bool] = False

    def __call__(self, shard: Shard, *args: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class FunctionTask(Task):
    """A function (or bound method) run as a task, with the default capabilities."""

    function: Callable[..., Any]

    def __call__(self, shard: Shard, *args: Any) -> Any:
        return self.function(shard, *args)


def as_task(task: Task | Callable[..., Any]) -> Task:
    """``task`` itself, or a function or bound method wrapped as one. Other callable
    objects are refused: capabilities they set without the Task base would go unseen."""
    if isinstance(task, Task):
        return task
    if isinstance(task, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, partial)):
        return FunctionTask(task)
    raise ConfigError(
        f"a task must be a paragrad.engines.Task or a plain function, got {type(task).__name__}: "
        "subclass Task to declare what it does"
    )
