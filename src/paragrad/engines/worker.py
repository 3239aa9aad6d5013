"""The worker process of the local engine: ``python -m paragrad.engines.worker``.

It is started by :class:`paragrad.engines.local.LocalEngine` with two pipe descriptors
(commands in, replies out) and serves until told to stop or until the coordinator goes
away (end of file on the command pipe). It ignores Ctrl-C: the coordinator decides.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from paragrad.engines import transport
from paragrad.shards import Shard


def map_rows(path: str, offset: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A read-only array over ``nbytes`` of a file, its pages mapped in up front.

    Faulting shared pages in one by one during training costs more than the arithmetic
    (and two workers faulting the same file contend for it), so the mapping is populated
    when the shard is placed.
    """
    if nbytes == 0:
        return np.empty(0, dtype=dtype)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(
            handle.fileno(), nbytes + offset - start, flags=flags, prot=mmap.PROT_READ, offset=start
        )
    return np.frombuffer(mapping, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset - start)


def map_csr_rows(spec):
    """The shard's rows as a CSR matrix over the shared arrays (only the row pointers are copied)."""
    import scipy.sparse as sp

    layout, rows = spec.sparse, spec.stop - spec.start
    indptr = map_rows(spec.x_path, layout.indptr_offset + spec.start * 8, (rows + 1) * 8, np.dtype(np.int64))
    first, last = int(indptr[0]), int(indptr[-1])
    value_type, index_type = np.dtype(spec.dtype), np.dtype(layout.index_dtype)
    data = map_rows(
        spec.x_path,
        spec.x_offset + first * value_type.itemsize,
        (last - first) * value_type.itemsize,
        value_type,
    )
    indices = map_rows(
        spec.x_path,
        layout.indices_offset + first * index_type.itemsize,
        (last - first) * index_type.itemsize,
        index_type,
    )
    return sp.csr_matrix((data, indices, indptr - first), shape=(rows, spec.num_features), copy=False)


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
        if spec.sparse is not None:
            self.shard = Shard(map_csr_rows(spec), self._map_labels(spec), self.worker, self.num_workers)
            self.tasks.clear()
            return
        dtype = np.dtype(spec.dtype)
        rows = spec.stop - spec.start
        row_bytes = spec.num_features * dtype.itemsize
        X = map_rows(spec.x_path, spec.x_offset + spec.start * row_bytes, rows * row_bytes, dtype)
        y = None
        if spec.y_path is not None:
            y = map_rows(
                spec.y_path, spec.y_offset + spec.start * dtype.itemsize, rows * dtype.itemsize, dtype
            )
        self.shard = Shard(X.reshape(rows, spec.num_features), y, self.worker, self.num_workers)
        self.tasks.clear()

    @staticmethod
    def _map_labels(spec) -> np.ndarray | None:
        if spec.y_path is None:
            return None
        dtype = np.dtype(spec.dtype)
        rows = spec.stop - spec.start
        return map_rows(
            spec.y_path, spec.y_offset + spec.start * dtype.itemsize, rows * dtype.itemsize, dtype
        )

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
