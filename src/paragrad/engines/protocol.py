"""The messages between the local engine's coordinator and its worker processes.

Each message is one small pickled dataclass on a pipe; large arrays travel beside it in
shared regions (see :mod:`paragrad.engines.transport`). Commands go to a worker, and
every :class:`RunTask` gets exactly one reply, :class:`TaskDone` or :class:`TaskFailed`;
a worker says :class:`Ready` once, when it has started, and :class:`Heartbeat` every
``HEARTBEAT_S`` while it works on a command, so that a silent worker (stopped, hung) can
be told from a busy one.
"""

from __future__ import annotations

from dataclasses import dataclass

from paragrad.core.shards import VirtualShards
from paragrad.engines.placement import ShardSpec
from paragrad.engines.transport import Layout


@dataclass(frozen=True)
class SetPath:
    """Import tasks from the coordinator's ``sys.path``."""

    sys_path: list[str]


@dataclass(frozen=True)
class LoadShard:
    """Map these rows as worker ``worker`` of ``num_workers``; the tasks held before go
    with the old shard."""

    spec: ShardSpec
    worker: int
    num_workers: int
    virtual: VirtualShards


@dataclass(frozen=True)
class AddTask:
    """Keep a pickled task under ``key``."""

    key: int
    payload: bytes


@dataclass(frozen=True)
class RunTask:
    """Run task ``key`` on the shard.

    The arguments are the pickle ``stream`` with its large buffers at ``layout`` in the
    broadcast region ``region``; large results go into the worker's region ``slot`` when
    they fit.
    """

    key: int
    stream: bytes
    region: str | None
    region_size: int
    layout: Layout
    slot: str
    slot_size: int


@dataclass(frozen=True)
class Stop:
    """Exit."""


Command = SetPath | LoadShard | AddTask | RunTask | Stop


@dataclass(frozen=True)
class TaskDone:
    """A result: its pickle stream, and the layout of its large buffers in the slot, or in
    the worker's own ``region`` (of ``region_size`` bytes) when they outgrow the slot."""

    stream: bytes
    layout: Layout
    region: str | None = None
    region_size: int = 0


@dataclass(frozen=True)
class TaskFailed:
    """A task raised: the exception when it survives pickling, and its traceback."""

    error: BaseException | None
    traceback: str


@dataclass(frozen=True)
class Ready:
    """The worker has started and waits for commands (sent once, before any reply)."""


@dataclass(frozen=True)
class Heartbeat:
    """The worker is alive and still working on a command (never sent after its reply)."""


HEARTBEAT_S = 0.25  # well below any deadline a caller can set (ROUND_TIMEOUT_MIN_S)

Reply = TaskDone | TaskFailed
