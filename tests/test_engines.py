"""Engines: the local engine's real worker processes give the serial engine's answers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import is_running, relative_error, shared_memory_of

import paragrad as pg
from paragrad.core.shards import plan_shards
from paragrad.engines import Task, make_engine
from paragrad.engines.local import LocalEngine

MODELS = {
    "linear": lambda: pg.models.LinearRegression(l2=0.01),
    "logistic": lambda: pg.models.LogisticRegression(l2=0.01),
    "softmax": lambda: pg.models.SoftmaxRegression(l2=0.01),
    "mlp": lambda: pg.models.MLP(hidden=(8,), activation="tanh"),
}
STRATEGIES = {
    "gd": pg.GradientDescent,
    "sgd": lambda: pg.SGD(batch_size=16),
    "local-sgd": lambda: pg.LocalSGD(local_steps=3, batch_size=8),
}


def data_for(kind: str) -> pg.Dataset:
    if kind == "linear":
        return pg.make_regression(151, 5, seed=0)
    return pg.make_classification(151, 5, num_classes=2 if kind == "logistic" else 3, seed=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", MODELS)
def test_local_engine_gives_the_serial_parameters(kind, strategy, local_engine):
    def fit(engine):
        return pg.train(
            MODELS[kind](),
            data_for(kind),
            strategy=STRATEGIES[strategy](),
            engine=engine,
            workers=2,
            epochs=3,
            standardize=True,
            seed=3,
            tol=0,
        )

    local, serial = fit(local_engine), fit("serial")
    assert local.engine == "local" and local.num_workers == 2
    assert relative_error(local.params, serial.params) <= 1e-12


@pytest.mark.parametrize("engine", ["threads", "forked"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", MODELS)
def test_engines_on_the_callers_arrays_give_the_serial_parameters_bit_for_bit(kind, strategy, engine):
    """Threads, and processes forked from this one, read views of the caller's rows and
    the results are combined in worker order: the same sums, so the same parameters."""

    def fit(engine):
        options = dict(strategy=STRATEGIES[strategy](), workers=2, epochs=3, standardize=True, seed=3, tol=0)
        return pg.train(MODELS[kind](), data_for(kind), engine=engine, **options)

    parallel, serial = fit(engine), fit("serial")
    assert parallel.engine == engine and parallel.num_workers == 2
    np.testing.assert_array_equal(parallel.params, serial.params)


def test_the_threads_engine_limits_blas_while_it_runs_and_restores_it():
    from threadpoolctl import threadpool_info

    from paragrad.engines.threads import ThreadEngine

    def blas_threads():
        return sorted(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

    before = blas_threads()
    data = pg.make_classification(300, 4, seed=0)
    with ThreadEngine(workers=2) as engine:
        engine.start(data, plan_shards(300, 2))
        inside = engine.run(lambda shard: blas_threads())
        assert engine.run(lambda shard: shard.X.shape[0]) == [150, 150]
    assert inside == [[1] * len(before)] * 2 and blas_threads() == before


def test_an_exception_on_a_thread_reaches_the_caller_and_the_engine_goes_on():
    from paragrad.engines.threads import ThreadEngine

    def fail_on_worker_1(shard):
        if shard.worker == 1:
            raise ValueError("broken on purpose")
        return shard.worker

    with ThreadEngine(workers=2) as engine:
        engine.start(pg.make_regression(100, 3, seed=0), plan_shards(100, 2))
        with pytest.raises(ValueError, match="broken on purpose"):
            engine.run(fail_on_worker_1)
        assert engine.run(lambda shard: shard.worker) == [0, 1]


def test_local_predict_returns_the_serial_predictions_in_input_order(local_engine):
    data = pg.make_classification(1001, 4, num_classes=3, seed=1)
    run = pg.train(pg.models.SoftmaxRegression(), data, engine="serial", workers=2, epochs=5, tol=0)
    expected = run.model.predict_proba(data.X)
    np.testing.assert_array_equal(pg.predict(run.model, data.X, engine=local_engine, proba=True), expected)
    np.testing.assert_array_equal(
        pg.predict(run.model, data.X, engine="serial", workers=3), np.argmax(expected, axis=1)
    )


@pytest.mark.parametrize("workers", [None, 3, 7])
def test_predicting_an_array_in_memory_gives_the_models_own_predictions_in_order(workers):
    # Rows in this process's memory are predicted here, a part per thread: no copy to workers.
    data = pg.make_classification(1001, 4, num_classes=3, seed=1)
    for model in (
        pg.train(pg.models.SoftmaxRegression(), data, engine="serial", workers=2, epochs=5, tol=0).model,
        pg.train(pg.models.MLP(hidden=(8,)), data, engine="serial", workers=2, epochs=2).model,
    ):
        X = data.X[:5] if workers == 7 else data.X  # fewer rows than threads
        np.testing.assert_array_equal(pg.predict(model, X, workers=workers), model.predict(X))
        np.testing.assert_array_equal(
            pg.predict(model, X, workers=workers, proba=True), model.predict_proba(X)
        )
    X = data.X.copy()
    X[600, 2] = np.nan
    with pytest.raises(pg.DataError, match="row 601 has NaN or infinite features"):
        pg.predict(model, X, workers=workers)
    with pytest.raises(pg.ConfigError, match="workers must be a positive integer"):
        pg.predict(model, X, workers=0)


def test_results_larger_than_the_slot_come_back_whole_through_the_workers_regions():
    pids = []
    with started_engine() as engine:
        for size in (3 << 18, 1 << 20, 1 << 16, 1 << 21):  # 6 MB, 8 MB, 512 kB, 16 MB
            results = engine.run(Large(), size)
            for worker, (values, index) in enumerate(results):
                assert index == worker
                np.testing.assert_array_equal(values, np.arange(size, dtype=np.float64) + worker)
        pids = engine.pids
    assert not [pid for pid in pids if is_running(pid)]
    assert not any(shared_memory_of(pid) for pid in pids)


def test_a_fresh_local_engine_trains_and_cleans_up():
    before, children_before = _our_shared_files(), set(_children())
    run = pg.train(
        pg.models.LinearRegression(),
        pg.make_regression(200, 3, seed=0),
        optimizer=pg.optim.LBFGS(),  # rounds to count (the default, QR, solves in one)
        engine="local",
        workers=2,
        epochs=3,
        tol=0,
    )
    assert run.engine == "local" and len(run.history) == 3
    assert _our_shared_files() <= before
    assert not [child for child in set(_children()) - children_before if is_running(child)]


class Boom(Task):
    """A task that fails on one worker."""

    def __call__(self, shard):
        if shard.worker == 1:
            raise ValueError("boom")
        return shard.num_rows


class Large(Task):
    """A result far larger than the result slot: it comes back through the worker's own region."""

    def __call__(self, shard, size):
        return np.arange(size, dtype=np.float64) + shard.worker, shard.worker


class Die(Task):
    """A task that kills its own worker process."""

    def __call__(self, shard):
        if shard.worker == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return shard.num_rows


def _children() -> list[int]:
    """Child processes of this test process, but the resource tracker (a lasting helper)."""
    from multiprocessing import resource_tracker

    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return [
        int(pid) for pid in path.read_text().split() if int(pid) != resource_tracker._resource_tracker._pid
    ]


def _our_shared_files(pid: int | None = None) -> set[str]:
    """Shared memory created by this process (or by ``pid``) that is still held."""
    return shared_memory_of(pid)


def started_engine(rows: int = 50) -> LocalEngine:
    engine = make_engine("local", 2)
    engine.start(pg.make_regression(rows, 2, seed=0), plan_shards(rows, 2))
    return engine


def test_an_exception_in_a_worker_names_the_worker_and_keeps_the_engine_usable():
    with started_engine() as engine:
        with pytest.raises(pg.errors.WorkerError, match="worker 1 raised ValueError: boom"):
            engine.run(Boom())
        assert engine.run(lambda_free_count) == [25, 25]


def lambda_free_count(shard):
    return shard.num_rows


def test_a_killed_worker_is_reported_and_everything_is_released():
    before_shm = _our_shared_files()
    engine = started_engine()
    pids = engine.pids
    assert _our_shared_files() - before_shm
    with pytest.raises(pg.errors.WorkerLost, match=r"worker 1 died \(killed by signal 9\)"):
        engine.run(Die())
    engine.close()
    assert _our_shared_files() <= before_shm
    assert not any(is_running(pid) for pid in pids)


def test_unknown_engine_lists_the_choices():
    with pytest.raises(
        pg.ConfigError, match="unknown engine 'gpu'; choose one of serial, threads, forked, local, ray"
    ):
        make_engine("gpu")


# -- failures during training ---------------------------------------------------------------


class CountingEngine(LocalEngine):
    """A local engine that counts its rounds, so a test can strike mid-training."""

    rounds = 0

    def run(self, task, *args):
        self.rounds += 1
        return super().run(task, *args)


def kill_worker_after(engine: CountingEngine, rounds: int, worker: int = 1) -> threading.Thread:
    def strike():
        while engine.rounds < rounds:
            time.sleep(0.001)
        os.kill(engine.pids[worker], signal.SIGKILL)

    thread = threading.Thread(target=strike, daemon=True)
    thread.start()
    return thread


def long_training(engine, **options):
    return pg.train(
        pg.models.LogisticRegression(l2=0.01),
        pg.make_classification(2000, 10, seed=4),
        strategy=pg.SGD(batch_size=16),
        engine=engine,
        workers=2,
        epochs=3,
        standardize=True,
        tol=0,
        **options,
    )


def test_a_restarted_worker_replays_its_round_and_the_result_is_undisturbed():
    with CountingEngine(2, max_restarts=1) as engine:
        thread = kill_worker_after(engine, rounds=60)
        disturbed = long_training(engine)
        thread.join()
        assert engine.restarts == 1
    assert len(disturbed.history) == 375
    assert relative_error(disturbed.params, long_training("serial").params) <= 1e-12


def test_without_restarts_a_dead_worker_stops_training_with_worker_and_round():
    before, children_before = _our_shared_files(), set(_children())
    with CountingEngine(2) as engine:
        thread = kill_worker_after(engine, rounds=30)
        with pytest.raises(pg.errors.WorkerLost, match=r"round \d+: worker 1 died \(killed by signal 9\)"):
            long_training(engine)
        thread.join()
    assert _our_shared_files() <= before
    assert not [child for child in set(_children()) - children_before if is_running(child)]


class FailingSGD(pg.SGD):
    """SGD whose worker 1 raises in round 3."""

    def worker_step(self, shard, model, optimizer, params, round_index, plan):
        if round_index == 3 and shard.worker == 1:
            raise ValueError("injected failure")
        return super().worker_step(shard, model, optimizer, params, round_index, plan)


def test_an_exception_in_training_names_worker_and_round_and_releases_everything():
    before, children_before = _our_shared_files(), set(_children())
    with pytest.raises(pg.errors.WorkerError, match="round 3: worker 1 raised ValueError: injected failure"):
        pg.train(
            pg.models.LinearRegression(),
            pg.make_regression(100, 2),
            strategy=FailingSGD(10),
            workers=2,
            engine="local",
        )
    assert _our_shared_files() <= before
    assert not [child for child in set(_children()) - children_before if is_running(child)]


INTERRUPTED_SCRIPT = """
import paragrad as pg
data = pg.make_classification(4000, 10, seed=0)
pg.train(
    pg.models.LogisticRegression(), data, strategy=pg.SGD(4), workers=2, engine="local", epochs=10_000, tol=0
)
"""


def test_ctrl_c_in_a_script_without_main_guard_releases_workers_and_shared_memory(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(INTERRUPTED_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = _worker_processes(process.pid)
        time.sleep(0.05)
    assert len(workers) == 2
    time.sleep(1.0)  # let training run
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    assert not any(is_running(pid) for pid in workers)
    assert not _our_shared_files(process.pid)


def _worker_processes(parent: int) -> list[int]:
    """The local engine's worker processes among a process's children."""
    pids = []
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            if b"paragrad.engines.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
    return pids


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def network_inodes() -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/net/{table}")
        if path.exists():
            inodes |= {line.split()[9] for line in path.read_text().splitlines()[1:]}
    return inodes


def test_the_local_engine_opens_no_network_port():
    coordinator_before = socket_inodes(os.getpid())
    with CountingEngine(2) as engine:
        thread = threading.Thread(target=long_training, args=(engine,))
        thread.start()
        while engine.rounds < 20:
            time.sleep(0.001)
        worker_sockets = [socket_inodes(pid) for pid in engine.pids]
        coordinator_new = socket_inodes(os.getpid()) - coordinator_before
        thread.join()
    assert worker_sockets == [set(), set()]
    assert not coordinator_new & network_inodes()


def test_features_memory_mapped_from_npy_are_mapped_by_the_workers_not_copied(tmp_path, local_engine):
    data = pg.make_regression(500, 4, seed=0)
    np.save(tmp_path / "X.npy", data.X)
    mapped = pg.Dataset(pg.load(tmp_path / "X.npy").X, data.y)
    assert mapped.storage is not None
    common = dict(strategy=pg.SGD(batch_size=32), workers=2, epochs=2, tol=0)
    run = pg.train(pg.models.LinearRegression(), mapped, engine=local_engine, **common)
    assert {spec.x_path for spec in local_engine._specs} == {str(tmp_path / "X.npy")}
    assert local_engine._data.size == data.y.nbytes
    reference = pg.train(pg.models.LinearRegression(), data, engine="serial", **common)
    np.testing.assert_array_equal(run.params, reference.params)


class BlasThreads(Task):
    """How many threads the worker's BLAS runs with."""

    def __call__(self, shard):
        from threadpoolctl import threadpool_info

        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_workers_run_one_blas_thread_unless_told_otherwise(local_engine):
    local_engine.start(pg.make_regression(10, 2), plan_shards(10, 2))
    assert local_engine.run(BlasThreads()) == [{1}, {1}]
    with LocalEngine(1, threads_per_worker=2) as engine:
        engine.start(pg.make_regression(10, 2), plan_shards(10, 1))
        assert engine.run(BlasThreads()) == [{2}]


def test_one_worker_per_core_by_default():
    assert LocalEngine().num_workers == len(os.sched_getaffinity(0))
    with pytest.raises(pg.ConfigError, match="threads_per_worker must be at least 1"):
        LocalEngine(threads_per_worker=0)


# -- shared-memory transport and engine state after failures --------------------------------


class Echo(Task):
    """Returns its argument plus the worker index (large arrays go through shared memory)."""

    def __call__(self, shard, vector):
        return vector + shard.worker


def test_large_arguments_and_results_travel_through_shared_memory_intact(local_engine):
    local_engine.start(pg.make_regression(10, 2), plan_shards(10, 2))
    first = np.random.default_rng(0).standard_normal(100_000)
    results = local_engine.run(Echo(), first)
    later = local_engine.run(Echo(), np.zeros(100_000))
    np.testing.assert_array_equal(results[0], first)  # copies: not changed by the later round
    np.testing.assert_array_equal(results[1], first + 1)
    np.testing.assert_array_equal(later[1], np.ones(100_000))
    assert local_engine.last_bytes_sent >= 2 * first.nbytes


def test_standardisation_of_many_features_survives_later_rounds():
    # One worker: its moments are the run's standardisation, and large enough (5000
    # features) to travel through shared memory, which later rounds overwrite.
    data = pg.make_regression(64, 5000, seed=0)
    X = data.X * 3.0 + 5.0
    common = dict(workers=1, epochs=3, standardize=True, tol=0)
    with LocalEngine(1) as engine:
        local = pg.train(pg.models.LinearRegression(), pg.Dataset(X, data.y), engine=engine, **common)
    serial = pg.train(pg.models.LinearRegression(), pg.Dataset(X, data.y), engine="serial", **common)
    np.testing.assert_array_equal(local.model.standardizer_.mean, serial.model.standardizer_.mean)
    np.testing.assert_array_equal(local.model.predict(X), serial.model.predict(X))


class AddOneOnce(Task):
    """Changes the shard; worker 1 dies the first time, before replying."""

    mutates_shard = True

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, shard):
        shard.X = shard.X + 1.0
        if shard.worker == 1 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


def shard_sum(shard):
    return float(shard.X.sum())


def test_a_worker_lost_during_a_shard_change_gets_it_exactly_once(tmp_path):
    data = pg.make_regression(40, 3, seed=0)
    with LocalEngine(2, max_restarts=1) as engine:
        engine.start(data, plan_shards(40, 2))
        engine.run(AddOneOnce(str(tmp_path / "died")))
        assert engine.restarts == 1
        sums = engine.run(shard_sum)
    expected = [float((data.X[rows] + 1.0).sum()) for rows in (slice(0, 20), slice(20, 40))]
    np.testing.assert_allclose(sums, expected, rtol=1e-12)


class Sleep(Task):
    def __call__(self, shard):
        time.sleep(5)


def test_an_interrupted_round_stops_the_workers_and_the_engine_starts_afresh():
    data = pg.make_regression(40, 3, seed=0)
    with LocalEngine(2) as engine:
        engine.start(data, plan_shards(40, 2))
        pids = engine.pids
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                engine.run(Sleep())
        finally:
            signal.signal(signal.SIGALRM, previous)
        assert not any(is_running(pid) for pid in pids)
        with pytest.raises(pg.ConfigError, match="call start"):
            engine.run(shard_sum)
        run = pg.train(
            pg.models.LinearRegression(), data, optimizer=pg.optim.LBFGS(), engine=engine, epochs=2, tol=0
        )
        assert len(run.history) == 2


def test_after_a_lost_worker_the_engine_can_start_again():
    data = pg.make_regression(40, 3, seed=0)
    with CountingEngine(2) as engine:
        thread = kill_worker_after(engine, rounds=5)
        with pytest.raises(pg.errors.WorkerLost):
            long_training(engine)
        thread.join()
        run = pg.train(
            pg.models.LinearRegression(), data, optimizer=pg.optim.LBFGS(), engine=engine, epochs=2, tol=0
        )
        assert len(run.history) == 2


def test_ctrl_c_while_workers_start_leaves_no_process_behind():
    data = pg.make_regression(40, 3, seed=0)
    for delay in (0.01, 0.05, 0.15):
        children_before = set(_children())
        engine = LocalEngine(4)
        signal.setitimer(signal.ITIMER_REAL, delay)
        previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
        try:
            engine.start(data, plan_shards(40, 4))
        except KeyboardInterrupt:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        engine.close()
        deadline = time.monotonic() + 5  # they exit at once; a loaded machine may take a moment
        while time.monotonic() < deadline and _started_since(children_before):
            time.sleep(0.05)
        assert not _started_since(children_before)


def _started_since(children_before: set[int]) -> list[int]:
    return [child for child in set(_children()) - children_before if is_running(child)]


class RaiseDataError(Task):
    def __call__(self, shard):
        raise pg.DataError("bad rows")


def test_a_paragrad_error_in_a_worker_names_the_worker(local_engine):
    local_engine.start(pg.make_regression(10, 2), plan_shards(10, 2))
    with pytest.raises(pg.DataError, match="worker 0: bad rows"):
        local_engine.run(RaiseDataError())


MAIN_SCRIPT = """
import paragrad as pg

class MySGD(pg.SGD):
    pass

pg.train(pg.models.LinearRegression(), pg.make_regression(50, 2), strategy=MySGD(8), engine="local")
"""


def test_a_class_from_a_scripts_main_gets_a_clear_error(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "define it in a module" in result.stderr


def test_where_workers_cannot_open_anonymous_memory_regions_are_files(monkeypatch):
    import paragrad.core.shm

    monkeypatch.setattr(paragrad.core.shm, "anonymous_memory_shared", lambda: False)
    data = pg.make_classification(300, 4, seed=1)
    with LocalEngine(2) as engine:
        engine.start(data, plan_shards(300, 2))
        assert any(name.startswith("file:") for name in _our_shared_files())
        on_files = pg.train(pg.models.LogisticRegression(), data, engine=engine)
    assert (
        relative_error(
            on_files.params, pg.train(pg.models.LogisticRegression(), data, engine="serial").params
        )
        <= 1e-12
    )
    assert not [name for name in _our_shared_files() if name.startswith("file:")]
