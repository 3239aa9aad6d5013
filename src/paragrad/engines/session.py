"""The shared core of every engine whose workers may die: tasks, set-up log, restarts.

An engine with worker processes (or actors) keeps what a replacement worker needs to
catch up: every task it was sent (by key) and the runs of tasks that changed the shard
(the set-up log). When a worker dies during a round, the session starts a new one in its
place (within ``max_restarts``), gives it its shard, every task and a replay of the
set-up log, and runs its part of the round again, so the round's result is the one an
undisturbed run would have had. A task that raises comes back as a value, and the lowest
worker's failure is raised, whatever the timing. A worker silent for ``round_timeout_s``
(stopped, hung) is killed by the engine and comes back as dead like any other, so nothing
waits forever; ``restarts`` is a budget for each ``start`` (each call), not for the engine.

Between rounds the workers may change: :meth:`WorkerSession._regroup` hands the run's
virtual shards to another number of workers (a ``resize``, capacity found, or a worker
lost for good while the run may shrink), each loading its new rows from where the data
lies and catching up like a replacement; the workers' state arrays move with the rows.
A worker lost during a round with no restart left shrinks the run (down to
``min_workers``) and the round's pass runs again on the rest.

An engine supplies only the mechanics, the abstract methods of :class:`WorkerSession`:
start a worker, tell whether it lives, place the data, load shards, add a task, call
workers, drop some, and stop them all.
"""

from __future__ import annotations

import itertools
import pickle
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from paragrad.core.shards import MembershipChange, ShardPlan, Task, as_task, move_state
from paragrad.data import Dataset
from paragrad.engines.base import Engine, GiveState, TakeState, task_failure
from paragrad.errors import ConfigError, ParagradError, WorkerLost


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

    ``restarts`` counts the workers replaced during rounds since the last ``start``, at
    most ``max_restarts``: each ``train`` or ``predict`` call has the whole budget, on an
    engine kept between calls too.
    """

    def __init__(self, workers: int | None = None, *, max_restarts: int = 0) -> None:
        super().__init__(workers)
        self.max_restarts = check_restarts(max_restarts)
        self.restarts = 0
        self._tasks: dict[int, RegisteredTask] = {}
        self._setup_log: list[tuple[int, tuple[Any, ...]]] = []
        self._keys = itertools.count()
        self._placed = False
        self._dataset: Dataset | None = None
        self._plan: ShardPlan | None = None
        self._extra = 0  # slots after the last worker holding prestarted workers

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
        """Run task ``key`` on ``workers``; one reply each, in the same order. A worker
        silent for ``round_timeout_s`` meanwhile is killed, and its reply is ``Died``.

        Adds what it moves to ``last_bytes_sent`` and ``last_bytes_received``. Without
        ``copy``, results may be views that stay valid until the next call.
        """

    @abstractmethod
    def _drop(self, workers: Sequence[int]) -> None:
        """Stop the workers in these slots and remove the slots (the later ones move up)."""

    def _prestart(self, workers: Sequence[int]) -> None:
        """Start workers in these new slots without waiting for them (a run grows onto
        them once they are ready, so their start overlaps rounds); by default, nothing."""

    def _ready(self, worker: int) -> bool:
        """Whether the worker in a prestarted slot is ready, without waiting."""
        return True

    def _died_starting(self, worker: int) -> bool:
        """Whether a prestarted worker is known dead, without waiting; by default never (a
        death then shows when the run grows onto it, and is replaced or dropped there)."""
        return False

    def _await_ready(self, workers: Sequence[int]) -> None:
        """Wait until started workers can compute (their start overlaps the placement);
        by default they can at once."""

    def _replan(self, plan: ShardPlan) -> None:
        """Where each worker of a regrouped plan finds its rows (the data stays placed)."""
        assert self._dataset is not None
        self._place(self._dataset, plan)

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
        with self.claimed():
            self._start(dataset, plan)

    def _start(self, dataset: Dataset, plan: ShardPlan) -> None:
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
            self.restarts = 0  # a budget per call, not shared with the calls before
            self._tasks, self._setup_log = {}, []
            self._dataset, self._plan, self._extra = dataset, plan, 0
            self._begin(plan)
            placing = time.perf_counter()
            self._place(dataset, plan)
            self.placing_s = time.perf_counter() - placing
            self._replace_dead(workers, self._load(workers))  # may shrink an elastic run
            self._await_ready(range(self.num_workers))
            self._placed = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._stop()
        self._tasks, self._setup_log, self._placed = {}, [], False
        self._dataset, self._plan, self._extra = None, None, 0

    def between_rounds(self, round_index: int) -> None:
        """Apply a membership change that is due; a growth asked for without waiting is
        applied once its new workers, started at the first boundary after the request,
        are ready."""
        if self._requested is not None and self._placed and self._requested[0] > self.num_workers:
            count, _, wait = self._requested
            new = range(self.num_workers, count)
            self._prestart(new[self._extra :])
            self._extra = len(new)
            if not self._growth_survives(round_index, list(new)):
                return
            if not wait and not all(self._ready(worker) for worker in self._growth()):
                return
        super().between_rounds(round_index)

    def _growth(self) -> range:
        """The slots of the workers started for a growth asked for."""
        return range(self.num_workers, self.num_workers + self._extra)

    def _growth_survives(self, round_index: int, new: list[int]) -> bool:
        """Replace the workers started for a growth that died before they were used, while
        restarts last; else go on without them (the growth shrinks, or is given up and
        recorded in ``changes``). Whether a growth is still asked for."""
        dead = [worker for worker in new if self._died_starting(worker)]
        if not dead:
            return True
        assert self._requested is not None
        count, cause, wait = self._requested
        if self.restarts + len(dead) <= self.max_restarts:
            self.restarts += len(dead)
            self._spawn(dead)
            return True
        self._drop(dead)
        self._extra -= len(dead)
        count -= len(dead)
        died = f"{len(dead)} worker(s) started for it died before they could be used"
        if count > self.num_workers:
            self._requested = (count, f"{cause}; {died}", wait)
            return True
        self._requested = None
        given_up = f"{cause} given up: {died}"
        self.changes.append(MembershipChange(round_index, self.num_workers, self.num_workers, given_up, 0.0))
        return False

    # -- rounds --------------------------------------------------------------------------------

    def run(self, task: Task | Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``task`` on every worker; results in worker order.

        A task that raises leaves the engine usable; a worker lost for good, or an
        interruption (Ctrl-C), stops all workers, so the next ``start`` begins afresh.
        """
        with self.claimed():
            return self._run(task, args)

    def _run(self, task: Task | Callable[..., Any], args: tuple[Any, ...]) -> list[Any]:
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
                try:
                    self._restart(worker, reply.reason)
                except WorkerLost as lost:
                    if self.num_workers <= self.min_workers:
                        if self.min_workers < self.max_workers:  # an elastic run at its fewest
                            raise WorkerLost(f"{lost}; the run is down to its fewest workers") from None
                        raise
                    self._shrink(worker, str(lost))
                    return self._round(entry, args)  # the whole pass, on the workers left
                reply = self._call(entry.key, args, [worker], copy)[0]  # the round's part, again
            replies[worker] = reply
        for worker, reply in enumerate(replies):
            if isinstance(reply, Raised):
                raise task_failure(worker, reply.error, reply.traceback)
        return [reply.value for reply in replies if isinstance(reply, Done)]

    def _shrink(self, worker: int, cause: str) -> None:
        """Go on without ``worker`` (and any other that died): its rows go to the rest."""
        lost = tuple(w for w in range(self.num_workers) if w == worker or not self._alive(w))
        count = self.num_workers - len(lost)
        if count < self.min_workers:
            raise WorkerLost(f"{cause}; {count} worker(s) left, fewer than the {self.min_workers} asked for")
        self._timed_regroup(self._round_index, count, cause, lost)

    def _regroup(self, count: int, lost: tuple[int, ...]) -> None:
        """Hand the run's virtual shards to ``count`` workers: the ``lost`` ones and any
        beyond ``count`` go, new ones start; every worker loads its rows, gets the tasks
        and replays the set-up log, and the state arrays follow the rows."""
        assert self._plan is not None
        self._plan.regroup(count)  # refuses a count the rows cannot take, before anything changes
        survivors = [w for w in range(self.num_workers) if w not in lost]
        states = self._take_states(survivors)
        self._drop(lost)
        started = len(survivors) + self._extra  # the prestarted workers follow the survivors
        if count < started:
            self._drop(range(count, started))
        old_bounds, kept, self._extra = self._plan.bounds, min(count, started), 0
        self._use_plan(count)
        if count > kept:
            self._spawn(range(kept, count))
        self._settle()
        moved = move_state([states.get(w) for w in range(len(old_bounds))], old_bounds, self._plan.bounds)
        # Every worker answers this one, so the change's time includes loading the rows.
        self._settle(GiveState(tuple(moved)))

    def _use_plan(self, count: int) -> None:
        assert self._plan is not None
        self._plan, self.num_workers = self._plan.regroup(count), count
        self._replan(self._plan)

    def _settle(self, then: Task | None = None) -> None:
        """Bring every worker up to date (unless only ``then`` is to run), then run ``then``
        on all. One that dies meanwhile is replaced while restarts last, else dropped and its
        rows handed to the rest, down to ``min_workers``; below that: WorkerLost."""
        stale = then is None
        while True:
            try:
                if stale:
                    self._bring_up(range(self.num_workers))
                    stale = False
                for reply in [] if then is None else self._one_off(then, range(self.num_workers)):
                    if isinstance(reply, Died):
                        raise _Replacement(reply.reason)
                return
            except _Replacement as died:
                dead = [w for w in range(self.num_workers) if not self._alive(w)]
                if dead and self.restarts + len(dead) <= self.max_restarts:
                    self.restarts += len(dead)
                    self._spawn(dead)
                elif dead and self.num_workers - len(dead) >= self.min_workers:
                    self._drop(dead)
                    self._use_plan(self.num_workers - len(dead))
                else:
                    raise WorkerLost(f"a worker died ({died.reason}) while the workers changed") from None
                stale = True

    def _take_states(self, workers: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The state arrays of these workers (a dead one's are lost)."""
        replies = self._one_off(TakeState(), workers)
        return {w: reply.value for w, reply in zip(workers, replies, strict=True) if isinstance(reply, Done)}

    def _one_off(self, task: Task, workers: Sequence[int]) -> list[Reply]:
        """Run an engine's own task once on these workers (not kept for replacements)."""
        key = next(self._keys)
        deaths = self._add_task(workers, key, self._encode(task))
        replies = self._call(key, (), workers, copy=True)
        return [died or reply for died, reply in zip(deaths, replies, strict=True)]

    def _replace_dead(self, workers: Sequence[int], deaths: Deaths) -> None:
        """Replace the workers that died taking a message; with no restart left, an
        elastic run goes on without them (every worker left is then up to date)."""
        for worker, died in zip(workers, deaths, strict=True):
            if died is not None:
                try:
                    self._restart(worker, died.reason)
                except WorkerLost as lost:
                    if self.num_workers <= self.min_workers:
                        raise
                    self._shrink(worker, str(lost))
                    return

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
        self._bring_up([worker])

    def _bring_up(self, workers: Sequence[int]) -> None:
        """Give the workers their shards, every task and the set-up log's replay."""
        deaths = self._load(workers)
        for entry in self._tasks.values():
            deaths = [
                a or b for a, b in zip(deaths, self._add_task(workers, entry.key, entry.payload), strict=True)
            ]
        for died in deaths:
            if died is not None:
                raise _Replacement(died.reason)
        for key, args in self._setup_log:
            for worker, reply in zip(workers, self._call(key, args, workers, copy=True), strict=True):
                if isinstance(reply, Died):
                    raise _Replacement(reply.reason)
                if isinstance(reply, Raised):
                    last = (reply.traceback.strip().splitlines() or [""])[-1]
                    raise WorkerLost(
                        f"worker {worker}: its shard changed, but replaying its set-up failed: {last}"
                    )
