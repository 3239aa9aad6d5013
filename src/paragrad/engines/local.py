"""The local engine: one process per worker on this machine, data in shared memory.

The data set is placed once (see :mod:`paragrad.engines.placement`) and every worker
maps its own rows without a copy. A round writes the task's large arguments (the
parameters) once into a shared broadcast region and sends each worker a short message
over a pipe; each worker writes its large results into its own shared slot. Tasks cross
the pipe once.

Workers are separate Python processes (``python -m paragrad.engines.worker``), so the
engine works from scripts without a ``__main__`` guard, from notebooks and from the
command line. Pipes and memory-mapped files only: no network port is opened. A worker
that dies is noticed at once (end of file on its pipe); restarts and replay are the
shared :class:`~paragrad.engines.session.WorkerSession`'s. Files and processes are
released on every exit path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, ClassVar, Protocol

from paragrad.core.shards import ShardPlan
from paragrad.core.shm import Region
from paragrad.data import Dataset
from paragrad.engines import transport
from paragrad.engines.base import refuse_address
from paragrad.engines.placement import ShardSpec, place
from paragrad.engines.protocol import (
    AddTask,
    Command,
    Heartbeat,
    LoadShard,
    Ready,
    RunTask,
    SetPath,
    Stop,
    TaskDone,
)
from paragrad.engines.session import Deaths, Died, Done, Raised, Reply, WorkerSession
from paragrad.errors import ConfigError

STOP_TIMEOUT_S = 2.0
# glibc gives freed blocks of a few MB straight back to the system, so a worker that
# allocates the same temporaries every round would fault their pages in again each time
# (measured: 500-700 page faults and 2x the time per MLP step). Keep them instead.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
MIN_SLOT_BYTES = 1 << 20
# Placed data goes into the region of the data placed before when it needs at least this
# share of it (a grid search, cross-validation folds, a second call on the same arrays).
REUSE_SLACK = 1.5


class Process(Protocol):
    """A worker's process as the engine handles it (:class:`subprocess.Popen`, or a fork's)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass
class WorkerProcess:
    """A running worker: its process and the two ends of its pipes we hold."""

    process: Process
    commands: Connection
    replies: Connection
    ready: bool = False  # it said Ready (started, imports done)


@dataclass
class _Resources:
    """What an engine holds outside its own memory; released on every exit path."""

    workers: list[WorkerProcess | None] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)


def _release(resources: _Resources) -> None:
    """Stop the workers (politely, then by force) and unlink every shared file."""
    for handle in resources.workers:
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.commands.send_bytes(pickle.dumps(Stop()))
    for handle in resources.workers:
        if handle is not None:
            _stop_process(handle, STOP_TIMEOUT_S)
    resources.workers.clear()
    for region in resources.regions:
        region.close()
        region.unlink()
    resources.regions.clear()


def _stop_process(handle: WorkerProcess, timeout_s: float) -> int:
    """Wait for the process to exit (killing it after ``timeout_s``); its exit code."""
    try:
        code = handle.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        handle.process.kill()
        code = handle.process.wait()
    handle.commands.close()
    handle.replies.close()
    return code


class LocalEngine(WorkerSession):
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

    Notes
    -----
    Use it as a context manager to keep the workers across several ``train`` and
    ``predict`` calls; otherwise each call starts and stops its own. Arrays in the
    results of :meth:`run` are copied out of shared memory, unless the task declares
    ``zero_copy_results = True``: then they are views, valid until the next ``run``.
    """

    name = "local"
    shares_cores: ClassVar[bool] = True

    def __init__(
        self, workers: int | None = None, *, threads_per_worker: int = 1, max_restarts: int = 0
    ) -> None:
        super().__init__(workers, max_restarts=max_restarts)
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.threads_per_worker = int(threads_per_worker)
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, _release, self._resources)
        self._specs: list[ShardSpec] = []
        self._data: Region | None = None
        self._retired: list[Region] = []  # data placed before, released after the next round
        self._broadcast: Region | None = None
        self._slots: list[Region] = []
        self._overflows: dict[int, Region] = {}  # workers' own regions of large results, opened here

    @classmethod
    def from_options(
        cls, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
    ) -> LocalEngine:
        refuse_address(cls.name, address)
        return cls(workers, max_restarts=max_restarts, threads_per_worker=threads_per_worker)

    @property
    def _workers(self) -> list[WorkerProcess | None]:
        return self._resources.workers

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [handle.process.pid for handle in self._workers if handle is not None]

    # -- workers -------------------------------------------------------------------------------

    def _keeps_workers(self, num_workers: int) -> bool:
        return len(self._workers) == num_workers

    def _prepare(self, num_workers: int) -> None:
        pass  # nothing to connect to

    def _alive(self, worker: int) -> bool:
        handle = self._workers[worker]
        return handle is not None and handle.process.poll() is None

    def _spawn(self, workers: Sequence[int]) -> None:
        for worker in workers:
            self._spawn_one(worker)

    def _empty_slot(self, worker: int) -> None:
        """The slot ``worker`` made (or emptied: its worker, if any, killed and reaped)."""
        while len(self._workers) <= worker:
            self._workers.append(None)
        old, self._workers[worker] = self._workers[worker], None
        if old is not None:
            old.process.kill()
            _stop_process(old, STOP_TIMEOUT_S)

    def _spawn_one(self, worker: int) -> None:
        self._empty_slot(worker)
        threads = str(self.threads_per_worker)
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.update(WORKER_MALLOC)
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # Our ends are wrapped first, so that they are closed whatever happens next.
        commands = Connection(command_write, readable=False)
        replies = Connection(reply_read, writable=False)
        try:
            args = [command_read, reply_write, self.threads_per_worker]
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
        self._workers[worker] = WorkerProcess(process, commands, replies)  # recorded before anything can fail
        self._send(worker, SetPath(sys.path))

    def start_workers(self, count: int) -> None:
        """Start ``count`` workers now, without waiting for them (the next ``start`` with
        that many workers finds them); workers already running are kept."""
        if len(self._workers) != count:
            self._stop()
        self.num_workers = count
        self._spawn(
            [worker for worker in range(count) if worker >= len(self._workers) or not self._alive(worker)]
        )

    def _drop(self, workers: Sequence[int]) -> None:
        gone = set(workers)
        for worker in sorted(gone):
            handle = self._workers[worker]
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.commands.send_bytes(pickle.dumps(Stop()))
                _stop_process(handle, STOP_TIMEOUT_S)
        self._workers[:] = [handle for worker, handle in enumerate(self._workers) if worker not in gone]

    def _prestart(self, workers: Sequence[int]) -> None:
        for worker in workers:
            if worker >= len(self._workers) or self._workers[worker] is None:
                self._spawn_one(worker)

    def _ready(self, worker: int) -> bool:
        """Whether a started worker has said Ready, without waiting; False for a dead one."""
        handle = self._workers[worker]
        if handle is None or handle.ready:
            return handle is not None
        try:
            while handle.replies.poll(0):
                if isinstance(pickle.loads(handle.replies.recv_bytes()), Ready):
                    handle.ready = True
        except (EOFError, OSError):
            return False
        return handle.ready

    def _died_starting(self, worker: int) -> bool:
        return not self._alive(worker)

    def _await_ready(self, workers: Sequence[int]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for worker in workers:
            handle = self._workers[worker]
            while handle is not None and not handle.ready:
                try:
                    if not handle.replies.poll(max(deadline - time.monotonic(), 0.0)):
                        self._silence(worker)  # stopped or hung while starting
                        break
                    handle.ready = isinstance(pickle.loads(handle.replies.recv_bytes()), Ready)
                except (EOFError, OSError):
                    break  # it died: the first task finds that out

    def _silence(self, worker: int) -> None:
        """End a worker that stayed silent past the deadline (stopped, hung): SIGKILL ends a
        stopped process too, and SIGCONT lets it run to its end."""
        handle = self._workers[worker]
        if handle is not None and handle.process.poll() is None:
            with contextlib.suppress(OSError):
                handle.process.kill()
                os.kill(handle.process.pid, signal.SIGCONT)

    def _workers_ready(self, worker: int) -> None:
        handle = self._workers[worker]
        if handle is not None:
            handle.ready = True

    def _stop(self) -> None:
        _release(self._resources)
        for region in self._overflows.values():
            region.close()
        self._overflows = {}
        self._data, self._broadcast, self._slots, self._specs, self._retired = None, None, [], [], []

    def _died(self, worker: int) -> Died:
        """How a worker whose pipe broke ended."""
        handle = self._workers[worker]
        assert handle is not None
        code = _stop_process(handle, timeout_s=1.0)
        return Died(f"killed by signal {-code}" if code < 0 else f"exit code {code}")

    def _send(self, worker: int, message: Command) -> Died | None:
        handle = self._workers[worker]
        assert handle is not None
        try:
            handle.commands.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            return self._died(worker)
        return None

    # -- data ----------------------------------------------------------------------------------

    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        self._specs = place(dataset, plan, self._new_data_region)

    def _new_data_region(self, size: int) -> Region:
        """The region for placed data: the last one again when it fits (its pages are
        already in memory, so a copy into it runs at the memory's speed instead of paying
        a fault per fresh page), else a new one."""
        if self._data is not None and size <= self._data.size <= REUSE_SLACK * size:
            return self._data
        # Workers read LoadShard messages in their own time: one may not have mapped its
        # rows of the data placed before yet, so that is released after the next round.
        if self._data is not None:
            self._retired.append(self._data)
        self._data = self._new_region(size)
        return self._data

    def _replan(self, plan: ShardPlan) -> None:
        """The same placed rows, grouped anew: only the row ranges change."""
        self._specs = [
            dataclasses.replace(self._specs[0], start=start, stop=stop) for start, stop in plan.bounds
        ]

    def _load(self, workers: Sequence[int]) -> Deaths:
        assert self._plan is not None
        count = self._plan.num_shards
        return [
            self._send(worker, LoadShard(self._specs[worker], worker, count, self._plan.virtual(worker)))
            for worker in workers
        ]

    def _add_task(self, workers: Sequence[int], key: int, payload: Any) -> Deaths:
        return [self._send(worker, AddTask(key, payload)) for worker in workers]

    def _new_region(self, size: int) -> Region:
        region = Region.create(size)
        self._resources.regions.append(region)
        return region

    def _drop_region(self, region: Region | None) -> None:
        if region is not None and region in self._resources.regions:
            self._resources.regions.remove(region)
            region.close()
            region.unlink()

    def _regions_for(self, nbytes: int) -> tuple[Region | None, list[Region]]:
        """The broadcast region and result slots, grown to fit ``nbytes`` of arrays."""
        if nbytes and (self._broadcast is None or self._broadcast.size < nbytes):
            self._drop_region(self._broadcast)
            self._broadcast = self._new_region(2 * nbytes)
        slot_size = max(MIN_SLOT_BYTES, 2 * nbytes)
        if len(self._slots) != self.num_workers or self._slots[0].size < slot_size:
            for slot in self._slots:
                self._drop_region(slot)
            self._slots = [self._new_region(slot_size) for _ in range(self.num_workers)]
        return self._broadcast, self._slots

    # -- rounds --------------------------------------------------------------------------------

    def _call(self, key: int, args: tuple[Any, ...], workers: Sequence[int], copy: bool) -> list[Reply]:
        stream, buffers = transport.dumps(args)
        broadcast, slots = self._regions_for(transport.layout_size(buffers))
        layout = transport.write_buffers(buffers, broadcast) if buffers and broadcast else ()
        region = broadcast.path if buffers and broadcast else None
        size = broadcast.size if region and broadcast else 0
        replies: dict[int, Reply] = {}
        for worker in workers:
            message = RunTask(key, stream, region, size, layout, slots[worker].path, slots[worker].size)
            died = self._send(worker, message)
            if died is not None:
                replies[worker] = died
        self.last_bytes_sent += len(workers) * (len(stream) + sum(view.nbytes for view in buffers))
        self._gather([worker for worker in workers if worker not in replies], replies, copy)
        if len(workers) == self.num_workers:  # every worker has read its LoadShard by now
            for retired in self._retired:
                self._drop_region(retired)
            self._retired = []
        return [replies[worker] for worker in workers]

    def _overflow(self, worker: int, reply: TaskDone) -> Region:
        """The worker's own region its large result lies in, opened once (again when the
        worker replaced it)."""
        assert reply.region is not None
        region = Region.reopen(self._overflows.get(worker), reply.region, reply.region_size)
        self._overflows[worker] = region
        return region

    def _gather(self, workers: list[int], replies: dict[int, Reply], copy: bool) -> None:
        """Each worker's reply as it comes; a broken pipe is a death, and so is silence (no
        reply, no heartbeat) for ``round_timeout_s``: the worker is killed."""
        pending: dict[Any, int] = {}
        heard: dict[Any, float] = {}
        for worker in workers:
            handle = self._workers[worker]
            assert handle is not None
            pending[handle.replies] = worker
            heard[handle.replies] = time.monotonic()
        while pending:
            quiet = min(heard[conn] for conn in pending) + self.round_timeout_s - time.monotonic()
            arrived = wait(list(pending), timeout=max(quiet, 0.0))
            if not arrived:
                for conn, worker in list(pending.items()):
                    if time.monotonic() - heard[conn] >= self.round_timeout_s:
                        del pending[conn]
                        self._silence(worker)
                        died = self._died(worker)
                        silent = f"silent for {self.round_timeout_s:g} s: stopped or hung"
                        replies[worker] = Died(f"{silent}; killed, {died.reason}")
                continue
            for ready in arrived:
                worker = pending.pop(ready)
                try:
                    data = ready.recv_bytes()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    replies[worker] = self._died(worker)
                    continue
                reply = pickle.loads(data)
                if isinstance(reply, (Ready, Heartbeat)):
                    if isinstance(reply, Ready):
                        self._workers_ready(worker)
                    heard[ready] = time.monotonic()
                    pending[ready] = worker  # its reply is still to come
                    continue
                self.last_bytes_received += len(data)
                if isinstance(reply, TaskDone):
                    self.last_bytes_received += sum(length for _, length in reply.layout)
                    region = self._slots[worker] if reply.region is None else self._overflow(worker, reply)
                    value = transport.loads(reply.stream, region, reply.layout, copy=copy)
                    replies[worker] = Done(value)
                else:
                    replies[worker] = Raised(reply.error, reply.traceback)


__all__ = ["LocalEngine", "Process", "WorkerProcess"]
