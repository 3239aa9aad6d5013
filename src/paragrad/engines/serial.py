"""The serial engine: workers are a loop in the calling process; the reference for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from paragrad.core.shards import Shard, ShardPlan, Task, as_task, move_state
from paragrad.data import Dataset
from paragrad.engines.base import Engine, payload_nbytes


class SerialEngine(Engine):
    """Each worker's shard is a view (or a gathered copy, for shuffled plans) of the data.

    The byte counts are those of the arrays and numbers in the arguments and results
    (what a distributed engine would move, less its message framing).
    """

    name = "serial"
    parallel: ClassVar[bool] = False

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self.shards: list[Shard] = []
        self._dataset: Dataset | None = None
        self._plan: ShardPlan | None = None
        self._setup_log: list[tuple[Task, tuple[Any, ...]]] = []

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        self._dataset, self._plan, self._setup_log = dataset, plan, []
        self._begin(plan)
        self._load(plan)

    def _load(self, plan: ShardPlan) -> None:
        assert self._dataset is not None
        self.num_workers, self._plan = plan.num_shards, plan
        self.shards = []
        for worker in range(plan.num_shards):
            part = self._dataset.take(plan.rows(worker))
            self.shards.append(Shard(part.X, part.y, worker, plan.num_shards, virtual=plan.virtual(worker)))

    def _regroup(self, count: int, lost: tuple[int, ...]) -> None:
        """The shards sliced afresh for ``count`` workers; set-up replayed, state moved."""
        assert self._plan is not None
        old_bounds, states = self._plan.bounds, [dict(shard.state) for shard in self.shards]
        self._load(self._plan.regroup(count))
        for task, args in self._setup_log:
            for shard in self.shards:
                task(shard, *args)
        moved = move_state(states, old_bounds, self._plan.bounds)
        for shard, state in zip(self.shards, moved, strict=True):
            shard.state = state

    def run(self, task: Task | Callable[..., Any], *args: Any) -> list[Any]:
        typed = as_task(task)
        results = self._call_each(typed, args)
        if typed.mutates_shard:
            self._setup_log.append((typed, args))
        self.last_bytes_sent = payload_nbytes(args) * len(self.shards)
        self.last_bytes_received = payload_nbytes(results)
        return results

    def inline_shard(self) -> Shard | None:
        """The one shard, when there is one: its task is a call in this thread (also for
        the threads engine, which calls one worker's task in place)."""
        return self.shards[0] if len(self.shards) == 1 else None

    def _call_each(self, task: Task, args: tuple[Any, ...]) -> list[Any]:
        """The task on every shard, results in worker order: one after another here."""
        return [task(shard, *args) for shard in self.shards]

    def close(self) -> None:
        self.shards, self._dataset, self._setup_log = [], None, []
