"""The serial engine: workers are a loop in the calling process; the reference for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from paragrad.data import Dataset
from paragrad.engines.base import Engine, payload_nbytes
from paragrad.shards import Shard, ShardPlan, Task, as_task


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

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        self.num_workers = plan.num_shards
        self.shards = []
        for worker in range(plan.num_shards):
            part = dataset.take(plan.rows(worker))
            self.shards.append(Shard(part.X, part.y, worker, plan.num_shards))

    def run(self, task: Task | Callable[..., Any], *args: Any) -> list[Any]:
        typed = as_task(task)
        results = [typed(shard, *args) for shard in self.shards]
        self.last_bytes_sent = payload_nbytes(args) * len(self.shards)
        self.last_bytes_received = payload_nbytes(results)
        return results

    def close(self) -> None:
        self.shards = []
