"""Shards: which rows each worker holds, what it keeps beside them, and what runs on them.

Data, strategies, tasks and engines all speak of shards; this module depends on none of
them. A :class:`Task` is what an engine runs on every shard; engines know nothing more of it
than the capabilities it declares.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import types
from collections.abc import Callable, Hashable, Sequence
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
    """The order in which a shard's rows are drawn in one epoch: recomputable, never saved.

    For the global stream over virtual shards (see :mod:`paragrad.training.sampling`),
    ``permutation`` is in stream order and ``positions`` holds each of its rows' stream
    position; for a worker's own rows (LocalSGD) ``positions`` is None.
    """

    epoch: int
    permutation: np.ndarray
    positions: np.ndarray | None = None


@dataclass(frozen=True)
class VirtualShards:
    """The virtual shards a worker holds: ``count`` consecutive ones from ``first``.

    The data's ``total_rows`` rows are split into ``num_virtual`` contiguous virtual
    shards, fixed for the whole run; virtual shard ``v`` holds the rows from
    ``v * total_rows // num_virtual`` on. A worker holds consecutive ones, so its rows
    are contiguous too, and the sample stream depends on virtual shards, not workers.
    """

    first: int
    count: int
    num_virtual: int
    total_rows: int

    def starts(self) -> np.ndarray:
        """The first row of each held virtual shard and the end of the last (global rows)."""
        ids = np.arange(self.first, self.first + self.count + 1, dtype=np.int64)
        return ids * self.total_rows // self.num_virtual

    @classmethod
    def whole(cls, num_rows: int) -> VirtualShards:
        """One virtual shard holding every row (a shard made by hand, say)."""
        return cls(0, 1, 1, num_rows)


@dataclass
class Shard:
    """One worker's rows, its position among the workers, and what it keeps between rounds.

    ``order`` caches what a task can always recompute (the epoch's sampling order), so a
    restarted worker that starts without it still gives the same results; ``made`` does
    the same for what is made from the features (:meth:`made_from_features`). ``state``
    holds the arrays of the strategy's declared :class:`StateField` s, which it cannot.
    ``virtual`` says which virtual shards the rows are (by default: one, all of them).
    """

    X: Any  # np.ndarray, or a scipy.sparse CSR matrix
    y: np.ndarray | None
    worker: int
    num_workers: int
    order: EpochOrder | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)
    virtual: VirtualShards | None = None
    made: dict[Hashable, tuple[Any, Any]] = field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """The labels, which training needs (data to predict on has none)."""
        if self.y is None:
            raise ValueError(f"worker {self.worker}'s shard has no labels to train on")
        return self.y

    def made_from_features(self, key: Hashable, make: Callable[[Any], Any]) -> Any:
        """``make(X)`` of this shard's features, made once while the shard holds them (its
        features replaced, by their standardised copy say, it is made again): what a task
        would otherwise make again every pass. ``key`` names what ``make`` makes."""
        kept = self.made.get(key)
        if kept is None or kept[0] is not self.X:
            kept = self.made[key] = (self.X, make(self.X))
        return kept[1]

    @property
    def held(self) -> VirtualShards:
        """The virtual shards this shard's rows are."""
        return VirtualShards.whole(self.num_rows) if self.virtual is None else self.virtual


# The virtual shards of a run (fewer when the data has fewer rows), whatever its workers:
# the most workers a run can have, and the finest grain its rows are handed out in.
NUM_VIRTUAL = 1024


def num_virtual_shards(num_rows: int) -> int:
    """How many virtual shards a run splits its rows into: one a row, up to ``NUM_VIRTUAL``."""
    return min(num_rows, NUM_VIRTUAL)


def _split(total: int, parts: int) -> tuple[int, ...]:
    """Edges of ``parts`` near-equal consecutive blocks of ``total`` items."""
    return tuple(part * total // parts for part in range(parts + 1))


@dataclass(frozen=True)
class ShardPlan:
    """Which rows each worker holds: consecutive virtual shards of the rows in ``order``.

    ``order`` is ``None`` for the rows as they are, or a permutation when shuffled. The
    virtual shards are fixed for the run; :meth:`regroup` gives them to another number
    of workers, so the rows and the sample stream stay what they were.
    """

    num_rows: int
    num_virtual: int
    groups: tuple[int, ...]  # worker w holds virtual shards groups[w] .. groups[w + 1] - 1
    order: np.ndarray | None = None

    @property
    def num_shards(self) -> int:
        return len(self.groups) - 1

    @property
    def bounds(self) -> tuple[tuple[int, int], ...]:
        """Each worker's first and end row (in ``order``)."""
        edges = [group * self.num_rows // self.num_virtual for group in self.groups]
        return tuple(itertools.pairwise(edges))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.bounds)

    def rows(self, shard: int) -> slice | np.ndarray:
        """A slice (contiguous plan) or an index array (shuffled plan) for one shard."""
        start, stop = self.bounds[shard]
        if self.order is None:
            return slice(start, stop)
        return self.order[start:stop]

    def virtual(self, shard: int) -> VirtualShards:
        """The virtual shards worker ``shard`` holds."""
        first, stop = self.groups[shard], self.groups[shard + 1]
        return VirtualShards(first, stop - first, self.num_virtual, self.num_rows)

    def regroup(self, num_shards: int) -> ShardPlan:
        """The same virtual shards given to ``num_shards`` workers."""
        _check_count(num_shards, self.num_rows)
        return dataclasses.replace(self, groups=_split(self.num_virtual, num_shards))


def _check_count(num_shards: int, num_rows: int) -> None:
    """Refuse a worker count the rows cannot be handed out to, saying why."""
    if num_shards < 1:
        raise ConfigError(f"workers must be at least 1, got {num_shards}")
    if num_shards > num_rows:
        raise ConfigError(
            f"{num_shards} workers need at least {num_shards} rows, but the data has {num_rows}"
        )
    if num_shards > NUM_VIRTUAL:
        raise ConfigError(
            f"{num_shards} workers: a run has at most {NUM_VIRTUAL}, one for each of its virtual shards"
        )


def plan_shards(
    num_rows: int,
    num_shards: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> ShardPlan:
    """Split ``num_rows`` rows into virtual shards and give ``num_shards`` workers near-equal
    runs of them."""
    _check_count(num_shards, num_rows)
    num_virtual = num_virtual_shards(num_rows)
    order = np.random.default_rng(seed).permutation(num_rows) if shuffle else None
    return ShardPlan(num_rows, num_virtual, _split(num_virtual, num_shards), order)


@dataclass(frozen=True)
class MembershipChange:
    """The workers of a run changed before round ``round``: how many, why, and the
    seconds it took (stopping or starting workers, handing out the shards again)."""

    round: int
    before: int
    after: int
    cause: str
    seconds: float


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


def move_state(
    states: Sequence[dict[str, np.ndarray] | None],
    old_bounds: Sequence[tuple[int, int]],
    new_bounds: Sequence[tuple[int, int]],
) -> list[dict[str, np.ndarray]]:
    """Workers' state arrays (``None``: lost) handed to a new set of shards by the rows
    they hold: each array is a sum over its worker's rows (as an error-feedback residual
    is), so a new shard gets each old one's arrays in proportion to the rows it takes over.
    What the old shards held in all is kept, less what the lost ones held."""
    moved: list[dict[str, np.ndarray]] = [{} for _ in new_bounds]
    for state, (start, stop) in zip(states, old_bounds, strict=True):
        for name, array in (state or {}).items():
            for target, (first, end) in zip(moved, new_bounds, strict=True):
                overlap = min(stop, end) - max(start, first)
                if overlap > 0:
                    share = array * (overlap / (stop - start))
                    target[name] = target[name] + share if name in target else share
    return moved
