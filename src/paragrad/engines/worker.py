"""The worker process of the local engine: ``python -m paragrad.engines.worker``.

It is started by :class:`paragrad.engines.local.LocalEngine` with two pipe descriptors
(commands in, replies out) and serves until told to stop or until the coordinator goes
away (end of file on the command pipe). It ignores Ctrl-C: the coordinator decides.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from paragrad.engines import transport
from paragrad.engines.base import Shard


class WorkerState:
    """What a worker keeps between commands: its shard, its tasks and open regions."""

    def __init__(self, worker: int, num_workers: int) -> None:
        self.worker, self.num_workers = worker, num_workers
        self.shard: Shard | None = None
        self.tasks: dict[int, Any] = {}
        self.regions: dict[str, transport.Region] = {}

    def region(self, path: str | None, size: int) -> transport.Region | None:
        """The region at ``path``, opened once; regions no longer named are closed."""
        if path is None:
            return None
        if path not in self.regions:
            self.regions[path] = transport.Region.open(path, size)
        return self.regions[path]

    def forget_regions(self, keep: set[str]) -> None:
        for path in list(self.regions):
            if path not in keep:
                self.regions.pop(path).close()

    def load_shard(self, spec) -> None:
        """Map the shard's rows from the data file, read-only and without a copy."""
        dtype = np.dtype(spec.dtype)
        shape = (spec.total_rows, spec.num_features)
        X = np.memmap(spec.x_path, dtype=dtype, mode="r", offset=spec.x_offset, shape=shape)
        y = None
        if spec.y_path is not None:
            y = np.memmap(spec.y_path, dtype=dtype, mode="r", offset=spec.y_offset, shape=(spec.total_rows,))
            y = y[spec.start : spec.stop]
        self.shard = Shard(X[spec.start : spec.stop], y, self.worker, self.num_workers)
        self.tasks.clear()

    def run(self, key: int, message: dict) -> Any:
        task = self.tasks[key]
        if isinstance(task, bytes):
            try:
                task = self.tasks[key] = pickle.loads(task)
            except (AttributeError, ImportError) as exc:
                raise RuntimeError(
                    f"cannot load the task in a worker process ({exc}); a class defined in a "
                    "script's __main__ cannot reach worker processes: define it in a module"
                ) from None
        broadcast = self.region(message["region"], message["region_size"])
        args = transport.loads(message["stream"], broadcast, message["layout"])
        return task(self.shard, *args)

    def reply(self, result: Any, slot_path: str | None, slot_size: int) -> tuple:
        """A result's stream, its large buffers written to the result slot when they fit."""
        stream, buffers = transport.dumps(result)
        if buffers and slot_path is not None and transport.layout_size(buffers) <= slot_size:
            return ("ok", stream, transport.write_buffers(buffers, self.region(slot_path, slot_size)))
        if buffers:
            stream = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        return ("ok", stream, [])


def serve(commands: Connection, replies: Connection, state: WorkerState) -> None:
    while True:
        try:
            message = pickle.loads(commands.recv_bytes())
        except (EOFError, OSError):  # the coordinator is gone
            return
        kind = message["kind"]
        if kind == "stop":
            return
        if kind == "path":
            sys.path[:] = message["sys_path"]
        elif kind == "shard":
            state.shard = None
            state.load_shard(message["spec"])
        elif kind == "task":
            state.tasks[message["key"]] = message["task"]
        elif kind == "run":
            state.forget_regions({message["region"], message["slot"]} - {None})
            try:
                reply = state.reply(state.run(message["key"], message), message["slot"], message["slot_size"])
            except BaseException as exc:  # every failure goes back to the coordinator
                reply = ("error", _portable(exc), traceback.format_exc())
            try:
                replies.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:  # the coordinator is gone
                return


def _portable(exc: BaseException) -> BaseException | None:
    """The exception itself if it survives pickling, else None (the traceback still goes)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    command_fd, reply_fd, worker, num_workers, threads = map(int, argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    commands = Connection(command_fd, writable=False)
    replies = Connection(reply_fd, readable=False)
    serve(commands, replies, WorkerState(worker, num_workers))
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
