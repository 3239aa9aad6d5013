"""The local engine: one process per worker on this machine, data in shared memory.

The data set is copied once into a shared-memory block, laid out shard after shard, and
every worker maps its own rows without a copy. A round sends each worker its task's
arguments (the parameters) over a pipe and reads back its result; a task itself crosses
the pipe once. Workers are started with ``spawn`` (no reliance on ``fork``), run their
BLAS with ``threads_per_worker`` threads, ignore Ctrl-C (the coordinator decides), and
no network port is opened. The shared memory is released on every exit path.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import pickle
import signal
import traceback
import weakref
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from paragrad.data import Dataset, ShardPlan
from paragrad.engines.base import Engine, Shard, Task
from paragrad.errors import ParagradError, WorkerError, WorkerLost

STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ShardSpec:
    """Where a worker finds its rows in the shared block."""

    block: str
    dtype: str
    num_features: int
    total_rows: int
    has_labels: bool
    start: int
    stop: int


def _attach(spec: ShardSpec) -> tuple[shared_memory.SharedMemory, np.ndarray, np.ndarray | None]:
    """Map a shard's rows from the shared block, without copying them."""
    # Spawned workers share the coordinator's resource tracker, which owns the block's name.
    block = shared_memory.SharedMemory(name=spec.block)
    dtype = np.dtype(spec.dtype)
    X_all = np.ndarray((spec.total_rows, spec.num_features), dtype=dtype, buffer=block.buf)
    X = X_all[spec.start : spec.stop]
    y = None
    if spec.has_labels:
        y_all = np.ndarray((spec.total_rows,), dtype=dtype, buffer=block.buf, offset=X_all.nbytes)
        y = y_all[spec.start : spec.stop]
    return block, X, y


def _worker_main(conn: Connection, worker: int, num_workers: int, threads: int) -> None:
    """A worker's loop: load shards, keep tasks, run them, until told to stop."""
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(threads)
    tasks: dict[int, Task] = {}
    shard: Shard | None = None
    block = None
    while True:
        try:
            kind, key, payload = pickle.loads(conn.recv_bytes())
        except EOFError:
            break
        if kind == "stop":
            break
        if kind == "task":
            tasks[key] = payload
            continue
        if kind == "shard":
            shard, X, y = None, None, None
            if block is not None:
                block.close()
            block, X, y = _attach(payload)
            shard = Shard(X, y, worker, num_workers)
            continue
        try:
            reply = ("ok", tasks[key](shard, *payload))
        except BaseException as exc:  # report everything; the coordinator decides
            reply = ("error", (_portable(exc), traceback.format_exc()))
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    shard = None
    if block is not None:
        with contextlib.suppress(BufferError):
            block.close()


def _portable(exc: BaseException) -> BaseException | None:
    """The exception itself if it survives pickling, else None."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


class LocalEngine(Engine):
    """Worker processes on this machine over shared memory and pipes.

    Use it as a context manager to keep the workers across several ``train`` and
    ``predict`` calls; otherwise each call starts and stops its own.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, threads_per_worker: int = 1) -> None:
        super().__init__(workers)
        if threads_per_worker < 1:
            raise ParagradError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.threads_per_worker = int(threads_per_worker)
        self._context = mp.get_context("spawn")
        self._resources = _Resources()
        self._processes = self._resources.processes
        self._conns = self._resources.conns
        self._task_keys: dict[int, tuple[int, Task]] = {}
        self._next_key = itertools.count()
        weakref.finalize(self, _release, self._resources)

    # -- life cycle ----------------------------------------------------------------------

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        if len(self._processes) != plan.num_shards:
            self.close()
            self._spawn(plan.num_shards)
        self.num_workers = plan.num_shards
        self._place(dataset, plan)

    def _spawn(self, num_workers: int) -> None:
        for worker in range(num_workers):
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=_worker_main,
                args=(child_end, worker, num_workers, self.threads_per_worker),
                name=f"paragrad-worker-{worker}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self._processes.append(process)
            self._conns.append(parent_end)
        self._task_keys = {}

    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Copy the data into a new shared block, shard after shard, and tell the workers."""
        _release_block(self._resources)
        X, y = dataset.X, dataset.y
        size = X.nbytes + (0 if y is None else y.nbytes)
        block = shared_memory.SharedMemory(create=True, size=max(size, 1))
        self._resources.block = block
        _copy_rows(X, plan.order, np.ndarray(X.shape, dtype=X.dtype, buffer=block.buf))
        if y is not None:
            _copy_rows(y, plan.order, np.ndarray(y.shape, dtype=y.dtype, buffer=block.buf, offset=X.nbytes))
        for worker, (start, stop) in enumerate(plan.bounds):
            spec = ShardSpec(block.name, X.dtype.str, X.shape[1], X.shape[0], y is not None, start, stop)
            self._send(worker, ("shard", 0, spec))

    def close(self) -> None:
        _release(self._resources)
        self._task_keys = {}

    # -- rounds --------------------------------------------------------------------------

    def _send(self, worker: int, message: tuple) -> int:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._conns[worker].send_bytes(data)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise WorkerLost(f"worker {worker} died (exit code {self._processes[worker].exitcode})") from None
        return len(data)

    def run(self, task: Task, *args: Any) -> list[Any]:
        key = self._task_key(task)
        sent = 0
        for worker in range(self.num_workers):
            sent += self._send(worker, ("run", key, args))
        self.last_bytes_sent = sent
        return self._gather()

    def _task_key(self, task: Task) -> int:
        """Send a task to every worker the first time it is used; afterwards only its key."""
        known = self._task_keys.get(id(task))
        if known is not None and known[1] is task:
            return known[0]
        key = next(self._next_key)
        for worker in range(self.num_workers):
            self._send(worker, ("task", key, task))
        self._task_keys[id(task)] = (key, task)
        return key

    def _gather(self) -> list[Any]:
        """Read every worker's reply; a worker that dies first raises WorkerLost."""
        results: list[Any] = [None] * self.num_workers
        pending = {self._conns[w]: w for w in range(self.num_workers)}
        received, failure = 0, None
        while pending:
            sentinels = {self._processes[w].sentinel: w for w in pending.values()}
            for ready in wait(list(pending) + list(sentinels)):
                if ready in pending:
                    worker = pending.pop(ready)
                    try:
                        data = ready.recv_bytes()
                    except (EOFError, OSError):
                        raise WorkerLost(self._death_message(worker)) from None
                    received += len(data)
                    status, value = pickle.loads(data)
                    if status == "ok":
                        results[worker] = value
                    elif failure is None:
                        failure = (worker, *value)
                elif ready in sentinels and not self._conns[sentinels[ready]].poll():
                    raise WorkerLost(self._death_message(sentinels[ready]))
        self.last_bytes_received = received
        if failure is not None:
            worker, exc, text = failure
            if isinstance(exc, ParagradError):
                raise exc
            raise WorkerError(f"worker {worker} raised {text.strip().splitlines()[-1]}\n{text}") from exc
        return results

    def _death_message(self, worker: int) -> str:
        process = self._processes[worker]
        process.join(timeout=1.0)
        code = process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"worker {worker} died ({how})"


def _copy_rows(source: np.ndarray, order: np.ndarray | None, target: np.ndarray) -> None:
    """Copy rows into shared memory, in ``order`` when given, without a temporary copy."""
    if order is None:
        target[...] = source
    else:
        np.take(source, order, axis=0, out=target)


@dataclass
class _Resources:
    """What a local engine holds outside its own process: released on every exit path."""

    processes: list = field(default_factory=list)
    conns: list = field(default_factory=list)
    block: shared_memory.SharedMemory | None = None


def _release_block(resources: _Resources) -> None:
    block, resources.block = resources.block, None
    if block is None:
        return
    with contextlib.suppress(BufferError, OSError):
        block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()


def _release(resources: _Resources) -> None:
    """Stop the workers (politely, then by force) and unlink the shared block."""
    for conn in resources.conns:
        with contextlib.suppress(Exception):
            conn.send_bytes(pickle.dumps(("stop", 0, None)))
    for process in resources.processes:
        process.join(timeout=STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(timeout=STOP_TIMEOUT_S)
    for conn in resources.conns:
        conn.close()
    resources.processes.clear()
    resources.conns.clear()
    _release_block(resources)
