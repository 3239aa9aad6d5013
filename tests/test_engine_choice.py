"""Where a run goes by default: this process for small work, threads of this process (or,
larger still, processes forked from it) for full-batch training of the linear models on
data in memory, the local workers for other large work, files they map and elastic runs;
an explicit engine is always obeyed."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.sparse
from conftest import relative_error

import paragrad as pg
from paragrad.training import settings
from paragrad.training.settings import (
    FORKED_WORK,
    IN_PROCESS_WORK_COLD,
    IN_PROCESS_WORK_WARM,
    THREADS_WORK,
    default_engine,
)


def choice(data, warm=False, workers=None, strategy=None, model=None, engine="auto"):
    model = model or pg.models.LogisticRegression()
    return default_engine(engine, workers, model, data, strategy or pg.GradientDescent(), warm)


def test_small_work_runs_in_this_process_and_says_why():
    data = pg.make_classification(500, 5, seed=0)
    chosen = choice(data)
    assert (chosen.name, chosen.workers) == ("serial", 1)
    assert chosen.reason == (
        f"in process (500 rows x 6 parameters = 3e+03: below the cost of starting workers, "
        f"{IN_PROCESS_WORK_COLD:.0e})"
    )
    run = pg.train(pg.models.LogisticRegression(), data)
    assert run.engine == "serial" and run.engine_choice == chosen.reason
    assert f"engine        {chosen.reason}" in run.summary()


def test_the_rule_counts_rows_times_parameters_and_a_running_engine():
    rows = int(IN_PROCESS_WORK_WARM // 11) + 1  # 10 features and an intercept: just above warm
    data = pg.Dataset(np.zeros((rows, 10)), np.arange(rows) % 2)
    minibatches = pg.SGD(batch_size=64)
    assert choice(data, warm=False, strategy=minibatches).name == "serial"
    assert choice(data, warm=True, strategy=minibatches).name == "local"
    softmax = pg.Dataset(np.zeros((rows // 3, 10)), np.arange(rows // 3) % 4)
    assert (
        choice(softmax, warm=True, model=pg.models.SoftmaxRegression(), strategy=minibatches).name == "local"
    )


def test_full_batch_linear_models_on_data_in_memory_go_to_threads_with_the_serial_answer():
    rows = int(THREADS_WORK // 6) + 1  # 5 features and an intercept: just above the threshold
    data = pg.make_classification(rows, 5, seed=4)
    below = pg.Dataset(data.X[: rows // 2], data.y[: rows // 2])
    assert choice(below).name == "serial"
    chosen = choice(data)
    assert (chosen.name, chosen.workers) == ("threads", None)
    assert chosen.reason.startswith(f"threads of this process ({rows} rows x 6 parameters")
    assert choice(data, warm=True).name == "local"  # running workers: faster rounds, no start
    assert choice(data, strategy=pg.GradientDescent(compress="int8")).name == "serial"  # not exact sums
    run = pg.train(pg.models.LogisticRegression(), data)
    serial = pg.train(pg.models.LogisticRegression(), data, engine="serial", workers=run.num_workers)
    assert run.engine == "threads" and run.num_workers == pg.engines.default_workers()
    np.testing.assert_array_equal(run.params, serial.params)


def test_larger_full_batch_work_goes_to_forked_workers_on_linux_with_the_serial_answer(monkeypatch):
    # The threads earlier tests left in this process aside (the next test has a program of one)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    rows = int(FORKED_WORK // 200) + 1  # 199 features and an intercept: just above the threshold
    data = pg.Dataset(np.zeros((rows, 199)), np.arange(rows) % 2)
    chosen = choice(data)
    assert (chosen.name, chosen.workers) == ("forked", None)
    assert chosen.reason.startswith(f"worker processes forked from this one ({rows} rows x 200 parameters")
    assert choice(pg.Dataset(data.X[: rows // 2], data.y[: rows // 2])).name == "threads"
    assert choice(data, warm=True).name == "local"
    assert choice(data, workers=1).name == "threads"  # whose one worker computes in this thread
    sparse = pg.Dataset(scipy.sparse.csr_matrix(data.X), data.y)
    assert choice(sparse).name == "threads"  # a CSR matrix's rows are copies wherever they go
    with monkeypatch.context() as patched:
        patched.setattr(sys, "platform", "darwin")  # whose libraries' threads are not fork-safe
        assert choice(data).name == "threads"
    # A whole run down that path: the threshold lowered onto small data
    monkeypatch.setattr(settings, "FORKED_WORK", THREADS_WORK)
    small = pg.make_classification(int(THREADS_WORK // 6) + 1, 5, seed=4)
    run = pg.train(pg.models.LogisticRegression(), small)
    serial = pg.train(pg.models.LogisticRegression(), small, engine="serial", workers=run.num_workers)
    assert run.engine == "forked" and run.num_workers == pg.engines.default_workers()
    np.testing.assert_array_equal(run.params, serial.params)


ONE_THREAD_OR_TWO = """
import threading
import numpy as np
import paragrad as pg
from paragrad.training.settings import FORKED_WORK, default_engine

rows = int(FORKED_WORK // 200) + 1
data = pg.Dataset(np.zeros((rows, 199)), np.arange(rows) % 2)

def choice():
    model, strategy = pg.models.LogisticRegression(), pg.GradientDescent()
    return default_engine("auto", None, model, data, strategy, False).name

alone = choice()
running, done = threading.Event(), threading.Event()
other = threading.Thread(target=lambda: (running.set(), done.wait()))
other.start()
running.wait()
beside_another = choice()
done.set()
other.join()
print(alone, beside_another, choice())
"""


def test_a_program_forks_while_it_runs_one_thread_only():
    """OpenBLAS's fork handler waits for its threads: a fork while another thread of the
    program runs a product can wait for good, so a program of several threads gets threads."""
    program = [sys.executable, "-c", ONE_THREAD_OR_TWO]
    result = subprocess.run(program, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["forked", "threads", "forked"]


def test_a_regression_counts_one_output_whatever_its_target_holds():
    data = pg.make_regression(600, 5, seed=3)  # 600 distinct values, one output
    assert choice(data, model=pg.models.LinearRegression()).reason.startswith(
        "in process (600 rows x 6 parameters"
    )


def test_files_elastic_runs_and_explicit_engines_go_where_they_are_sent(tmp_path):
    data = pg.make_classification(300, 4, seed=1)
    np.save(tmp_path / "X.npy", data.X)
    np.save(tmp_path / "y.npy", data.y)
    mapped = pg.load(tmp_path / "X.npy", target_file=tmp_path / "y.npy")
    assert choice(mapped).name == "local" and "where it lies" in choice(mapped).reason
    assert choice(data, workers=(1, 2)).name == "local"
    for engine in ("serial", "threads", "forked", "local", "ray"):
        assert (choice(data, engine=engine).name, choice(data, engine=engine).reason) == (engine, "")


def test_local_sgd_keeps_the_worker_count_its_answer_depends_on():
    data = pg.make_classification(400, 4, seed=2)
    strategy = pg.LocalSGD(local_steps=4, batch_size=16)
    chosen = choice(data, strategy=strategy)
    assert chosen.name == "serial" and chosen.workers == pg.engines.default_workers()
    auto = pg.train(pg.models.LogisticRegression(), data, strategy=strategy, epochs=2)
    local = pg.train(pg.models.LogisticRegression(), data, strategy=strategy, epochs=2, engine="local")
    assert relative_error(auto.params, local.params) <= 1e-12


@pytest.mark.parametrize("workers", [None, 2])
def test_in_process_runs_give_the_local_engines_answer(workers):
    data = pg.make_regression(600, 5, noise=0.3, seed=3)
    auto = pg.train(pg.models.LinearRegression(), data, workers=workers)
    local = pg.train(pg.models.LinearRegression(), data, workers=workers, engine="local")
    assert auto.engine == "serial" and local.engine == "local"
    assert relative_error(auto.params, local.params) <= 1e-12


def test_a_torch_module_trains_in_this_process_where_torch_uses_every_core():
    torch = pytest.importorskip("torch")
    data = pg.make_classification(300_000, 10, seed=5)  # far above the in-process limit
    model = pg.models.Torch(torch.nn.Linear(10, 2))
    chosen = choice(data, model=model, strategy=pg.SGD(batch_size=256))
    assert (chosen.name, chosen.workers) == ("serial", 1)
    assert chosen.reason.startswith("in process (a Torch module: torch runs each batch on every core")
    local_sgd = choice(data, model=model, strategy=pg.LocalSGD(local_steps=4, batch_size=16))
    assert local_sgd.workers == pg.engines.default_workers()  # its answer depends on the count
    assert choice(data, model=model, workers=(1, 2)).name == "local"  # elastic runs need workers
