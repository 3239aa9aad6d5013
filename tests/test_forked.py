"""The forked engine: workers forked from this process read its arrays where they lie, give
the serial answers, survive the local engine's faults, and never outlive the call."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import is_running, shared_memory_of

import paragrad as pg
from paragrad.core.shards import Task, plan_shards
from paragrad.engines.forked import ForkedEngine
from paragrad.errors import WorkerLost
from paragrad.models import rowwise

GD = dict(strategy=pg.GradientDescent(), optimizer=pg.optim.SGD(lr=0.1), epochs=8, tol=0, seed=0)


class WhereRowsLie(Task):
    """The process and the address of the shard's first feature value."""

    def __call__(self, shard):
        return os.getpid(), shard.X.__array_interface__["data"][0]


def test_forked_workers_read_the_callers_rows_where_they_lie():
    data = pg.make_classification(1000, 4, seed=0)
    with ForkedEngine(2) as engine:
        engine.start(data, plan_shards(1000, 2))
        (first_pid, first), (second_pid, second) = engine.run(WhereRowsLie())
        pids = engine.pids
    row_bytes = data.X.strides[0]
    address = data.X.__array_interface__["data"][0]
    assert (first, second) == (address, address + 500 * row_bytes)  # the same pages, not a copy
    assert [first_pid, second_pid] == pids and os.getpid() not in pids
    assert not any(map(is_running, pids))  # stopped and reaped with the engine


class StrikingEngine(ForkedEngine):
    """A forked engine that stops (SIGSTOP) or kills (SIGKILL) worker 1 after some rounds."""

    def __init__(self, *args, strike_after: int, how: signal.Signals, **kwargs):
        super().__init__(*args, **kwargs)
        self.strike_after, self.how, self.rounds, self.struck = strike_after, how, 0, []

    def run(self, task, *args):
        self.rounds += 1
        if self.rounds == self.strike_after:
            self.struck.append(self.pids[1])
            os.kill(self.struck[0], self.how)
        return super().run(task, *args)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_lost_forked_worker_is_forked_again_and_the_answer_is_undisturbed(regression_data, how):
    options = dict(workers=2, standardize=True, **GD)
    reference = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", **options)
    with StrikingEngine(2, max_restarts=1, strike_after=4, how=how) as engine:
        run = pg.train(
            pg.models.LinearRegression(), regression_data, engine=engine, round_timeout_s=1.5, **options
        )
        assert engine.restarts == 1 and engine.struck[0] not in engine.pids
    np.testing.assert_array_equal(run.params, reference.params)  # the standardisation replayed too
    assert not is_running(engine.struck[0])


def test_a_forked_run_shrinks_onto_the_workers_left_with_the_serial_answer(regression_data):
    reference = pg.train(pg.models.LinearRegression(), regression_data, engine="serial", workers=2, **GD)
    with StrikingEngine(2, strike_after=4, how=signal.SIGKILL) as engine:
        run = pg.train(pg.models.LinearRegression(), regression_data, engine=engine, workers=(1, 2), **GD)
    assert run.num_workers == 1 and len(run.changes) == 1
    np.testing.assert_allclose(run.params, reference.params, rtol=1e-12)  # one worker sums in its order


def test_a_lost_forked_worker_with_no_restart_left_is_one_error(regression_data):
    with StrikingEngine(2, strike_after=3, how=signal.SIGKILL) as engine:
        with pytest.raises(WorkerLost, match=r"worker 1 died \(killed by signal 9\)"):
            pg.train(pg.models.LinearRegression(), regression_data, engine=engine, **GD)
        assert engine.pids == []  # the other worker is stopped with it
    assert not is_running(engine.struck[0])


class Descriptors(Task):
    """What the worker's open descriptors name."""

    def __call__(self, shard):
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
                names.append(os.readlink(f"/proc/self/fd/{fd}") if int(fd) > 2 else "standard")
        return names


def test_a_forked_worker_holds_none_of_the_callers_files_sockets_or_other_workers_pipes(tmp_path):
    data = pg.make_regression(100, 2, seed=0)
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        with open(tmp_path / "log.txt", "w"), ForkedEngine(2) as engine:
            engine.start(data, plan_shards(100, 2))
            held = engine.run(Descriptors())
            ends = [(handle.commands, handle.replies) for handle in engine._workers]
            pipes = [{os.fstat(end.fileno()).st_ino for end in pair} for pair in ends]
    finally:
        listening.close()
    for worker, names in enumerate(held):
        assert not any("log.txt" in name or name.startswith("socket:") for name in names), names
        inodes = {int(name[6:-1]) for name in names if name.startswith("pipe:")}
        assert inodes == pipes[worker]  # its own two pipes, none of the other worker's


def test_a_fork_the_system_refuses_is_a_lost_worker_in_one_line(regression_data, monkeypatch):
    def refused():
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))  # out of processes

    monkeypatch.setattr(os, "fork", refused)  # a process limit cannot be reached as root
    with pytest.raises(WorkerLost, match=r"^worker 0 died \(could not fork it: Resource temporarily"):
        pg.train(pg.models.LinearRegression(), regression_data, engine="forked", **GD)


class WideProduct(Task):
    """A product of 32 outputs, which takes the module's one-thread lock."""

    def __call__(self, shard):
        if not rowwise._ONE_THREAD.acquire(timeout=5):  # held for good: fail, not hang
            return None
        rowwise._ONE_THREAD.release()
        return rowwise.row_product(shard.X, np.ones((shard.X.shape[1], 32)))[:2]


def test_a_lock_another_thread_holds_at_the_fork_is_free_in_the_worker():
    """A product running in another thread of the caller while the workers are forked
    must not leave its lock held in them for good."""
    data = pg.make_classification(100, 40, seed=0)
    held, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with rowwise._ONE_THREAD:
            held.set()
            release.wait()

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    held.wait()
    try:
        with ForkedEngine(2) as engine:
            engine.round_timeout_s = 5.0
            engine.start(data, plan_shards(100, 2))
            first, second = engine.run(WideProduct())
    finally:
        release.set()
        thread.join()
    np.testing.assert_array_equal(
        np.vstack([first, second]), rowwise.row_product(data.X[[0, 1, 50, 51]], np.ones((40, 32)))
    )


class HeapCopiedByACollection(Task):
    """The private memory (kB) a full garbage collection makes this process copy."""

    def __call__(self, shard):
        import gc

        def private_kb():
            rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
            return sum(int(line.split()[1]) for line in rollup if line.startswith("Private_"))

        before = private_kb()
        gc.collect()
        return private_kb() - before


def test_a_collection_in_a_worker_leaves_the_callers_objects_shared():
    """Forked workers share the caller's heap until they write to it: a garbage collection
    that visited the caller's objects would write to every one of them."""
    objects = [[index] for index in range(1_000_000)]  # about 90 MB of small lists
    with ForkedEngine(1) as engine:
        engine.start(pg.make_regression(100, 2, seed=0), plan_shards(100, 1))
        [copied_kb] = engine.run(HeapCopiedByACollection())
    assert copied_kb < 8_000, f"{copied_kb} kB copied"
    assert len(objects) == 1_000_000


KILLED_MID_RUN = """
import paragrad as pg
from paragrad.engines.forked import ForkedEngine


def tell_the_workers(record):
    if record["round"] == 1:
        print(*engine.pids, flush=True)


data = pg.make_classification(100_000, 20, seed=0)
with ForkedEngine(2) as engine:
    options = dict(strategy=pg.SGD(4096), epochs=10_000, tol=0, callbacks=[tell_the_workers])
    pg.train(pg.models.MLP(hidden=(256,)), data, engine=engine, **options)
"""


def test_forked_workers_running_or_stopped_end_with_a_coordinator_killed_mid_run():
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_RUN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        workers = [int(pid) for pid in process.stdout.readline().split()]
        time.sleep(1.0)  # mid-run: the rounds' regions are shared
        alive = len(workers) == 2 and all(map(is_running, workers))
        os.kill(workers[1], signal.SIGSTOP)  # a stopped worker cannot notice anything itself
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the workers have sessions of their own: not this
        process.wait()
    assert alive
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (shared_memory_of(process.pid) or any(map(is_running, workers))):
        time.sleep(0.05)
    outlived = [pid for pid in workers if is_running(pid)]
    for pid in outlived:  # not left behind by a failure
        os.kill(pid, signal.SIGKILL)
    assert not outlived, "a worker outlived its coordinator"
    assert not shared_memory_of(process.pid)
