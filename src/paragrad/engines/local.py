"""The local engine: one process per worker on this machine, data in shared memory.

The data set is copied once into a memory-mapped file in ``/dev/shm``, laid out shard
after shard, and every worker maps its own rows without a copy. A round writes the task's
large arguments (the parameters) once into a shared broadcast region and sends each
worker a short message over a pipe; each worker writes its large results into its own
shared slot. Tasks cross the pipe once.

Workers are separate Python processes (``python -m paragrad.engines.worker``), so the
engine works from scripts without a ``__main__`` guard, from notebooks and from the
command line. Pipes and memory-mapped files only: no network port is opened. A worker
that dies is noticed at once (end of file on its pipe); with ``max_restarts`` it is
started again on its shard, the set-up tasks that changed its shard are replayed, and
the round is run again. Files and processes are released on every exit path.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import subprocess
import sys
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from paragrad.data import Dataset
from paragrad.engines import transport
from paragrad.engines.base import Task, WorkerProcessEngine, task_failure
from paragrad.errors import ConfigError, WorkerLost
from paragrad.shards import ShardPlan, default_workers

STOP_TIMEOUT_S = 2.0
# glibc gives freed blocks of a few MB straight back to the system, so a worker that
# allocates the same temporaries every round would fault their pages in again each time
# (measured: 500-700 page faults and 2x the time per MLP step). Keep them instead.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
MIN_SLOT_BYTES = 1 << 20


@dataclass(frozen=True)
class ShardSpec:
    """Where a worker finds its rows: the files and offsets of X and y, and a row range."""

    dtype: str
    num_features: int
    total_rows: int
    x_path: str
    x_offset: int
    y_path: str | None
    y_offset: int
    start: int
    stop: int
    sparse: SparseLayout | None = None


@dataclass(frozen=True)
class SparseLayout:
    """Where the CSR arrays lie in the data file (``x_offset`` is that of ``data``)."""

    index_dtype: str
    indices_offset: int
    indptr_offset: int


@dataclass
class WorkerProcess:
    """A running worker: its process and the two ends of its pipes we hold."""

    process: subprocess.Popen
    commands: Connection
    replies: Connection


@dataclass
class _Resources:
    """What an engine holds outside its own memory; released on every exit path."""

    workers: list[WorkerProcess | None] = field(default_factory=list)
    regions: list[transport.Region] = field(default_factory=list)


def _release(resources: _Resources) -> None:
    """Stop the workers (politely, then by force) and unlink every shared file."""
    for handle in resources.workers:
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.commands.send_bytes(pickle.dumps({"kind": "stop"}))
    for handle in resources.workers:
        if handle is not None:
            _stop_process(handle)
    resources.workers.clear()
    for region in resources.regions:
        region.close()
        region.unlink()
    resources.regions.clear()


def _stop_process(handle: WorkerProcess) -> None:
    try:
        handle.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        handle.process.kill()
        handle.process.wait()
    handle.commands.close()
    handle.replies.close()


class LocalEngine(WorkerProcessEngine):
    """Worker processes on this machine over shared memory and pipes.

    Parameters
    ----------
    workers : int, optional
        Number of worker processes; default one per core.
    threads_per_worker : int
        BLAS threads in each worker (1, so that workers never oversubscribe the cores).
    max_restarts : int
        How many dead workers to restart (replaying the round) before giving up with
        :class:`~paragrad.errors.WorkerLost`.

    Use it as a context manager to keep the workers across several ``train`` and
    ``predict`` calls; otherwise each call starts and stops its own. Arrays in the
    results of :meth:`run` are copied out of shared memory, unless the task declares
    ``zero_copy_results = True``: then they are views, valid until the next ``run``.
    """

    name = "local"

    def __init__(
        self, workers: int | None = None, *, threads_per_worker: int = 1, max_restarts: int = 0
    ) -> None:
        super().__init__(workers)
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        if max_restarts < 0:
            raise ConfigError(f"max_restarts must be 0 or more, got {max_restarts}")
        self.threads_per_worker = int(threads_per_worker)
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, _release, self._resources)
        self._tasks: dict[int, tuple[int, Task, bytes]] = {}
        self._setup_log: list[tuple[int, tuple]] = []
        self._specs: list[ShardSpec] = []
        self._next_key = itertools.count()
        self._data: transport.Region | None = None
        self._broadcast: transport.Region | None = None
        self._slots: list[transport.Region] = []

    @property
    def _workers(self) -> list[WorkerProcess | None]:
        return self._resources.workers

    def _check_started(self) -> None:
        if len(self._workers) != self.num_workers or not self._specs:
            raise ConfigError("the local engine has no workers: call start() first")

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [handle.process.pid for handle in self._workers if handle is not None]

    # -- life cycle ----------------------------------------------------------------------

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Start (or reuse) the workers and place the data; on any failure, stop them all."""
        try:
            alive = all(handle is not None and handle.process.poll() is None for handle in self._workers)
            if len(self._workers) != plan.num_shards or not alive:
                self.close()
                for worker in range(plan.num_shards):
                    self._workers.append(None)
                    self._workers[worker] = self._spawn(worker, plan.num_shards)
            self.num_workers = plan.num_shards
            self._tasks, self._setup_log = {}, []
            self._place(dataset, plan)
        except BaseException:
            self.close()
            raise

    def _spawn(self, worker: int, num_workers: int) -> WorkerProcess:
        threads = str(self.threads_per_worker)
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.update(WORKER_MALLOC)
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # Our ends are wrapped first, so that they are closed whatever happens next.
        commands = Connection(command_write, readable=False)
        replies = Connection(reply_read, writable=False)
        try:
            args = [command_read, reply_write, worker, num_workers, self.threads_per_worker]
            process = subprocess.Popen(
                [sys.executable, "-m", "paragrad.engines.worker", *map(str, args)],
                pass_fds=(command_read, reply_write),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the coordinator alone, which stops the workers
            )
        except BaseException:
            commands.close()
            replies.close()
            raise
        finally:
            os.close(command_read)
            os.close(reply_write)
        handle = WorkerProcess(process, commands, replies)
        self._workers[worker] = handle  # recorded before anything else can fail
        handle.commands.send_bytes(pickle.dumps({"kind": "path", "sys_path": sys.path}))
        return handle

    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Put the data where every worker can map it, and tell each worker its rows.

        Features memory-mapped from a file (a ``.npy`` loaded by :func:`paragrad.load`)
        are mapped by the workers from that file, with no copy. Otherwise the features
        and labels are copied once into one shared file, in shard order.
        """
        self._drop_region(self._data)
        X, y = dataset.X, dataset.y
        if dataset.sparse:
            self._place_sparse(dataset, plan)
            return
        backing = dataset.storage if plan.order is None else None
        size = (0 if backing else X.nbytes) + (0 if y is None else y.nbytes)
        data = self._data = self._new_region(size)
        if backing:
            x_path, x_offset = backing.path, backing.offset
        else:
            x_path, x_offset = data.path, 0
            _copy_rows(X, plan.order, np.ndarray(X.shape, X.dtype, buffer=data.mapping))
        y_path, y_offset = None, size - (0 if y is None else y.nbytes)
        if y is not None:
            y_path = data.path
            _copy_rows(y, plan.order, np.ndarray(y.shape, y.dtype, buffer=data.mapping, offset=y_offset))
        self._specs = [
            ShardSpec(X.dtype.str, X.shape[1], X.shape[0], x_path, x_offset, y_path, y_offset, start, stop)
            for start, stop in plan.bounds
        ]
        for worker, spec in enumerate(self._specs):
            self._send(worker, {"kind": "shard", "spec": spec})

    def _place_sparse(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Copy the three CSR arrays (and y) once into a shared file; workers map their rows."""
        X, y = dataset.X, dataset.y
        if plan.order is not None:
            X, y = X[plan.order], None if y is None else y[plan.order]
        parts = [X.data, X.indices, X.indptr.astype(np.int64)] + ([] if y is None else [y])
        offsets = np.cumsum([0] + [transport.aligned(part.nbytes) for part in parts]).tolist()
        data = self._data = self._new_region(offsets[-1])
        for part, offset in zip(parts, offsets, strict=False):
            np.ndarray(part.shape, part.dtype, buffer=data.mapping, offset=offset)[...] = part
        layout = SparseLayout(X.indices.dtype.str, offsets[1], offsets[2])
        y_path, y_offset = (None, 0) if y is None else (data.path, offsets[3])
        self._specs = [
            ShardSpec(
                X.dtype.str, X.shape[1], X.shape[0], data.path, 0, y_path, y_offset, start, stop, layout
            )
            for start, stop in plan.bounds
        ]
        for worker, spec in enumerate(self._specs):
            self._send(worker, {"kind": "shard", "spec": spec})

    def close(self) -> None:
        _release(self._resources)
        self._data, self._broadcast, self._slots = None, None, []
        self._tasks, self._setup_log, self._specs = {}, [], []

    # -- shared regions ------------------------------------------------------------------

    def _new_region(self, size: int) -> transport.Region:
        region = transport.Region.create(size)
        self._resources.regions.append(region)
        return region

    def _drop_region(self, region: transport.Region | None) -> None:
        if region is not None and region in self._resources.regions:
            self._resources.regions.remove(region)
            region.close()
            region.unlink()

    def _regions_for(self, nbytes: int) -> None:
        """Grow the broadcast region and result slots to fit ``nbytes`` of arrays."""
        if nbytes and (self._broadcast is None or self._broadcast.size < nbytes):
            self._drop_region(self._broadcast)
            self._broadcast = self._new_region(2 * nbytes)
        slot_size = max(MIN_SLOT_BYTES, 2 * nbytes)
        if len(self._slots) != self.num_workers or self._slots[0].size < slot_size:
            for slot in self._slots:
                self._drop_region(slot)
            self._slots = [self._new_region(slot_size) for _ in range(self.num_workers)]

    # -- rounds --------------------------------------------------------------------------

    def _run(self, task: Task, args: tuple) -> list[Any]:
        key = self._task_key(task)
        stream, buffers = transport.dumps(args)
        self._regions_for(transport.layout_size(buffers))
        layout = transport.write_buffers(buffers, self._broadcast) if buffers else []
        region = self._broadcast.path if buffers else None
        messages = [
            self._run_message(key, stream, region, layout, worker) for worker in range(self.num_workers)
        ]
        for worker, message in enumerate(messages):
            self._send_or_restart(worker, message)
        self.last_bytes_sent = self.num_workers * (len(stream) + sum(view.nbytes for view in buffers))
        return self._gather(messages, copy=not getattr(task, "zero_copy_results", False))

    def _run_message(self, key: int, stream: bytes, region, layout, worker: int) -> dict:
        slot = self._slots[worker]
        return {
            "kind": "run",
            "key": key,
            "stream": stream,
            "region": region,
            "region_size": self._broadcast.size if region else 0,
            "layout": layout,
            "slot": slot.path,
            "slot_size": slot.size,
        }

    def _task_key(self, task: Task) -> int:
        """Send a task to every worker the first time it is used; afterwards only its key."""
        known = self._tasks.get(id(task))
        if known is not None and known[1] is task:
            return known[0]
        key = next(self._next_key)
        payload = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        self._tasks[id(task)] = (key, task, payload)
        for worker in range(self.num_workers):
            self._send_or_restart(worker, {"kind": "task", "key": key, "task": payload})
        return key

    def _send(self, worker: int, message: dict) -> None:
        handle = self._workers[worker]
        try:
            handle.commands.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise WorkerLost(self._death_message(worker)) from None

    def _send_or_restart(self, worker: int, message: dict) -> None:
        try:
            self._send(worker, message)
        except WorkerLost:
            self._restart(worker)  # which loads the shard and sends every task again
            if message["kind"] == "run":
                self._send(worker, message)

    def _gather(self, messages: list[dict], copy: bool) -> list[Any]:
        """Each worker's reply in worker order; a dead worker is restarted or reported."""
        results: list[Any] = [None] * self.num_workers
        pending = {self._workers[w].replies: w for w in range(self.num_workers)}
        received, failure = 0, None
        while pending:
            for ready in wait(list(pending)):
                worker = pending.pop(ready)
                try:
                    data = ready.recv_bytes()
                except (EOFError, OSError):
                    self._restart(worker)
                    self._send(worker, messages[worker])
                    pending[self._workers[worker].replies] = worker
                    continue
                received += len(data)
                status, *value = pickle.loads(data)
                if status == "ok":
                    stream, layout = value
                    received += sum(length for _, length in layout)
                    results[worker] = transport.loads(stream, self._slots[worker], layout, copy=copy)
                elif failure is None or worker < failure[0]:
                    failure = (worker, *value)  # the lowest worker's, whatever the timing
        self.last_bytes_received = received
        if failure is not None:
            raise task_failure(*failure)
        return results

    def _restart(self, worker: int) -> None:
        """Start a dead worker again on its shard, or raise WorkerLost when out of restarts.

        The new worker gets its shard, every task, and a replay of the tasks that changed
        the shard; should it die during that, it is restarted again (while restarts last).
        """
        message = self._death_message(worker)
        if self.restarts >= self.max_restarts:
            raise WorkerLost(message + (f" after {self.restarts} restart(s)" if self.restarts else ""))
        self.restarts += 1
        self._spawn(worker, self.num_workers)
        try:
            self._send(worker, {"kind": "shard", "spec": self._specs[worker]})
            for key, _, payload in self._tasks.values():
                self._send(worker, {"kind": "task", "key": key, "task": payload})
            for key, args in self._setup_log:
                self._send(worker, self._replay_message(key, args))
                status, *value = pickle.loads(self._workers[worker].replies.recv_bytes())
                if status != "ok":
                    raise WorkerLost(
                        f"worker {worker}: restarted, but replaying its set-up failed: {value[-1]}"
                    )
        except (WorkerLost, EOFError, OSError):
            self._restart(worker)

    def _replay_message(self, key: int, args: tuple) -> dict:
        stream = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        return {
            "kind": "run",
            "key": key,
            "stream": stream,
            "region": None,
            "region_size": 0,
            "layout": [],
            "slot": None,
            "slot_size": 0,
        }

    def _death_message(self, worker: int) -> str:
        handle = self._workers[worker]
        try:
            code = handle.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            code = handle.process.wait()
        handle.commands.close()
        handle.replies.close()
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"worker {worker} died ({how})"


def _copy_rows(source: np.ndarray, order: np.ndarray | None, target: np.ndarray) -> None:
    """Copy rows into shared memory, in ``order`` when given, without a temporary copy."""
    if order is None:
        target[...] = source
    else:
        np.take(source, order, axis=0, out=target)


__all__ = ["LocalEngine", "default_workers"]
