"""The shared core of every engine whose workers may die: tasks, set-up log, restarts.

An engine with worker processes (or actors) keeps what a replacement worker needs to
catch up: every task it was sent (by key) and the runs of tasks that changed the shard
(the set-up log). When a worker dies during a round, the session starts a new one in its
place (within ``max_restarts``), gives it its shard, every task and a replay of the
set-up log, and runs its part of the round again, so the round's result is the one an
undisturbed run would have had. A task that raises comes back as a value, and the lowest
worker's failure is raised, whatever the timing.

An engine supplies only the mechanics, the abstract methods of :class:`WorkerSession`:
start a worker, tell whether it lives, place the data, load shards, add a task, call
workers, and stop them all.
"""

from __future__ import annotations

import itertools
import pickle
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from paragrad.data import Dataset
from paragrad.engines.base import Engine, task_failure
from paragrad.errors import ConfigError, ParagradError, WorkerLost
from paragrad.shards import ShardPlan, Task, as_task


@dataclass(frozen=True)
class Done:
    """A worker's result."""

    value: Any


@dataclass(frozen=True)
class Raised:
    """A task raised on the worker: the exception (when it could travel) and its traceback."""

    error: BaseException | None
    traceback: str


@dataclass(frozen=True)
class Died:
    """The worker died before it replied."""

    reason: str


Reply = Done | Raised | Died
Deaths = list[Died | None]  # per worker asked: how it died, or None when it took the message


@dataclass(frozen=True)
class RegisteredTask:
    """A task the workers hold under ``key``; ``source`` is what the caller passed."""

    key: int
    task: Task
    source: Callable[..., Any]
    payload: Any


def check_restarts(max_restarts: int) -> int:
    """``max_restarts`` as given, refused when negative."""
    if max_restarts < 0:
        raise ConfigError(f"max_restarts must be 0 or more, got {max_restarts}")
    return int(max_restarts)


class _Replacement(Exception):
    """A new worker died while it was being brought up to date."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerSession(Engine):
    """An engine whose workers are other processes, which may die and be replaced.

    ``restarts`` counts the workers replaced during rounds, at most ``max_restarts``.
    """

    def __init__(self, workers: int | None = None, *, max_restarts: int = 0) -> None:
        super().__init__(workers)
        self.max_restarts = check_restarts(max_restarts)
        self.restarts = 0
        self._tasks: dict[int, RegisteredTask] = {}
        self._setup_log: list[tuple[int, tuple[Any, ...]]] = []
        self._keys = itertools.count()
        self._placed = False

    # -- the mechanics an engine supplies -------------------------------------------------------

    @abstractmethod
    def _keeps_workers(self, num_workers: int) -> bool:
        """Whether the running workers can serve a plan of ``num_workers`` shards."""

    @abstractmethod
    def _prepare(self, num_workers: int) -> None:
        """Get ready to start ``num_workers`` workers afresh (connect, check capacity)."""

    @abstractmethod
    def _spawn(self, workers: Sequence[int]) -> None:
        """Start a new worker in each slot of ``workers``, stopping whatever was there."""

    @abstractmethod
    def _alive(self, worker: int) -> bool:
        """Whether the worker in slot ``worker`` lives and answers."""

    @abstractmethod
    def _place(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Put the data where the workers can load their shards from."""

    @abstractmethod
    def _load(self, workers: Sequence[int]) -> Deaths:
        """Give each worker its shard as placed (dropping the tasks it held)."""

    @abstractmethod
    def _add_task(self, workers: Sequence[int], key: int, payload: Any) -> Deaths:
        """Send the workers a task under ``key``."""

    @abstractmethod
    def _call(self, key: int, args: tuple[Any, ...], workers: Sequence[int], copy: bool) -> list[Reply]:
        """Run task ``key`` on ``workers``; one reply each, in the same order.

        Adds what it moves to ``last_bytes_sent`` and ``last_bytes_received``. Without
        ``copy``, results may be views that stay valid until the next call.
        """

    @abstractmethod
    def _stop(self) -> None:
        """Stop every worker and release what they hold; safe to call twice."""

    def _encode(self, task: Task) -> Any:
        """The form in which a task travels to the workers."""
        try:
            return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:  # a lambda, a local function
            raise ConfigError(
                f"cannot send the work to worker processes ({exc}): define functions you pass "
                "(a custom loss) with def at a module's top level, or use engine='serial'"
            ) from None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, dataset: Dataset, plan: ShardPlan) -> None:
        """Start (or reuse) the workers and give each its shard; on any failure, stop them all.

        Kept workers that died since the last ``start`` are replaced (not counted as
        restarts: no round was lost).
        """
        try:
            workers = range(plan.num_shards)
            if self._keeps_workers(plan.num_shards):
                self._spawn([worker for worker in workers if not self._alive(worker)])
            else:
                self._stop()
                self._prepare(plan.num_shards)
                self.num_workers = plan.num_shards
                self._spawn(workers)
            self.num_workers = plan.num_shards
            self._tasks, self._setup_log = {}, []
            self._place(dataset, plan)
            self._replace_dead(workers, self._load(workers))
            self._placed = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._stop()
        self._tasks, self._setup_log, self._placed = {}, [], False

    # -- rounds --------------------------------------------------------------------------------

    def run(self, task: Task | Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``task`` on every worker; results in worker order.

        A task that raises leaves the engine usable; a worker lost for good, or an
        interruption (Ctrl-C), stops all workers, so the next ``start`` begins afresh.
        """
        if not self._placed:
            raise ConfigError(f"the {self.name} engine has no workers: call start() first")
        try:
            entry = self._register(task)
            results = self._round(entry, args)
        except WorkerLost:
            self.close()
            raise
        except ParagradError:
            raise  # a task failed, but every worker replied: the engine is in order
        except BaseException:
            self.close()
            raise
        if entry.task.mutates_shard:
            self._setup_log.append((entry.key, args))
        return results

    def _register(self, task: Task | Callable[..., Any]) -> RegisteredTask:
        """The task's entry; sent to every worker the first time it is used."""
        known = self._tasks.get(id(task))
        if known is not None and known.source is task:
            return known
        typed = as_task(task)
        entry = RegisteredTask(next(self._keys), typed, task, self._encode(typed))
        self._tasks[id(task)] = entry
        try:
            workers = range(self.num_workers)
            self._replace_dead(workers, self._add_task(workers, entry.key, entry.payload))
        except BaseException:
            del self._tasks[id(task)]
            raise
        return entry

    def _round(self, entry: RegisteredTask, args: tuple[Any, ...]) -> list[Any]:
        """Every worker's result; dead workers are replaced and run their part again."""
        self.last_bytes_sent = self.last_bytes_received = 0
        copy = not entry.task.zero_copy_results
        replies = self._call(entry.key, args, range(self.num_workers), copy)
        for worker, reply in enumerate(replies):
            while isinstance(reply, Died):
                self._restart(worker, reply.reason)
                reply = self._call(entry.key, args, [worker], copy)[0]  # the round's part, again
            replies[worker] = reply
        for worker, reply in enumerate(replies):
            if isinstance(reply, Raised):
                raise task_failure(worker, reply.error, reply.traceback)
        return [reply.value for reply in replies if isinstance(reply, Done)]

    def _replace_dead(self, workers: Sequence[int], deaths: Deaths) -> None:
        for worker, died in zip(workers, deaths, strict=True):
            if died is not None:
                self._restart(worker, died.reason)

    def _restart(self, worker: int, reason: str) -> None:
        """Start a new worker in a dead one's place and bring it up to date, or raise
        WorkerLost when out of restarts. A new worker that dies too is replaced again."""
        while True:
            message = f"worker {worker} died ({reason})"
            if self.restarts >= self.max_restarts:
                raise WorkerLost(message + (f" after {self.restarts} restart(s)" if self.restarts else ""))
            self.restarts += 1
            traffic = self.last_bytes_sent, self.last_bytes_received
            try:
                self._catch_up(worker)
                return
            except _Replacement as again:
                reason = again.reason
            except WorkerLost:
                raise
            except ParagradError as failed:  # a replacement without its shard must not compute
                raise WorkerLost(f"worker {worker}: its replacement could not be set up: {failed}") from None
            finally:  # bringing a replacement up to date is not the round's traffic
                self.last_bytes_sent, self.last_bytes_received = traffic

    def _catch_up(self, worker: int) -> None:
        """Start a new worker and give it its shard, every task and the set-up log's replay."""
        self._spawn([worker])
        died = self._load([worker])[0]
        for entry in self._tasks.values():
            died = died or self._add_task([worker], entry.key, entry.payload)[0]
        if died is not None:
            raise _Replacement(died.reason)
        for key, args in self._setup_log:
            reply = self._call(key, args, [worker], copy=True)[0]
            if isinstance(reply, Died):
                raise _Replacement(reply.reason)
            if isinstance(reply, Raised):
                last = (reply.traceback.strip().splitlines() or [""])[-1]
                raise WorkerLost(f"worker {worker}: restarted, but replaying its set-up failed: {last}")
