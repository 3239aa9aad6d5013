"""The Ray engine: one Ray actor per worker, on this machine or across a Ray cluster.

Each actor holds its shard for the whole run; a round sends the task's arguments (the
parameters) and nothing else. Where the data comes from decides how it is placed:

- in-memory arrays: each shard is put in the object store once, and its actor reads it
  from there without a copy;
- features memory-mapped from a ``.npy`` file, and tables opened with
  ``load(..., lazy=True)``: each actor reads only its own rows from the file's path, so
  the coordinator never holds the data (on a cluster the path must be on a filesystem
  every node sees).

Where each actor finds its rows is :mod:`paragrad.engines.ray_sources`'s, how the engine
connects to Ray :mod:`paragrad.engines.ray_cluster`'s. In an elastic run the engine also
looks for free CPUs between rounds and grows onto them. An actor that
dies is noticed when its result is collected, and one that answers no beat for
``round_timeout_s`` while it computes (stopped, hung, its node gone) is killed and counts
as dead; restarts and replay are the shared
:class:`~paragrad.engines.session.WorkerSession`'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

from paragrad.core.shards import Shard, ShardPlan, Task, VirtualShards, default_workers
from paragrad.data import Dataset
from paragrad.engines.base import START_TIMEOUT_S, payload_nbytes, task_failure
from paragrad.engines.ray_cluster import Connection, first_line, import_ray
from paragrad.engines.ray_sources import Block, shard_sources, stored_rows
from paragrad.engines.session import Deaths, Died, Done, Raised, Reply, WorkerSession
from paragrad.errors import ConfigError, DataError, WorkerLost

# Arguments at least this large are put in the object store once per round and passed
# to every actor by reference, instead of being copied into each actor call.
PUT_BYTES = 64 * 1024
# After a worker is lost: how long to wait for the cluster to show a free CPU for its
# replacement (its own CPU, once Ray has seen it go) before giving the restart up, as a
# run without restarts would at once (a lost node takes its CPUs with it).
ROOM_WAIT_S = 3.0
# While a call runs, each of its actors is asked this often whether it lives: the question
# is answered in a concurrency group of its own, beside the call. An actor that answers
# none for round_timeout_s (stopped, hung, its node gone) is lost.
BEAT_S = 0.5


# -- the actor ----------------------------------------------------------------------------------


class ShardActor:
    """One worker: its shard, the tasks it was sent, and nothing else."""

    def __init__(self, threads: int, sys_path: list[str]) -> None:
        from threadpoolctl import threadpool_limits

        # Tasks may come from the coordinator's own modules: let them be imported here.
        sys.path.extend(path for path in sys_path if path not in sys.path)
        threadpool_limits(threads)
        import paragrad.training.tasks  # noqa: F401  # what every task needs, loaded while the actor starts

        self.worker = 0
        self.shard: Shard | None = None
        self.tasks: dict[int, Task] = {}

    def pid(self) -> int:
        return os.getpid()

    def beat(self) -> int:
        """That the actor lives (answered beside a running call: see ``_beat``)."""
        return os.getpid()

    def where(self) -> tuple[str, int]:
        """The node the actor runs on, and its process id there."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def load(self, source: Any, worker: int, num_workers: int, virtual: VirtualShards) -> None:
        self.worker, self.shard = worker, None
        try:
            X, y = source.load()
        except FileNotFoundError as exc:
            raise DataError(
                f"{exc.filename}: not found where worker {self.worker} runs; on a cluster, data files "
                "must be on a filesystem every node sees"
            ) from None
        self.shard = Shard(X, y, worker, num_workers, virtual=virtual)
        self.tasks.clear()

    def add_task(self, key: int, payload: bytes) -> None:
        import ray

        try:
            self.tasks[key] = ray.cloudpickle.loads(payload)
        except (AttributeError, ImportError) as exc:
            raise RuntimeError(
                f"cannot load the task in worker {self.worker} ({exc}): the classes a run uses must "
                "be importable on every node (install your module there, or pass "
                "RayEngine(runtime_env={'py_modules': [...]}))"
            ) from None

    def run(self, key: int, args: tuple[Any, ...]) -> Any:
        if self.shard is None:
            raise RuntimeError("no shard is loaded")
        return self.tasks[key](self.shard, *args)


def _beat(actor: Any) -> Any:
    """Ask an actor whether it lives, in its "beat" concurrency group: a thread of its own
    beside the one that runs the calls (in order, one at a time, as without groups)."""
    return actor.beat.options(concurrency_group="beat").remote()


# -- the engine ---------------------------------------------------------------------------------


def _kill(ray: Any, actors: list[Any]) -> None:
    """Kill the actors (those already dead, or with Ray gone, are skipped)."""
    for actor in actors:
        if actor is None:
            continue
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead, or Ray is gone
            pass


def _release(actors: list[Any], connected: list[bool]) -> None:
    """Kill the actors and let go of the connection; safe to call twice."""
    if actors:
        _kill(import_ray(), actors)
        actors.clear()
    if connected[0]:
        connected[0] = False
        Connection.close()


def _death_reason(exc: Exception) -> str:
    text = str(exc)
    if "ray.kill" in text or "killed" in text:
        return "its actor was killed"
    if "exit" in text.lower():
        return "its actor process exited"
    return f"its actor died: {first_line(exc)}"


class RayEngine(WorkerSession):
    """Ray actors as workers, on this machine or on a cluster.

    Parameters
    ----------
    workers : int, optional
        Number of actors; default as many as the cluster's CPUs allow (for a local
        instance: one per core).
    address : str, optional
        ``HOST:PORT`` of a running cluster's head (``ray start --head``), or ``"auto"``
        for the newest one on this machine; default ``RAY_ADDRESS``, else a local
        instance started for this engine. A program that called ``ray.init`` itself
        gets its own connection used.
    cpus_per_worker : int
        CPUs each actor reserves, and the BLAS threads it runs.
    max_restarts : int
        How many dead actors to recreate (replaying the round) before giving up with
        :class:`~paragrad.errors.WorkerLost`.
    runtime_env : dict, optional
        Ray's ``runtime_env`` for the actors (``{"py_modules": [...]}`` to ship your own
        modules to the nodes, say).
    start_timeout_s : float
        How long a new actor may take to start; one that cannot be placed in time (no
        capacity) is given up: an elastic run then goes on without it.
    grow_every_s : float
        In an elastic run below its most workers, how often to look for free CPUs in the
        cluster (between rounds; one call to the cluster's resource view).

    Notes
    -----
    Use it as a context manager to keep the actors across ``train`` and ``predict``
    calls; closing it kills them (and stops a local instance it started).
    """

    name = "ray"
    reads_own_rows: ClassVar[bool] = True

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        cpus_per_worker: int = 1,
        max_restarts: int = 0,
        runtime_env: dict[str, Any] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        grow_every_s: float = 10.0,
    ) -> None:
        super().__init__(workers, max_restarts=max_restarts)
        if cpus_per_worker < 1:
            raise ConfigError(f"cpus_per_worker must be at least 1, got {cpus_per_worker}")
        self.ray = import_ray()
        self.address = address
        self.cpus_per_worker = int(cpus_per_worker)
        self.runtime_env = runtime_env
        self.start_timeout_s, self.grow_every_s = float(start_timeout_s), float(grow_every_s)
        self._next_look = 0.0  # when to look for free CPUs next (time.monotonic)
        self._starting: dict[int, tuple[Any, float]] = {}  # prestarted slot: (its ping, when asked)
        self._actors: list[Any] = []
        self._connected = [False]
        self._finalizer = weakref.finalize(self, _release, self._actors, self._connected)
        self._sources: list[Any] = []
        self._blocks: list[Block] = []
        self._actor_class: Any = None
        self._where: dict[int, tuple[str, int]] = {}  # id of an actor handle: its node and pid
        if workers is None:  # as many as the cluster has room for
            self._prepare(0)
            self.num_workers = max(1, self._cluster_cpus() // self.cpus_per_worker)

    @classmethod
    def from_options(
        cls, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
    ) -> RayEngine:
        return cls(workers, address=address, max_restarts=max_restarts, cpus_per_worker=threads_per_worker)

    @property
    def pids(self) -> list[int]:
        """Process ids of the actors (on whichever node each runs)."""
        return list(self.ray.get([actor.pid.remote() for actor in self._actors]))

    @property
    def actors(self) -> list[Any]:
        """The actor handles, in worker order."""
        return list(self._actors)

    def close(self) -> None:
        super().close()
        _release(self._actors, self._connected)

    # -- actors --------------------------------------------------------------------------------

    def _keeps_workers(self, num_workers: int) -> bool:
        return len(self._actors) == num_workers

    def _prepare(self, num_workers: int) -> None:
        """Connect (once), and check the cluster has the CPUs the actors reserve."""
        if not self._connected[0]:
            Connection.open(self.address, max(default_workers(), num_workers * self.cpus_per_worker))
            self._connected[0] = True
        total = self._cluster_cpus()
        if num_workers * self.cpus_per_worker > total:
            raise ConfigError(
                f"{num_workers} workers with {self.cpus_per_worker} CPU(s) each need "
                f"{num_workers * self.cpus_per_worker} CPUs, but the Ray cluster has {total}"
            )

    def _cluster_cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 0))

    def _spawn(self, workers: Sequence[int]) -> None:
        """New actors in the workers' places, created together, then each checked; old ones
        are killed first (one only unreachable would hold its CPUs)."""
        for worker in workers:
            self._create(worker)
        for worker in workers:
            self._answers(worker, new=True)

    def _create(self, worker: int) -> None:
        """A new actor in slot ``worker`` (asked for: Ray starts it when it has room)."""
        while len(self._actors) <= worker:
            self._actors.append(None)
        if self._actor_class is None:
            self._actor_class = self.ray.remote(concurrency_groups={"beat": 1})(ShardActor)
        options: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "max_restarts": 0}
        options["scheduling_strategy"] = "SPREAD"
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        _kill(self.ray, [self._actors[worker]])
        self._starting.pop(worker, None)
        self._actors[worker] = self._actor_class.options(**options).remote(
            self.cpus_per_worker, list(sys.path)
        )

    def _catch_up(self, worker: int) -> None:
        """A replacement only where the cluster has room for it: waiting the start timeout
        for an actor that cannot be placed (its node lost, no spare CPU) would make a
        restart slower than none."""
        deadline = time.monotonic() + min(ROOM_WAIT_S, self.start_timeout_s)
        while int(self.ray.available_resources().get("CPU", 0)) < self.cpus_per_worker:
            if time.monotonic() >= deadline:
                raise WorkerLost(f"worker {worker}: no free CPU in the Ray cluster for its replacement")
            time.sleep(0.1)
        super()._catch_up(worker)

    def _prestart(self, workers: Sequence[int]) -> None:
        for worker in workers:
            self._create(worker)
            self._starting[worker] = (self._actors[worker].pid.remote(), time.monotonic())

    def _ready(self, worker: int) -> bool:
        """Whether a prestarted actor answers; one that cannot start in time is given up."""
        if worker not in self._starting:
            return True
        ping, asked = self._starting[worker]
        done, _ = self.ray.wait([ping], timeout=0)
        if done:
            del self._starting[worker]
            return True
        if time.monotonic() - asked > self.start_timeout_s:
            self._drop(range(self.num_workers, len(self._actors)))  # every prestarted one
            self._extra, self._requested = 0, None
        return False

    def between_rounds(self, round_index: int) -> None:
        """Grow onto free CPUs of the cluster (looked for every ``grow_every_s``), then
        apply what is due."""
        now = time.monotonic()
        growing = self._requested is not None and self._requested[0] > self.num_workers
        room_to_grow = self._placed and not self._held and self.num_workers < self.max_workers
        if room_to_grow and not growing and now >= self._next_look:
            self._next_look = now + self.grow_every_s
            room = int(self.ray.available_resources().get("CPU", 0)) // self.cpus_per_worker
            if room > 0:
                count = min(self.max_workers, self.num_workers + room)
                self._ask(count, f"capacity found: {room} free worker slot(s)", wait=False)
        super().between_rounds(round_index)

    def _alive(self, worker: int) -> bool:
        return self._answers(worker)

    def _answers(self, worker: int, new: bool = False) -> bool:
        """Whether the worker's actor answers: False for a dead one. A new actor that
        cannot start, or any that does not answer in time, is an error naming it (and a
        new one is given up, so that it cannot take CPUs later)."""
        actor = self._actors[worker]
        try:
            self._where[id(actor)] = self.ray.get(actor.where.remote(), timeout=self.start_timeout_s)
            return True
        except self.ray.exceptions.GetTimeoutError:
            if new:
                _kill(self.ray, [self._actors[worker]])
            raise WorkerLost(
                f"worker {worker}: its Ray actor did not answer within {self.start_timeout_s:g} s "
                "(is the cluster out of CPUs?)"
            ) from None
        except self.ray.exceptions.RayActorError as exc:
            if not new:
                return False
            raise WorkerLost(
                f"worker {worker}: its Ray actor could not start ({first_line(exc)}); "
                "is paragrad installed on every node?"
            ) from None

    def _drop(self, workers: Sequence[int]) -> None:
        gone = set(workers)
        self._starting = {}
        _kill(self.ray, [self._actors[worker] for worker in gone])
        self._actors[:] = [actor for worker, actor in enumerate(self._actors) if worker not in gone]

    def _stop(self) -> None:
        _kill(self.ray, self._actors)
        self._actors.clear()
        self._sources, self._blocks = [], []

    # -- data and tasks ------------------------------------------------------------------------

    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        self._sources, self._blocks = shard_sources(dataset, plan)

    def _replan(self, plan: ShardPlan) -> None:
        """Rows in the object store are taken from the blocks where they lie; rows of a
        file are read from it again by whichever worker holds them now."""
        if self._blocks:
            self._sources = stored_rows(self._blocks, plan.bounds)
        else:
            super()._replan(plan)

    def _load(self, workers: Sequence[int]) -> Deaths:
        assert self._plan is not None
        plan = self._plan
        calls = [
            self._actors[worker].load.remote(
                self._sources[worker], worker, plan.num_shards, plan.virtual(worker)
            )
            for worker in workers
        ]
        return self._deaths(workers, calls)

    def _encode(self, task: Task) -> Any:
        return self.ray.put(self.ray.cloudpickle.dumps(task))

    def _add_task(self, workers: Sequence[int], key: int, payload: Any) -> Deaths:
        calls = [self._actors[worker].add_task.remote(key, payload) for worker in workers]
        return self._deaths(workers, calls)

    def _deaths(self, workers: Sequence[int], calls: list[Any]) -> Deaths:
        """Wait for set-up calls: the deaths among them; a call that raised is raised."""
        replies = self._replies(calls, workers)
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, Raised):
                raise task_failure(worker, reply.error, reply.traceback)
        return [reply if isinstance(reply, Died) else None for reply in replies]

    def _call(self, key: int, args: tuple[Any, ...], workers: Sequence[int], copy: bool) -> list[Reply]:
        size = payload_nbytes(args)
        sent = self.ray.put(args) if size >= PUT_BYTES else args
        replies = self._replies([self._actors[worker].run.remote(key, sent) for worker in workers], workers)
        self.last_bytes_sent += size * len(workers)
        self.last_bytes_received += sum(payload_nbytes(r.value) for r in replies if isinstance(r, Done))
        return replies

    def _replies(self, calls: list[Any], workers: Sequence[int]) -> list[Reply]:
        """Each call's result, or how it failed, in call order."""
        silent = self._wait(calls, workers)
        if not silent:
            try:
                return [Done(value) for value in self.ray.get(calls)]  # the common case, in one wait
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError):
                pass  # find out which calls failed, and how
        replies: list[Reply] = []
        for call, worker in zip(calls, workers, strict=True):
            if worker in silent:
                replies.append(Died(silent[worker]))
                continue
            try:
                replies.append(Done(self.ray.get(call)))
            except self.ray.exceptions.RayActorError as exc:
                replies.append(Died(_death_reason(exc)))
            except self.ray.exceptions.RayTaskError as exc:
                replies.append(Raised(exc.cause, str(exc)))
        return replies

    def _silence(self, worker: int) -> None:
        """Kill a silent actor: through Ray, and on this node by its process id too (a
        stopped process answers no one: SIGKILL ends it, SIGCONT lets it go)."""
        actor = self._actors[worker]
        _kill(self.ray, [actor])
        node, pid = self._where.pop(id(actor), ("", 0))
        if pid and node == self.ray.get_runtime_context().get_node_id():
            for signum in (signal.SIGKILL, signal.SIGCONT):
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)

    def _wait(self, calls: list[Any], workers: Sequence[int]) -> dict[int, str]:
        """Wait until every call is done; an actor that answers no beat for
        ``round_timeout_s`` meanwhile is killed. The silent workers, and why."""
        pending = dict(zip(calls, workers, strict=True))
        heard = dict.fromkeys(workers, time.monotonic())
        beats: dict[int, Any] = {}
        silent: dict[int, str] = {}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=BEAT_S)
            for call in done:
                del pending[call]
            now = time.monotonic()
            for call, worker in list(pending.items()):
                beat = beats.get(worker)
                if beat is not None and self.ray.wait([beat], timeout=0)[0]:
                    heard[worker], beat = now, None
                beats[worker] = beat if beat is not None else _beat(self._actors[worker])
                if now - heard[worker] >= self.round_timeout_s:
                    del pending[call]
                    self._silence(worker)
                    silent[worker] = f"silent for {self.round_timeout_s:g} s: stopped, hung or its node lost"
        return silent


__all__ = ["PUT_BYTES", "RayEngine", "import_ray"]
