"""The BLAS thread limits: threadpoolctl's, with the libraries looked for once."""

from __future__ import annotations

import sys

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import paragrad as pg
from paragrad.core import blas
from paragrad.engines.threads import ThreadEngine


def test_blas_limits_find_the_libraries_again_only_after_an_import(monkeypatch):
    # Prepare
    monkeypatch.setattr(blas, "_controller", None)
    # Execute
    with blas.blas_threads(1):
        inside = {info["num_threads"] for info in threadpool_info()}
    first = blas._controller
    blas.blas_threads(1).restore_original_limits()
    again = blas._controller
    monkeypatch.setitem(sys.modules, "paragrad_test_new_module", object())
    blas.blas_threads(1).restore_original_limits()
    # Assert: the limit held; the libraries looked up once until a module was imported
    assert inside == {1}
    assert again is first and blas._controller is not first


def blas_thread_counts() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


@pytest.mark.filterwarnings("ignore:2 workers x 2 thread:paragrad.errors.PerformanceWarning")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_threads_engine_fit_limits_blas_while_workers_compute_and_puts_it_back(workers, threads):
    """The limit is the process's: a fit on the threads engine left BLAS on one thread
    for the rest of the program (the engine's limit, put back after the trainer's, put back
    the trainer's one thread), slowing the caller's own products and scikit-learn's after it.
    Each worker computes on ``threads_per_worker`` threads, one worker too."""
    data = pg.make_classification(4000, 8, seed=1)
    seen: list[set[int]] = []

    class Watched(pg.models.LogisticRegression):
        def loss_grad_hess(self, *args, **kwargs):
            seen.append(blas_thread_counts())
            return super().loss_grad_hess(*args, **kwargs)

    def fit(**engine):
        pg.train(Watched(), data, optimizer=pg.optim.Newton(), progress=False, **engine)

    with threadpool_limits(3, user_api="blas"):
        fit(engine="threads", workers=workers, threads_per_worker=threads)
        after, by_name, seen[:] = blas_thread_counts(), list(seen), []
        with ThreadEngine(workers, threads_per_worker=threads) as engine:
            fit(engine=engine)
            between_calls = blas_thread_counts()
            fit(engine=engine)
        at_the_end = blas_thread_counts()
    assert after == between_calls == at_the_end == {3}
    assert by_name and seen and all(counts == {threads} for counts in by_name + seen)


def test_a_threads_engine_refuses_workers_without_threads():
    with pytest.raises(pg.errors.ConfigError, match="threads_per_worker must be at least 1, got 0"):
        ThreadEngine(2, threads_per_worker=0)
