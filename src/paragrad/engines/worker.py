"""The worker process of the local engine: ``python -m paragrad.engines.worker``.

It is started by :class:`paragrad.engines.local.LocalEngine` with two pipe descriptors
(commands in, replies out) and serves until told to stop or until the coordinator goes
away (end of file on the command pipe, or, in the middle of a task, a new parent). It
ignores Ctrl-C: the coordinator decides.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from paragrad.core.shards import Shard, Task
from paragrad.core.shm import Region
from paragrad.engines import transport
from paragrad.engines.placement import ShardSpec, map_shard
from paragrad.engines.protocol import (
    HEARTBEAT_S,
    AddTask,
    Command,
    Heartbeat,
    LoadShard,
    Ready,
    Reply,
    RunTask,
    SetPath,
    Stop,
    TaskDone,
    TaskFailed,
)


class WorkerState:
    """What a worker keeps between commands: its shard, its tasks and open regions."""

    def __init__(self) -> None:
        self.shard: Shard | None = None
        self.tasks: dict[int, Task | bytes] = {}
        self.regions: dict[str, Region] = {}
        self.overflow: Region | None = None  # results larger than the slot go here
        # The rows mapped last: their spec, the data files' inodes (a region's path may
        # name another region later), X and y.
        self.mapped: tuple[ShardSpec | None, tuple[int, ...], Any, Any] = (None, (), None, None)

    def region(self, path: str, size: int) -> Region:
        """The region at ``path``, opened once (again when the path now names another)."""
        self.regions[path] = Region.reopen(self.regions.get(path), path, size)
        return self.regions[path]

    def forget_regions(self, keep: set[str]) -> None:
        """Close the regions no longer named (the coordinator replaced them)."""
        for path in list(self.regions):
            if path not in keep:
                self.regions.pop(path).close()

    def load(self, message: LoadShard) -> None:
        """Map the shard's rows from the data file, read-only and without a copy; the rows
        mapped last time are used again when they are the same rows of the same file."""
        self.shard = None
        spec, (known, files, X, y) = message.spec, self.mapped
        if spec != known or files != _inodes(spec):
            self.mapped = (None, (), None, None)
            X, y = map_shard(spec)
            self.mapped = (spec, _inodes(spec), X, y)
        self.shard = Shard(X, y, message.worker, message.num_workers, virtual=message.virtual)
        self.tasks.clear()

    def task(self, key: int) -> Task:
        """Task ``key``, unpickled on its first use."""
        task = self.tasks[key]
        if isinstance(task, bytes):
            try:
                task = self.tasks[key] = pickle.loads(task)
            except (AttributeError, ImportError) as exc:
                raise RuntimeError(
                    f"cannot load the task in a worker process ({exc}); a class defined in a "
                    "script's __main__ cannot reach worker processes: define it in a module"
                ) from None
        assert isinstance(task, Task)
        return task

    def run(self, message: RunTask) -> Reply:
        """Run a task; its result, or how it failed."""
        self.forget_regions({message.slot} | ({message.region} if message.region else set()))
        try:
            broadcast = None if message.region is None else self.region(message.region, message.region_size)
            args = transport.loads(message.stream, broadcast, message.layout)
            if self.shard is None:
                raise RuntimeError("no shard is loaded")
            return self.reply(self.task(message.key)(self.shard, *args), message)
        except BaseException as exc:  # every failure goes back to the coordinator
            return TaskFailed(_portable(exc), traceback.format_exc())

    def reply(self, result: Any, message: RunTask) -> TaskDone:
        """A result's stream, its large buffers written to the result slot when they fit,
        else to a region of the worker's own (kept for the next results: a pipe would
        carry them at a fraction of the memory's speed)."""
        stream, buffers = transport.dumps(result)
        if not buffers:
            return TaskDone(stream, ())
        size = transport.layout_size(buffers)
        if size <= message.slot_size:
            slot = self.region(message.slot, message.slot_size)
            return TaskDone(stream, transport.write_buffers(buffers, slot))
        if self.overflow is None or self.overflow.size < size:
            if self.overflow is not None:
                self.overflow.close()
                self.overflow.unlink()
                self.overflow = None
            self.overflow = Region.create(size)
        layout = transport.write_buffers(buffers, self.overflow)
        return TaskDone(stream, layout, self.overflow.path, self.overflow.size)


def _inodes(spec: ShardSpec) -> tuple[int, ...]:
    """The inodes of the files a spec names (-1 for one that is gone)."""
    found = []
    for path in (spec.x_path, spec.y_path):
        try:
            found.append(-1 if path is None else os.stat(path).st_ino)
        except OSError:
            found.append(-1)
    return tuple(found)


class Pulse:
    """Sends :class:`Heartbeat` every ``HEARTBEAT_S`` while the worker works on a command;
    replies go through :meth:`send` under the same lock, so no beat follows a reply."""

    def __init__(self, replies: Connection) -> None:
        self.replies = replies
        self.lock = threading.Lock()
        self.busy = threading.Event()
        self.beat = pickle.dumps(Heartbeat())
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            self.busy.wait()
            time.sleep(HEARTBEAT_S)
            with self.lock:
                if self.busy.is_set():
                    try:
                        self.replies.send_bytes(self.beat)
                    except OSError:  # the coordinator is gone
                        return

    def send(self, data: bytes) -> None:
        """Send a reply; the command is done, so the beats stop first."""
        with self.lock:
            self.busy.clear()
            self.replies.send_bytes(data)


def serve(commands: Connection, replies: Connection, state: WorkerState) -> None:
    """Answer commands until told to stop or the coordinator goes away."""
    pulse = Pulse(replies)
    while True:
        try:
            message: Command = pickle.loads(commands.recv_bytes())
        except (EOFError, OSError):  # the coordinator is gone
            return
        pulse.busy.set()
        match message:
            case Stop():
                return
            case SetPath(sys_path):
                sys.path[:] = sys_path
            case LoadShard():
                state.load(message)
            case AddTask(key, payload):
                state.tasks[key] = payload
            case RunTask():
                try:
                    pulse.send(pickle.dumps(state.run(message), protocol=pickle.HIGHEST_PROTOCOL))
                except OSError:  # the coordinator is gone
                    return
        with pulse.lock:
            pulse.busy.clear()


def _portable(exc: BaseException) -> BaseException | None:
    """The exception itself if it survives pickling, else None (the traceback still goes)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def exit_when_orphaned(coordinator: int, every_s: float = 0.2) -> None:
    """Exit once the coordinator is gone, even in the middle of a task (end of file on the
    command pipe is read only between tasks): a worker never outlives it, whatever killed it."""
    while os.getppid() == coordinator:
        time.sleep(every_s)
    os._exit(1)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    command_fd, reply_fd, threads = map(int, argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    # The modules every task needs, loaded before saying Ready: a worker started while
    # rounds go on (a run that grows) is then ready to compute at once.
    import paragrad.training.tasks  # noqa: F401

    commands = Connection(command_fd, writable=False)
    replies = Connection(reply_fd, readable=False)
    replies.send_bytes(pickle.dumps(Ready()))
    serve(commands, replies, WorkerState())
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
