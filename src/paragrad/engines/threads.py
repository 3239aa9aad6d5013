"""The threads engine: workers are threads of the calling process, reading its arrays.

No process starts and nothing is copied: each worker's shard is a view of the caller's
rows (the serial engine's shards), and numpy's block kernels release Python's lock, so
the workers compute at the same time. Results are combined in worker order, so the
parameters are the serial engine's, bit for bit where BLAS runs as many threads in both. Each
worker's BLAS runs ``threads_per_worker`` threads (one by default) while the workers compute,
so that workers x threads stays within the cores; the limit is the process's, so it is set
for each call and put back after it: nothing outlasts the call.

It suits full-batch training of the numpy models on data in memory, where every round is a
few large products: the start and the copy of the local engine are the call's fixed cost.
Rounds of many small products (minibatches) pay for Python's lock, where worker processes
do not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from paragrad.core.blas import blas_threads
from paragrad.core.shards import Shard, Task
from paragrad.engines.base import refuse_address
from paragrad.engines.serial import SerialEngine
from paragrad.errors import ConfigError


class ThreadEngine(SerialEngine):
    """Workers as threads of this process, each on a view of its shard's rows."""

    name = "threads"
    parallel: ClassVar[bool] = True
    shares_cores: ClassVar[bool] = True
    shares_objects: ClassVar[bool] = True

    def __init__(self, workers: int | None = None, *, threads_per_worker: int = 1) -> None:
        super().__init__(workers)
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.threads_per_worker = int(threads_per_worker)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @classmethod
    def from_options(
        cls, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
    ) -> ThreadEngine:
        refuse_address(cls.name, address)
        return cls(workers, threads_per_worker=threads_per_worker)

    def inline_shard(self) -> Shard | None:
        """The one worker's shard, computed in place by the caller, where the worker runs one
        BLAS thread (the coordinator's own limit); with more, its calls take the limit here."""
        return super().inline_shard() if self.threads_per_worker == 1 else None

    def _call_each(self, task: Task, args: tuple[Any, ...]) -> list[Any]:
        """The task on every shard at once, a thread each; results in worker order."""
        with blas_threads(self.threads_per_worker):
            if len(self.shards) == 1:
                return [task(self.shards[0], *args)]
            if self._pool is None or self._pool_size != len(self.shards):
                self._close_pool()
                self._pool = ThreadPoolExecutor(len(self.shards), thread_name_prefix="paragrad-worker")
                self._pool_size = len(self.shards)
            return list(self._pool.map(lambda shard: task(shard, *args), self.shards))

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        self._close_pool()
        super().close()

    def __enter__(self) -> ThreadEngine:
        return self
