"""The forked engine: worker processes forked from this one, reading its arrays where they lie.

A forked process starts with its parent's memory, shared until either side writes to it.
So each worker is forked once its rows are known and takes them as views of the caller's
arrays: nothing is copied and no interpreter starts (a fork takes milliseconds where a
new worker process takes a third of a second and the local engine's placement copies
every byte). The workers are processes, so, unlike threads, they never wait for Python's
lock: a pass over large arrays runs on every core.

Everything else is the local engine's: its protocol over pipes, results through shared
memory, heartbeats, deadlines, restarts and regrouping (a replacement, or every worker of
a regrouped run, is forked again with its rows). A worker sees the data of its fork, so
each ``start`` forks the workers afresh: there are no workers kept for the next call.

It needs ``os.fork`` (Linux, macOS); the engine the work calls for picks it on Linux only,
where forking a process whose libraries run threads of their own is safe.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import NoReturn

from paragrad.core.blas import blas_libraries, blas_threads
from paragrad.core.shards import Shard, ShardPlan
from paragrad.data import Dataset
from paragrad.engines.local import STOP_TIMEOUT_S, LocalEngine, WorkerProcess, stop_process
from paragrad.engines.protocol import Ready
from paragrad.engines.session import Deaths
from paragrad.engines.worker import WorkerState, exit_when_orphaned, serve
from paragrad.errors import ConfigError


def can_fork() -> bool:
    """Whether this platform forks processes (no fork on Windows)."""
    return hasattr(os, "fork")


class ForkedProcess:
    """A forked child, waited for and killed as :class:`subprocess.Popen` does its own."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the child has ended (negative: the signal), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child's end; :class:`subprocess.TimeoutExpired` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(pause)
            pause = min(2 * pause, 0.02)
        return code

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class ForkedEngine(LocalEngine):
    """Worker processes forked from this one, each reading views of its rows (see module)."""

    name = "forked"

    def __init__(
        self, workers: int | None = None, *, threads_per_worker: int = 1, max_restarts: int = 0
    ) -> None:
        if not can_fork():
            raise ConfigError(
                "the forked engine needs os.fork, which this platform lacks: use engine='local'"
            )
        super().__init__(workers, threads_per_worker=threads_per_worker, max_restarts=max_restarts)

    # -- workers: forked when their rows are known (in _load) ---------------------------------

    def _keeps_workers(self, num_workers: int) -> bool:
        return False  # a worker sees the data of its fork: every start forks afresh

    def _spawn_one(self, worker: int) -> None:
        """Empty the slot: its worker is forked when it is given its rows."""
        while len(self._workers) <= worker:
            self._workers.append(None)
        old, self._workers[worker] = self._workers[worker], None
        if old is not None:
            old.process.kill()
            stop_process(old, STOP_TIMEOUT_S)

    def _ready(self, worker: int) -> bool:
        return self._workers[worker] is None or super()._ready(worker)  # an empty slot forks ready

    def _died_starting(self, worker: int) -> bool:
        return self._workers[worker] is not None and not self._alive(worker)

    # -- data: nothing placed, nothing copied ---------------------------------------------------

    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        pass  # the workers inherit the arrays

    def _replan(self, plan: ShardPlan) -> None:
        pass  # the workers are forked again with their new rows (see _load)

    def _load(self, workers: Sequence[int]) -> Deaths:
        """Fork each worker anew with its rows (a worker running in the slot is stopped)."""
        blas_libraries()  # found once here, for every child (about 7 ms in each otherwise)
        for worker in workers:
            self._spawn_one(worker)
            self._fork(worker)
        return [None] * len(workers)

    def _fork(self, worker: int) -> None:
        assert self._dataset is not None and self._plan is not None
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        commands = Connection(command_write, readable=False)
        replies = Connection(reply_read, writable=False)
        try:
            pid = os.fork()
        except BaseException:
            for end in (commands, replies):
                end.close()
            for fd in (command_read, reply_write):
                os.close(fd)
            raise
        if pid == 0:
            others = [handle for handle in self._workers if handle is not None] + [commands, replies]
            _serve_forked(
                worker, self._dataset, self._plan, command_read, reply_write, others, self.threads_per_worker
            )
        os.close(command_read)
        os.close(reply_write)
        self._workers[worker] = WorkerProcess(ForkedProcess(pid), commands, replies)


def _serve_forked(
    worker: int,
    dataset: Dataset,
    plan: ShardPlan,
    command_fd: int,
    reply_fd: int,
    inherited: list[WorkerProcess | Connection],
    threads: int,
) -> NoReturn:
    """The forked worker: its rows as views of the inherited arrays, then the local
    worker's loop; it ends by ``os._exit`` whatever happens, so nothing of the parent's
    (exit handlers, finalizers, the rest of the caller's program) runs here."""
    code = 1
    try:
        os.setsid()  # Ctrl-C reaches the coordinator alone, which stops the workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for held in inherited:  # the parent's ends of the other workers' pipes
            for end in (held.commands, held.replies) if isinstance(held, WorkerProcess) else (held,):
                end.close()
        # The caller's objects stay out of this process's garbage collections: a full one
        # would write to every object's header, and so copy the caller's whole heap.
        gc.freeze()
        threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
        blas_threads(threads)
        part = dataset.take(plan.rows(worker))
        state = WorkerState()
        state.shard = Shard(part.X, part.y, worker, plan.num_shards, virtual=plan.virtual(worker))
        replies = Connection(reply_fd, readable=False)
        replies.send_bytes(pickle.dumps(Ready()))
        serve(Connection(command_fd, writable=False), replies, state)
        code = 0
    except BaseException:
        traceback.print_exc(file=sys.stderr)
    finally:
        os._exit(code)


__all__ = ["ForkedEngine", "can_fork"]
