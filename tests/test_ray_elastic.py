"""Elastic runs on a real multi-node Ray cluster on this machine: a node added mid-run
grows the run, a node removed mid-run shrinks it, and the parameters stay those of a
fixed-size run."""

from __future__ import annotations

import logging
import time

import pytest
from conftest import relative_error

import paragrad as pg

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from paragrad.engines.ray import RayEngine  # noqa: E402
from paragrad.training.strategies import Strategy  # noqa: E402

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    """A head node with one CPU (Ray's own processes, stopped by Ray by process id)."""
    assert not ray.is_initialized()
    nodes = cluster_utils.Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    ray.init(address=nodes.address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def _fit(strategy: Strategy, engine, workers=2, callbacks=()) -> pg.Run:
    data = pg.make_classification(800, 6, seed=2)
    rounds = {"gd": 40, "sgd": 60}[strategy.name]
    return pg.train(
        pg.models.LogisticRegression(l2=0.01),
        data,
        strategy=strategy,
        optimizer=pg.optim.Adam(lr=0.05),
        engine=engine,
        workers=workers,
        epochs=100,
        max_rounds=rounds,
        tol=0,
        standardize=True,
        callbacks=list(callbacks),
    )


class NodeComesAndGoes:
    """After round 3 a node joins; once the run has grown onto it (waiting for that
    outside the rounds), the node is removed, taking its worker with it."""

    def __init__(self, cluster) -> None:
        self.cluster, self.node, self.removed_after = cluster, None, None

    def __call__(self, record: dict) -> None:
        if record["round"] == 3:
            self.node = self.cluster.add_node(**NODE)
        elif self.node is not None and self.removed_after is None:
            if record["workers"] == 2:
                self.cluster.remove_node(self.node, allow_graceful=True)
                self.removed_after = record["round"]
            else:
                time.sleep(0.1)  # the new actor is starting: rounds go on meanwhile


@pytest.mark.parametrize("strategy", [pg.GradientDescent, lambda: pg.SGD(batch_size=32)], ids=["gd", "sgd"])
def test_a_node_added_grows_the_run_a_node_removed_shrinks_it_and_the_parameters_stay(cluster, strategy):
    fixed = _fit(strategy(), "serial")
    events = NodeComesAndGoes(cluster)
    with RayEngine(grow_every_s=0.0, start_timeout_s=30.0) as engine:
        run = _fit(strategy(), engine, workers=(1, 2), callbacks=[events])
    assert relative_error(run.params, fixed.params) <= 1e-12
    assert [record["round"] for record in run.history] == list(
        range(len(fixed.history))
    )  # none lost or repeated
    counts = [record["workers"] for record in run.history]
    assert counts[0] == 1 and counts[-1] == 1 and 2 in counts
    grown, shrunk = run.changes
    assert (grown.before, grown.after) == (1, 2) and grown.cause.startswith("capacity found")
    assert (shrunk.before, shrunk.after, shrunk.round) == (2, 1, events.removed_after + 1)
    assert shrunk.cause.startswith("worker 1 died")
    assert counts[grown.round : shrunk.round] == [2] * (shrunk.round - grown.round)


def test_a_lost_node_with_no_room_for_a_replacement_shrinks_at_once_despite_restarts(cluster):
    """max_restarts=1, but no free CPU for a replacement: the run shrinks within seconds,
    as one without restarts would, instead of waiting start_timeout_s for the actor."""
    fixed = _fit(pg.SGD(batch_size=32), "serial")
    node = cluster.add_node(**NODE)

    def remove_at_round_5(record: dict) -> None:
        if record["round"] == 5:
            cluster.remove_node(node, allow_graceful=True)

    with RayEngine(2, max_restarts=1, start_timeout_s=300.0, grow_every_s=3600) as engine:
        started = time.monotonic()
        run = _fit(pg.SGD(batch_size=32), engine, workers=(1, 2), callbacks=[remove_at_round_5])
        assert time.monotonic() - started < 120 and len(engine.actors) == 1
    assert relative_error(run.params, fixed.params) <= 1e-12
    (change,) = run.changes
    assert (change.before, change.after, change.round) == (2, 1, 6)
    assert "no free CPU in the Ray cluster for its replacement" in change.cause


def test_after_an_explicit_resize_the_run_grows_no_more_on_its_own(cluster):
    node = cluster.add_node(**NODE)
    try:
        with RayEngine(2, grow_every_s=0.0) as engine:

            def shrink_at_round_5(record: dict) -> None:
                if record["round"] == 5:
                    engine.resize(1)

            run = _fit(pg.SGD(batch_size=32), engine, workers=(1, 2), callbacks=[shrink_at_round_5])
        assert [(c.before, c.after, c.cause) for c in run.changes] == [(2, 1, "resize")]
        assert run.history[-1]["workers"] == 1
    finally:
        cluster.remove_node(node, allow_graceful=True)
