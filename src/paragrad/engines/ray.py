"""The Ray engine: one Ray actor per worker, on this machine or across a Ray cluster.

Each actor holds its shard for the whole run; a round sends the task's arguments (the
parameters) and nothing else. Where the data comes from decides how it is placed:

- in-memory arrays: each shard is put in the object store once, and its actor reads it
  from there without a copy;
- features memory-mapped from a ``.npy`` file, and tables opened with
  ``load(..., lazy=True)``: each actor reads only its own rows from the file's path, so
  the coordinator never holds the data (on a cluster the path must be on a filesystem
  every node sees).

``address`` (or ``RAY_ADDRESS``) joins an existing cluster. Without one, a Ray instance
already connected in this process is used as it is; otherwise a local instance is
started for the engine, bound to 127.0.0.1 with no dashboard, and shut down when the
engine closes. An actor that dies is noticed when its result is collected; with
``max_restarts`` a new actor is created on its shard, the tasks that changed the shard
are replayed, and the round is run again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.data import Dataset, TableFile
from paragrad.engines.base import (
    Task,
    WorkerProcessEngine,
    payload_nbytes,
    task_failure,
)
from paragrad.engines.transport import is_region
from paragrad.errors import ConfigError, DataError, WorkerLost
from paragrad.shards import Shard, ShardPlan, default_workers

# Arguments at least this large are put in the object store once per round and passed
# to every actor by reference, instead of being copied into each actor call.
PUT_BYTES = 64 * 1024
READY_TIMEOUT_S = 120.0
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    """The ``ray`` module, or a clear error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray engine needs Ray: pip install 'paragrad[ray]'") from None
    return ray


# -- where a worker finds its rows ------------------------------------------------------------


@dataclass(frozen=True)
class StoredRows:
    """A shard put in the object store: features and labels, read without a copy."""

    ref: Any  # ray.ObjectRef of (X, y)

    def load(self) -> tuple[Any, np.ndarray | None]:
        import ray

        return ray.get(self.ref)


@dataclass(frozen=True)
class MappedRows:
    """A shard's rows of a ``.npy`` file (or any C-ordered matrix at an offset in a file)."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, int]
    rows: slice | np.ndarray
    y_ref: Any  # ray.ObjectRef of the shard's labels, or None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        import ray

        from paragrad.engines.worker import map_rows

        dtype, (num_rows, num_features) = np.dtype(self.dtype), self.shape
        row_bytes = num_features * dtype.itemsize
        if isinstance(self.rows, slice):
            start, stop, _ = self.rows.indices(num_rows)
            X = map_rows(self.path, self.offset + start * row_bytes, (stop - start) * row_bytes, dtype)
            X = X.reshape(stop - start, num_features)
        else:
            whole = np.memmap(self.path, dtype, "r", offset=self.offset, shape=self.shape)
            X = np.take(whole, self.rows, axis=0)
        return X, None if self.y_ref is None else ray.get(self.y_ref)


@dataclass(frozen=True)
class TableRows:
    """A shard's rows of a table file, read and checked by the worker itself."""

    table: TableFile
    rows: slice | np.ndarray

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        part = self.table.read(self.rows)
        return part.X, part.y


def shard_sources(dataset: Dataset, plan: ShardPlan) -> list[Any]:
    """How each worker gets its rows: from a data file it can read, or from the object
    store (arrays in memory, and tables loaded into this machine's shared memory)."""
    import ray

    if dataset.table is not None:
        return [TableRows(dataset.table, plan.rows(worker)) for worker in range(plan.num_shards)]
    sources: list[Any] = []
    for worker in range(plan.num_shards):
        rows = plan.rows(worker)
        y = None if dataset.y is None else np.ascontiguousarray(dataset.y[rows])
        if dataset.storage is not None and not is_region(dataset.storage.path):
            X = dataset.X
            y_ref = None if y is None else ray.put(y)
            backing = dataset.storage
            sources.append(MappedRows(backing.path, backing.offset, X.dtype.str, X.shape, rows, y_ref))
        else:
            sources.append(StoredRows(ray.put((dataset.X[rows], y))))
    return sources


# -- the actor ----------------------------------------------------------------------------------


class ShardActor:
    """One worker: its shard, the tasks it was sent, and nothing else."""

    def __init__(self, worker: int, num_workers: int, threads: int, sys_path: list[str]) -> None:
        from threadpoolctl import threadpool_limits

        # Tasks may come from the coordinator's own modules: let them be imported here.
        sys.path.extend(path for path in sys_path if path not in sys.path)
        threadpool_limits(threads)
        self.worker, self.num_workers = worker, num_workers
        self.shard: Shard | None = None
        self.tasks: dict[int, Task] = {}

    def pid(self) -> int:
        return os.getpid()

    def load(self, source: Any) -> None:
        try:
            X, y = source.load()
        except FileNotFoundError as exc:
            raise DataError(
                f"{exc.filename}: not found where worker {self.worker} runs; on a cluster, data files "
                "must be on a filesystem every node sees"
            ) from None
        self.shard = Shard(X, y, self.worker, self.num_workers)
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

    def run(self, key: int, args: tuple) -> Any:
        return self.tasks[key](self.shard, *args)


# -- the connection to Ray ------------------------------------------------------------------------


class Connection:
    """This process's connection to Ray, shared by its engines and closed by the last one.

    ``ray.shutdown`` is called only when an engine opened the connection: a local
    instance started here stops with it, a joined cluster keeps running, and a connection
    the program made itself (``ray.init``) is left as it is.
    """

    users = 0
    opened_here = False

    @classmethod
    def open(cls, address: str | None, num_cpus: int) -> None:
        ray = import_ray()
        address = address or os.environ.get("RAY_ADDRESS") or None
        if ray.is_initialized():
            _check_same_cluster(ray, address)
        else:
            on_sigterm = signal.getsignal(signal.SIGTERM)
            if address is None:
                _start_local_instance(ray, num_cpus)
            else:
                _join(ray, address)
            if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaced the caller's handler
            cls.opened_here = True
        cls.users += 1

    @classmethod
    def close(cls) -> None:
        cls.users = max(cls.users - 1, 0)
        if cls.users == 0 and cls.opened_here:
            import_ray().shutdown()
            cls.opened_here = False


QUIET = {"logging_level": logging.ERROR, "log_to_driver": False}


def _start_local_instance(ray, num_cpus: int) -> None:
    """A new Ray instance on this machine that listens on 127.0.0.1 alone, no dashboard.

    On Linux, Ray moves 127.0.0.1 to the host's address unless its "local only" setting
    is off, which it reads from the environment when imported: so the setting is switched
    in this process for the start, and in the environment the instance's processes inherit.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **QUIET
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot start a local Ray instance: {_first_line(exc)}") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env
    host = ray.get_runtime_context().gcs_address.rpartition(":")[0]
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        ray.shutdown()
        raise ConfigError(f"the local Ray instance listened on {host}, not on 127.0.0.1; it was stopped")


def _join(ray, address: str) -> None:
    """Connect to a running cluster; fail at once when nothing listens at its address."""
    check_reachable(address)
    try:
        ray.init(address=address, **QUIET)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = _first_line(exc)
        if "RAY_AUTH_MODE" not in os.environ:
            reason += " (a cluster that requires a token needs RAY_AUTH_MODE=token and its token here)"
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, with the reason, when nothing listens at a ``HOST:PORT`` address.

    Ray itself retries an unreachable address for many minutes before giving up.
    """
    host, port = _host_and_port(address)
    if host is None:
        return  # "auto", "ray://...": Ray resolves those itself
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def _check_same_cluster(ray, address: str | None) -> None:
    """Refuse an address other than the cluster this process is already connected to."""
    host, port = _host_and_port(address or "")
    if host is None:
        return
    current = ray.get_runtime_context().gcs_address
    try:
        wanted = f"{socket.gethostbyname(host)}:{port}"
    except OSError:
        wanted = f"{host}:{port}"
    if wanted != current:
        raise ConfigError(
            f"this process is already connected to the Ray cluster at {current}, not {address}: "
            "call ray.shutdown() first to join another"
        )


def _host_and_port(address: str) -> tuple[str | None, int]:
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return None, 0
    return host.strip("[]"), int(port)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kill(ray, actors: list[Any]) -> None:
    """Kill the actors (those already dead, or with Ray gone, are skipped) and forget them."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead, or Ray is gone
            pass
    actors.clear()


def _release(actors: list[Any], connected: list[bool]) -> None:
    """Kill the actors and let go of the connection; safe to call twice."""
    if actors:
        _kill(import_ray(), actors)
    if connected[0]:
        connected[0] = False
        Connection.close()


class RayEngine(WorkerProcessEngine):
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

    Use it as a context manager to keep the actors across ``train`` and ``predict``
    calls; closing it kills them (and stops a local instance it started).
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        cpus_per_worker: int = 1,
        max_restarts: int = 0,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(workers)
        if cpus_per_worker < 1:
            raise ConfigError(f"cpus_per_worker must be at least 1, got {cpus_per_worker}")
        if max_restarts < 0:
            raise ConfigError(f"max_restarts must be 0 or more, got {max_restarts}")
        self.ray = import_ray()
        self.address = address
        self.cpus_per_worker = int(cpus_per_worker)
        self.max_restarts = int(max_restarts)
        self.runtime_env = runtime_env
        self.restarts = 0
        self._actors: list[Any] = []
        self._connected = [False]
        self._finalizer = weakref.finalize(self, _release, self._actors, self._connected)
        self._sources: list[Any] = []
        self._tasks: dict[int, tuple[int, Task, Any]] = {}
        self._setup_log: list[tuple[int, tuple]] = []
        self._next_key = 0
        self._actor_class = None
        if workers is None:  # as many as the cluster has room for
            self._connect(0)
            self.num_workers = max(1, self._cluster_cpus() // self.cpus_per_worker)

    # -- life cycle ----------------------------------------------------------------------

    def _connect(self, num_workers: int) -> None:
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

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Create (or reuse) one actor per shard and give each its rows; on failure, close.

        Kept actors that died since the last ``start`` are replaced (not counted as
        restarts: no round was lost).
        """
        try:
            created = len(self._actors) != plan.num_shards
            if created:
                _kill(self.ray, self._actors)
                self._connect(plan.num_shards)
                self.num_workers = plan.num_shards
                self._actors.extend(self._new_actor(worker) for worker in range(plan.num_shards))
            for worker in range(self.num_workers):
                if not self._answers(worker, new=created):
                    self._replace(worker)
            self._tasks, self._setup_log = {}, []
            self._sources = shard_sources(dataset, plan)
            loads = [
                actor.load.remote(source) for actor, source in zip(self._actors, self._sources, strict=True)
            ]
            self._collect(loads, retry=lambda worker: self.ray.put(None))  # a restart loads the shard
        except BaseException:
            self.close()
            raise

    def _new_actor(self, worker: int):
        if self._actor_class is None:
            self._actor_class = self.ray.remote(ShardActor)
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_worker,
            "max_restarts": 0,
            "scheduling_strategy": "SPREAD",
        }
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        return self._actor_class.options(**options).remote(
            worker, self.num_workers, self.cpus_per_worker, list(sys.path)
        )

    def _replace(self, worker: int):
        """A new, started actor in the worker's place; the old one is killed first (one
        only unreachable would hold its CPUs)."""
        _kill(self.ray, [self._actors[worker]])
        self._actors[worker] = self._new_actor(worker)
        self._answers(worker, new=True)
        return self._actors[worker]

    def _answers(self, worker: int, new: bool = False) -> bool:
        """Whether the worker's actor answers: False for a dead one. A new actor that
        cannot start, or any that does not answer in time, is an error naming it."""
        try:
            self.ray.get(self._actors[worker].pid.remote(), timeout=READY_TIMEOUT_S)
            return True
        except self.ray.exceptions.GetTimeoutError:
            raise WorkerLost(
                f"worker {worker}: its Ray actor did not answer within {READY_TIMEOUT_S:.0f} s "
                "(is the cluster out of CPUs?)"
            ) from None
        except self.ray.exceptions.RayActorError as exc:
            if not new:
                return False
            raise WorkerLost(
                f"worker {worker}: its Ray actor could not start ({_first_line(exc)}); "
                "is paragrad installed on every node?"
            ) from None

    @property
    def pids(self) -> list[int]:
        """Process ids of the actors (on whichever node each runs)."""
        return self.ray.get([actor.pid.remote() for actor in self._actors])

    @property
    def actors(self) -> list[Any]:
        """The actor handles, in worker order."""
        return list(self._actors)

    def close(self) -> None:
        _release(self._actors, self._connected)
        self._sources, self._tasks, self._setup_log = [], {}, []

    # -- rounds --------------------------------------------------------------------------

    def _check_started(self) -> None:
        if not self._actors or not self._sources:
            raise ConfigError("the ray engine has no workers: call start() first")

    def _run(self, task: Task, args: tuple) -> list[Any]:
        key = self._task_key(task)
        size = payload_nbytes(args)
        sent = self.ray.put(args) if size >= PUT_BYTES else args
        calls = [actor.run.remote(key, sent) for actor in self._actors]
        results = self._collect(calls, retry=lambda worker: self._actors[worker].run.remote(key, sent))
        self.last_bytes_sent = size * self.num_workers
        self.last_bytes_received = payload_nbytes(results)
        return results

    def _task_key(self, task: Task) -> int:
        """Send a task to every actor the first time it is used; afterwards only its key."""
        known = self._tasks.get(id(task))
        if known is not None and known[1] is task:
            return known[0]
        key, self._next_key = self._next_key, self._next_key + 1
        payload = self.ray.put(self.ray.cloudpickle.dumps(task))
        self._tasks[id(task)] = (key, task, payload)
        try:
            sends = [actor.add_task.remote(key, payload) for actor in self._actors]
            self._collect(sends, retry=lambda worker: self.ray.put(None))  # a restart sends every task
        except BaseException:
            del self._tasks[id(task)]
            raise
        return key

    def _collect(self, calls: list[Any], retry) -> list[Any]:
        """Each call's result in worker order; a dead actor is recreated and its call retried."""
        try:
            return self.ray.get(calls)  # the common case, in one wait
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError):
            pass  # find out which worker failed, and how
        results: list[Any] = [None] * len(calls)
        failure = None
        for worker, call in enumerate(calls):
            while True:
                try:
                    results[worker] = self.ray.get(call)
                    break
                except self.ray.exceptions.RayActorError as exc:
                    self._restart(worker, exc)
                    call = retry(worker)
                except self.ray.exceptions.RayTaskError as exc:
                    failure = failure or (worker, getattr(exc, "cause", None), str(exc))
                    break
        if failure is not None:
            raise task_failure(*failure)
        return results

    def _restart(self, worker: int, exc: Exception) -> None:
        """Replace a dead actor with a new one on the same shard, or raise WorkerLost.

        The new actor loads its shard, gets every task, and replays the tasks that changed
        the shard; should it die during that, it is replaced again (while restarts last).
        """
        message = f"worker {worker} died ({_death_reason(exc)})"
        if self.restarts >= self.max_restarts:
            raise WorkerLost(message + (f" after {self.restarts} restart(s)" if self.restarts else ""))
        self.restarts += 1
        try:
            actor = self._replace(worker)
            self.ray.get(actor.load.remote(self._sources[worker]))
            self.ray.get([actor.add_task.remote(key, payload) for key, _, payload in self._tasks.values()])
            for key, args in self._setup_log:
                self.ray.get(actor.run.remote(key, args))
        except self.ray.exceptions.RayActorError as again:
            self._restart(worker, again)
        except self.ray.exceptions.RayTaskError as failed:
            # A new actor without its shard or set-up must not compute: the engine closes.
            raise WorkerLost(
                f"worker {worker}: its new actor could not be set up: {str(failed).strip().splitlines()[-1]}"
            ) from None


def _death_reason(exc: Exception) -> str:
    text = str(exc)
    if "ray.kill" in text or "killed" in text:
        return "its actor was killed"
    if "exit" in text.lower():
        return "its actor process exited"
    return f"its actor died: {_first_line(exc)}"


__all__ = ["RayEngine", "import_ray"]
