"""Newton started on a sample of the rows: rounds on the sample alone, then all the rows.

The rounds on the sample only choose where the passes over all the rows start; those
passes, whose gradient is exact, decide the optimum, which is Newton's. What goes wrong
on the sample (a singular Hessian, separable classes, a stalled search) hands over to all
the rows, and float32 sums too coarse for the data go on in float64 with the same sample.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from newton_data import classification

import paragrad as pg
from paragrad.models import linear_layout
from paragrad.models.curvature import RowSample
from paragrad.optim.least_squares import RankDeficient
from paragrad.optim.line_search import LineSearchStalled
from paragrad.training.hessian_schedule import MAX_SAMPLE_ROUNDS

STARTED = pg.optim.Newton(hessian_sample=0.2, start_sample=0.05)  # 64-row blocks: 1 in 5, then 1 in 20


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 64 rows, so that tens of thousands of rows make hundreds of them."""
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)


def fit(X: np.ndarray, y: np.ndarray, optimizer: pg.optim.Optimizer, classes: int = 2, **kw) -> pg.Run:
    model = pg.models.LogisticRegression() if classes == 2 else pg.models.SoftmaxRegression()
    return pg.train(model, pg.Dataset(X, y), optimizer=optimizer, **{"engine": "serial", "tol": 1e-10, **kw})


def start_rows(rows: int, every: int = 20) -> np.ndarray:
    """The rows of the start's sample: every ``every``-th block of 64 of all the rows."""
    return np.concatenate(
        [np.arange(run.start, run.stop) for run in RowSample(every, 0, rows).runs(0, rows, 64)]
    )


@pytest.mark.parametrize("classes", [2, 3])
def test_a_start_on_a_sample_reaches_newtons_optimum_with_fewer_rows_read(classes):
    # Prepare
    X, y = classification(40_000, 6, classes)
    exact = fit(X, y, pg.optim.Newton(), classes)
    sampled = fit(X, y, pg.optim.Newton(hessian_sample=0.2), classes)
    # Execute
    run = fit(X, y, STARTED, classes)
    # Assert: the first rounds read the start's rows alone (the first one twice: its step
    # is checked), then all of them; Newton's optimum, having read fewer rows in all
    starts = [r["samples"] for r in run.history if 0 < r["samples"] < len(X)]
    assert starts == [2 * len(start_rows(40_000))] + [len(start_rows(40_000))] * (len(starts) - 1)
    assert 2 <= len(starts) <= MAX_SAMPLE_ROUNDS and run.converged
    assert f"(its first {len(starts)} rounds on 5.0% of the rows alone)" in run.optimizer
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-9, atol=1e-11)
    assert run.model.loss(X, y) <= exact.model.loss(X, y) + 1e-14
    read = sum(r["samples"] for r in run.history)
    assert read < sum(r["samples"] for r in sampled.history)


def test_the_start_takes_the_same_steps_on_any_number_of_workers():
    # Prepare: shards of 40,000 / 7 rows do not start on a block's first row
    X, y = classification(40_000, 6)
    # Execute
    runs = [fit(X, y, STARTED, workers=n, tol=1e-6) for n in (1, 7)]
    # Assert: the same rows in each round's sums, so the same steps to round-off
    assert [r["samples"] for r in runs[0].history] == [r["samples"] for r in runs[1].history]
    losses = [[r["loss"] for r in run.history] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-13)
    np.testing.assert_allclose(runs[1].params, runs[0].params, rtol=1e-11)


@pytest.mark.parametrize("engine", ["forked", "threads"])
def test_the_start_gives_the_serial_engines_bits_on_workers_in_parallel(engine):
    # Prepare
    X, y = classification(40_000, 6)
    serial = fit(X, y, STARTED, workers=2, tol=1e-6)
    # Execute
    run = fit(X, y, STARTED, workers=2, tol=1e-6, engine=engine)
    # Assert
    assert [r["loss"] for r in run.history] == [r["loss"] for r in serial.history]
    np.testing.assert_array_equal(run.params, serial.params)


@pytest.mark.parametrize("stop", [1, 2, 4])
def test_a_run_resumed_during_or_after_its_start_takes_the_same_steps(tmp_path, stop):
    # Prepare: the whole run, and one stopped after round 1 or 2 (on the sample) or 4
    X, y = classification(40_000, 6)
    whole = fit(X, y, STARTED, tol=1e-6)
    assert "its first 3 rounds" in whole.optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)
        fit(X, y, STARTED, tol=1e-6, checkpoint_dir=tmp_path, max_rounds=stop)
    # Execute
    resumed = fit(X, y, STARTED, tol=1e-6, checkpoint_dir=tmp_path, resume=True)
    # Assert: the same steps, and the same summary
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    np.testing.assert_array_equal(resumed.params, whole.params)
    assert resumed.optimizer == whole.optimizer


def test_a_start_blind_to_a_feature_goes_on_over_all_the_rows():
    # Prepare: a feature non-zero on 300 rows that the start's sample does not hold but
    # the Hessian's does (block 5 of 64 rows: in one block in 5, not in one in 20)
    X, y = classification(40_000, 6)
    rare = np.zeros(len(X))
    rare[5 * 64 : 5 * 64 + 60] = 1.0
    rare[25 * 64 : 25 * 64 + 60] = 1.0
    X = np.column_stack([X, rare])
    exact = fit(X, y, pg.optim.Newton())
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficient)  # the features are independent
        run = fit(X, y, STARTED)
    # Assert: all the rows from the first round, and Newton's optimum
    assert run.history[0]["samples"] == 2 * len(X)
    assert run.optimizer == "newton (the Hessian over 20.0% of the rows)"
    assert run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)


def test_a_separable_sample_hands_over_to_all_the_rows():
    # Prepare: the start's rows take the class of their first feature's sign, the others
    # overlap: the sample alone has no finite optimum
    X, y = classification(40_000, 6)
    rows = start_rows(len(X))
    y[rows] = (X[rows, 0] > 0) * 1.0
    exact = fit(X, y, pg.optim.Newton())
    unstarted = fit(X, y, pg.optim.Newton(hessian_sample=0.2))
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.ConvergenceWarning)
        run = fit(X, y, STARTED)
    # Assert: MAX_SAMPLE_ROUNDS on the sample, then all the rows from the run's first
    # point: the steps of a run that never started on the sample, and Newton's optimum
    on_sample = [r for r in run.history if 0 < r["samples"] < len(X)]
    assert len(on_sample) == MAX_SAMPLE_ROUNDS <= 20 and run.converged
    assert "which found no optimum: all the rows from the start" in run.optimizer
    after = [r["loss"] for r in run.history[MAX_SAMPLE_ROUNDS:]]
    assert after == [r["loss"] for r in unstarted.history]
    np.testing.assert_array_equal(run.params, unstarted.params)
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)


def test_float32_sums_too_coarse_go_on_in_float64_with_the_same_sample():
    # Prepare: two features that differ by 1e-4 of their scale, whose Hessian float32
    # cannot tell from a singular one (float64 can)
    X, y = classification(40_000, 6)
    rng = np.random.default_rng(3)
    X = np.column_stack([X, X[:, 2] + 1e-4 * rng.standard_normal(len(X))])
    exact = fit(X, y, pg.optim.Newton())
    optimizer = pg.optim.Newton(hessian_sample=0.2, hessian_float32=True)
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficient)
        run = fit(X, y, optimizer)
    # Assert: the sample's Hessian in float64 from the first round, not the exact one
    assert run.optimizer == (
        "newton (the Hessian over 20.0% of the rows) "
        "(in float64: the float32 sums were singular or not finite)"
    )
    assert run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-7, atol=1e-9)


def test_start_sample_must_be_a_share_of_the_rows_among_the_hessians():
    for bad in (0, 1, 1.5):
        with pytest.raises(pg.ConfigError, match=rf"start_sample must be in \(0, 1\) or None, got {bad}"):
            pg.optim.Newton(hessian_sample=0.5, start_sample=bad)
    with pytest.raises(pg.ConfigError, match=r"start_sample \(0.5\) must be at most hessian_sample \(0.1\)"):
        pg.optim.Newton(hessian_sample=0.1, start_sample=0.5)


def test_workers_that_hold_no_sampled_rows_add_nothing_to_the_start():
    # Prepare: 40 shards of 1000 rows, and a sampled block of 64 rows in every 1280
    X, y = classification(40_000, 6)
    one = fit(X, y, STARTED, tol=1e-6)
    # Execute
    many = fit(X, y, STARTED, workers=40, tol=1e-6)
    # Assert: the same rows in every round's sums, so the same steps to round-off
    assert [r["samples"] for r in many.history] == [r["samples"] for r in one.history]
    np.testing.assert_allclose(many.params, one.params, rtol=1e-11)


def test_dependent_features_seen_on_the_start_go_on_over_all_the_rows():
    # Prepare: a repeated column, which makes the start's Hessian singular, and all the rows'
    X, y = classification(40_000, 6)
    X = np.column_stack([X, X[:, 1]])
    with pytest.warns(RankDeficient):
        exact = fit(X, y, pg.optim.Newton())
    # Execute
    with pytest.warns(RankDeficient):
        run = fit(X, y, pg.optim.Newton(start_sample=0.05))
    # Assert: no round on the sample after the first over all the rows; Newton's answer
    assert all(r["samples"] >= len(X) or r["samples"] == 0 for r in run.history)
    assert run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)


def test_a_checkpoint_made_on_the_sample_resumes_with_an_optimizer_that_starts_on_none(tmp_path):
    # Prepare: stopped after 2 rounds on the sample, whose sums the checkpoint's state holds
    X, y = classification(40_000, 6)
    exact = fit(X, y, pg.optim.Newton())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)
        fit(X, y, STARTED, checkpoint_dir=tmp_path, max_rounds=2)
    # Execute: the same Hessian's sample, no start
    with warnings.catch_warnings():
        warnings.simplefilter("error", LineSearchStalled)
        run = fit(X, y, pg.optim.Newton(hessian_sample=0.2), checkpoint_dir=tmp_path, resume=True)
    # Assert: the point reached evaluated over all the rows, then Newton's optimum
    assert run.history[2]["samples"] == 2 * len(X) and run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)


def test_a_singular_hessian_on_the_sample_after_its_first_round_starts_all_the_rows_afresh(monkeypatch):
    # Prepare: the third step's Hessian (round 2, still on the sample) taken as singular,
    # as a sample whose classes separate makes it: its point may be far off by then
    from paragrad.optim import newton

    X, y = classification(40_000, 6)
    exact = fit(X, y, pg.optim.Newton())
    steps = {"count": 0}
    original = newton.newton_direction

    def third_singular(hessian, grad, pivot=newton.SINGULAR_PIVOT):
        steps["count"] += 1
        direction, singular = original(hessian, grad, pivot)
        return direction, singular or steps["count"] == 3

    monkeypatch.setattr(newton, "newton_direction", third_singular)
    # Execute
    run = fit(X, y, STARTED)
    # Assert: round 2 taken again over all the rows from the first point; Newton's optimum
    assert [r["samples"] for r in run.history[:3]] == [2 * 2048, 2048, 2 * len(X)]
    assert run.history[2]["loss"] == exact.history[0]["loss"]
    assert "(its first 2 rounds on 5.0% of the rows alone, which met a singular Hessian" in run.optimizer
    assert run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)
