"""The restart-and-replay protocol exists once, in ``WorkerSession``: an engine made of
plain objects in this file gets it by supplying only the mechanics."""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad.core.shards import Shard, ShardPlan, plan_shards
from paragrad.engines.session import Deaths, Died, Done, Raised, Reply, WorkerSession
from paragrad.training.tasks import TrainStep


class ObjectWorker:
    """A worker that is an object: its shard and the tasks it was sent."""

    def __init__(self, worker: int, num_workers: int) -> None:
        self.worker, self.num_workers = worker, num_workers
        self.shard: Shard | None = None
        self.tasks: dict[int, Any] = {}


class ObjectEngine(WorkerSession):
    """Spawn = construct an object, call = call it, kill = drop it."""

    name = "objects"

    def __init__(self, workers: int, *, max_restarts: int = 0, kill_at_round: int | None = None) -> None:
        super().__init__(workers, max_restarts=max_restarts)
        self.workers: list[ObjectWorker | None] = []
        self.rows: list[pg.Dataset] = []
        self.kill_at_round = kill_at_round
        self.spawned = 0

    def kill(self, worker: int) -> None:
        self.workers[worker] = None

    def run(self, task: Any, *args: Any) -> list[Any]:
        if isinstance(task, TrainStep) and args[1] == self.kill_at_round:
            self.kill(1)
        return super().run(task, *args)

    def _keeps_workers(self, num_workers: int) -> bool:
        return len(self.workers) == num_workers

    def _prepare(self, num_workers: int) -> None:
        pass

    def _spawn(self, workers: Sequence[int]) -> None:
        while len(self.workers) < self.num_workers:
            self.workers.append(None)
        for worker in workers:
            self.workers[worker] = ObjectWorker(worker, self.num_workers)
            self.spawned += 1

    def _alive(self, worker: int) -> bool:
        return self.workers[worker] is not None

    def _place(self, dataset: pg.Dataset, plan: ShardPlan) -> None:
        self.rows = [dataset.take(plan.rows(worker)) for worker in range(plan.num_shards)]

    def _load(self, workers: Sequence[int]) -> Deaths:
        deaths: Deaths = []
        for worker in workers:
            target = self.workers[worker]
            if target is not None:
                rows = self.rows[worker]
                virtual = self._plan.virtual(worker)
                target.shard, target.tasks = (
                    Shard(rows.X, rows.y, worker, self.num_workers, virtual=virtual),
                    {},
                )
            deaths.append(Died("dropped") if target is None else None)
        return deaths

    def _add_task(self, workers: Sequence[int], key: int, payload: Any) -> Deaths:
        deaths: Deaths = []
        for worker in workers:
            target = self.workers[worker]
            if target is not None:
                target.tasks[key] = pickle.loads(payload)
            deaths.append(Died("dropped") if target is None else None)
        return deaths

    def _call(self, key: int, args: tuple[Any, ...], workers: Sequence[int], copy: bool) -> list[Reply]:
        replies: list[Reply] = []
        for worker in workers:
            target = self.workers[worker]
            if target is None or target.shard is None:
                replies.append(Died("dropped"))
                continue
            try:
                replies.append(Done(target.tasks[key](target.shard, *args)))
            except Exception as exc:
                replies.append(Raised(exc, traceback.format_exc()))
        return replies

    def _drop(self, workers: Sequence[int]) -> None:
        self.workers[:] = [w for i, w in enumerate(self.workers) if i not in set(workers)]

    def _stop(self) -> None:
        self.workers.clear()


def _train(engine: Any) -> pg.Run:
    # Standardisation changes the shards: a replacement must replay it to compute alike.
    X = pg.make_classification(400, 4, seed=5).X * 7.0 + 3.0
    data = pg.Dataset(X, pg.make_classification(400, 4, seed=5).y)
    return pg.train(
        pg.models.LogisticRegression(),
        data,
        strategy=pg.SGD(batch_size=16),
        optimizer=pg.optim.SGD(lr=0.1),
        engine=engine,
        workers=2,
        epochs=3,
        tol=0,
        standardize=True,
        seed=4,
    )


def test_a_worker_killed_mid_run_is_replaced_and_the_run_is_undisturbed():
    undisturbed = _train("serial")
    with ObjectEngine(2, max_restarts=1, kill_at_round=20) as engine:
        run = _train(engine)
        assert engine.restarts == 1 and engine.spawned == 3
    assert len(run.history) == len(undisturbed.history)
    assert relative_error(run.params, undisturbed.params) <= 1e-12


def test_without_replay_of_the_set_up_the_replacement_would_compute_otherwise():
    """The check above can fail: a replacement that skips the set-up log ends elsewhere."""

    class ForgetfulEngine(ObjectEngine):
        def _call(self, key: int, args: tuple[Any, ...], workers: Sequence[int], copy: bool) -> list[Reply]:
            replaying = any(key == logged for logged, _ in self._setup_log) and len(workers) == 1
            if replaying and self.restarts:
                return [Done(None)]  # pretend the set-up ran
            return super()._call(key, args, workers, copy)

    undisturbed = _train("serial")
    with ForgetfulEngine(2, max_restarts=1, kill_at_round=20) as engine:
        run = _train(engine)
    assert relative_error(run.params, undisturbed.params) > 1e-3


def test_without_restarts_a_killed_worker_is_named_with_its_round():
    with ObjectEngine(2, kill_at_round=7) as engine:
        with pytest.raises(pg.errors.WorkerLost, match=r"round 7: worker 1 died \(dropped\)"):
            _train(engine)
        assert engine.workers == []  # a lost worker stops them all


def test_a_replacement_that_cannot_load_its_shard_ends_the_run_with_workers_stopped():
    class NoSecondChance(ObjectEngine):
        def _load(self, workers: Sequence[int]) -> Deaths:
            if self.restarts:
                raise pg.DataError("data file not found where the replacement runs")
            return super()._load(workers)

    with NoSecondChance(2, max_restarts=1, kill_at_round=5) as engine:
        with pytest.raises(pg.errors.WorkerLost, match="worker 1: its replacement could not be set up: data"):
            _train(engine)
        assert engine.workers == []


def fail_on_every_worker(shard: Shard) -> int:
    raise ValueError(f"worker {shard.worker} failed")


def rows(shard: Shard) -> int:
    return shard.num_rows


def first_row(shard: Shard) -> np.ndarray:
    return np.asarray(shard.X[0])


def test_the_lowest_workers_failure_is_raised_and_the_engine_stays_usable():
    with ObjectEngine(3) as engine:
        engine.start(pg.make_regression(30, 2), plan_shards(30, 3))
        with pytest.raises(pg.errors.WorkerError, match="worker 0 raised ValueError: worker 0 failed"):
            engine.run(fail_on_every_worker)
        assert engine.run(rows) == [10, 10, 10]


def test_results_come_back_in_worker_order_as_arrays():
    data = pg.make_regression(30, 2, seed=1)
    with ObjectEngine(3) as engine:
        engine.start(data, plan_shards(30, 3))
        np.testing.assert_array_equal(np.stack(engine.run(first_row)), data.X[[0, 10, 20]])


class Undeclared:
    """Sets a capability without the Task base: it would go unseen, so it is refused."""

    mutates_shard = True

    def __call__(self, shard: Shard) -> None:
        shard.X = shard.X + 1.0


def test_a_callable_object_without_the_task_base_is_refused_by_name():
    with ObjectEngine(2) as engine:
        engine.start(pg.make_regression(10, 2), plan_shards(10, 2))
        with pytest.raises(pg.ConfigError, match="got Undeclared: subclass Task"):
            engine.run(Undeclared())
        assert engine.run(rows) == [5, 5]
