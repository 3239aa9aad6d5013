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

A worker closes the descriptors it inherits (but its pipes and the standard streams),
keeps the caller's objects out of its garbage collections (so the heap stays shared), and
on Linux is killed by the kernel when the coordinator's forking thread ends.

It needs ``os.fork`` (Linux, macOS). The engine the work calls for picks it on Linux only,
and only from a program running one thread: OpenBLAS's fork handler waits for its own
threads, so a fork while another thread of the program runs a product can wait for good.
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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NoReturn

from paragrad.core.blas import blas_libraries, blas_threads
from paragrad.core.shards import Shard, ShardPlan
from paragrad.data import Dataset
from paragrad.engines.local import LocalEngine, WorkerProcess
from paragrad.engines.protocol import Ready
from paragrad.engines.session import Deaths, Died
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
        """SIGKILL, unless the child has been reaped (its pid may be another's by then)."""
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
        self._empty_slot(worker)

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
        deaths: Deaths = []
        for worker in workers:
            self._empty_slot(worker)
            deaths.append(self._fork(worker))
        return deaths

    def _fork(self, worker: int) -> Died | None:
        """Fork the worker of slot ``worker``; how it failed when the system refused."""
        assert self._dataset is not None and self._plan is not None
        coordinator = os.getpid()
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        commands = Connection(command_write, readable=False)
        replies = Connection(reply_read, writable=False)
        # No handler (Ctrl-C's) may run in the child before it has its own, nor here before
        # the child is recorded, to be stopped and reaped.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            try:
                pid = os.fork()
            except OSError as exc:  # out of processes or memory: the worker is lost
                commands.close()
                replies.close()
                return Died(f"could not fork it: {exc.strerror}")
            if pid == 0:
                child = ForkedWorker(worker, coordinator, command_read, reply_write, self.threads_per_worker)
                child.serve(self._dataset, self._plan, mask)
            self._workers[worker] = WorkerProcess(ForkedProcess(pid), commands, replies)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(command_read)
            os.close(reply_write)
        return None


@dataclass(frozen=True)
class ForkedWorker:
    """A forked worker: its slot, its coordinator's process id, its pipes' descriptors and
    BLAS threads."""

    worker: int
    coordinator: int
    command_fd: int
    reply_fd: int
    threads: int

    def serve(self, dataset: Dataset, plan: ShardPlan, mask: set[int | signal.Signals]) -> NoReturn:
        """Its rows as views of the inherited arrays, then the local worker's loop. It ends
        by ``os._exit`` whatever happens, so nothing of the caller's (exit handlers,
        finalizers, the rest of the caller's program) runs here."""
        code = 1
        try:
            os.setsid()  # Ctrl-C reaches the coordinator alone, which stops the workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.end_with_the_coordinator()
            self.close_inherited()
            # The caller's objects stay out of this process's garbage collections: a full
            # one would write to every object's header, and so copy the caller's whole heap.
            gc.freeze()
            blas_threads(self.threads)
            part, worker = dataset.take(plan.rows(self.worker)), self.worker
            state = WorkerState()
            state.shard = Shard(part.X, part.y, worker, plan.num_shards, virtual=plan.virtual(worker))
            replies = Connection(self.reply_fd, readable=False)
            replies.send_bytes(pickle.dumps(Ready()))
            serve(Connection(self.command_fd, writable=False), replies, state)
            code = 0
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)

    def end_with_the_coordinator(self) -> None:
        """Be killed when the coordinator's forking thread ends (on Linux the kernel sends
        SIGKILL, which ends a stopped worker too); elsewhere, exit once orphaned."""
        linux = sys.platform.startswith("linux")
        if linux:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.coordinator:  # gone before the line above took effect
            os._exit(1)
        if not linux:
            threading.Thread(target=exit_when_orphaned, args=(self.coordinator,), daemon=True).start()

    def close_inherited(self) -> None:
        """Close every descriptor of the caller's but the standard streams: its sockets,
        files, and other workers' pipes (which would hide their deaths) stay its own."""
        low = 3
        for fd in sorted((self.command_fd, self.reply_fd)):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))


PR_SET_PDEATHSIG = 1  # prctl's option: the signal this process gets when its parent ends


__all__ = ["ForkedEngine", "can_fork"]
