"""Newton with an estimated Hessian until near the optimum: the same optimum, in less time.

Far from the optimum the Hessian is summed in float32 over a sample of the rows; once a
step is small (``exact_below``) it is exact, and no estimated step is a run's last, so
the last steps are exact Newton's and the optimum is theirs to round-off.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse
from newton_data import classification, dataset

import paragrad as pg
from paragrad.models import linear_layout
from paragrad.models.curvature import SYMMETRIC_UPDATE_COLUMNS, add_hessian_sums, finish_hessian
from paragrad.optim.least_squares import RankDeficient
from paragrad.training.hessian_schedule import HessianSchedule
from paragrad.training.settings import ESTIMATE_ROWS_PER_PARAM, ESTIMATE_UNTIL, default_optimizer
from paragrad.training.strategies import StepOutcome

ESTIMATED = pg.optim.Newton(hessian_sample=0.3, hessian_float32=True, exact_below=ESTIMATE_UNTIL)


def fit(model: pg.models.Model, X: np.ndarray, y: np.ndarray, optimizer: pg.optim.Optimizer | None, **kw):
    return pg.train(model, pg.Dataset(X, y), optimizer=optimizer, **{"engine": "serial", **kw})


def identified(params: np.ndarray, classes: int) -> np.ndarray:
    """Parameters with what the loss does not see taken off: for softmax, each feature's
    (and the intercept's) mean over the classes."""
    if classes == 2:
        return params
    rows = params.reshape(-1, classes)
    return rows - rows.mean(axis=1, keepdims=True)


def hessian_by_definition(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum_i v_i a_i a_i^T`` with ``a = [x, 1]``, in float64 as written."""
    A = np.column_stack([X, np.ones(len(X))]).astype(np.float64)
    return A.T @ (A * v[:, None])


# -- the sums ----------------------------------------------------------------------------------


@pytest.mark.parametrize("float32", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("features", [7, SYMMETRIC_UPDATE_COLUMNS])
def test_the_hessian_sums_by_a_symmetric_update_equal_the_definition(float32, sparse, features):
    # Prepare: weights >= 0 (a symmetric rank-k update from SYMMETRIC_UPDATE_COLUMNS), and
    # of both signs (a product)
    X, _ = classification(500, features)
    rng = np.random.default_rng(3)
    for v in (rng.random(500), rng.standard_normal(500)):
        hess = np.zeros((features + 1, features + 1))
        # Execute
        add_hessian_sums(
            hess, scipy.sparse.csr_matrix(X) if sparse else X, v[:, None], None, True, 64, float32
        )
        finish_hessian(hess, 1)
        # Assert: to the round-off of float64's or float32's sums, relative to each entry's
        # sum of magnitudes; exactly symmetric
        magnitudes = hessian_by_definition(np.abs(X), np.abs(v))
        error = np.abs(hess - hessian_by_definition(X, v)) / magnitudes
        assert error.max() <= (1e-5 if float32 else 1e-13)
        np.testing.assert_array_equal(hess, hess.T)


def test_the_float32_hessian_of_float32_data_is_its_hessian():
    # Prepare: float32 data, whose products run in float32 either way
    X, y = classification(300, 5)
    model = pg.models.LogisticRegression()
    model.setup(5, np.array([0.0, 1.0]))
    params = np.random.default_rng(1).standard_normal(6)
    X32 = X.astype(np.float32)
    # Execute, Assert: the same sums bit for bit
    np.testing.assert_array_equal(
        model.loss_grad_hess(params, X32, y, None, True)[2], model.loss_grad_hess(params, X32, y)[2]
    )


# -- the runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "classes"), [(pg.models.LogisticRegression, 2), (pg.models.SoftmaxRegression, 3)]
)
def test_an_estimated_hessian_until_near_the_optimum_reaches_newtons_optimum(model, classes):
    # Prepare: the exact Newton's optimum, converged well past tol
    X, y = classification(3000, 12, classes)
    exact = fit(model(), X, y, pg.optim.Newton(), tol=1e-12)
    # Execute
    run = fit(model(), X, y, ESTIMATED)
    # Assert: an exact last step, so the optimum to about tol^2 (1e-12), and the summary says
    # so. Softmax's parameters are the optimum's up to one vector added to every class's
    # (the same probabilities): compared with each row's mean over the classes taken off.
    assert run.converged
    assert (
        np.abs(identified(run.params, classes) - identified(exact.params, classes)).max()
        <= 1e-12 * np.abs(exact.params).max()
    )
    assert "the Hessian over 33.3% of the rows in float32 to round" in run.optimizer
    assert run.optimizer.endswith(", then exact)")


def test_softmax_float32_steps_add_nothing_along_its_flat_directions():
    # Prepare: softmax's parameters have a direction the loss does not see (the same amount
    # added to every class's), along which the data's Hessian is flat only to round-off
    X, y = classification(3000, 12, 3)
    exact = fit(pg.models.SoftmaxRegression(), X, y, pg.optim.Newton(), tol=1e-12)
    # Execute
    run = fit(pg.models.SoftmaxRegression(), X, y, ESTIMATED)
    # Assert: the parameters themselves are Newton's, not only the probabilities
    assert np.abs(run.params - exact.params).max() <= 1e-12 * np.abs(exact.params).max()


def test_the_estimate_takes_the_same_steps_on_any_engine_and_the_same_optimum_on_any_worker_count(
    local_engine,
):
    # Prepare
    X, y = classification(3000, 12)
    # Execute
    runs = {
        (engine, workers): fit(
            pg.models.LogisticRegression(),
            X,
            y,
            ESTIMATED,
            engine=engine,
            workers=None if engine is local_engine else workers,
        )
        for engine, workers in [
            ("serial", 2),
            ("threads", 2),
            (local_engine, 2),
            ("serial", 1),
            ("serial", 3),
        ]
    }
    # Assert: on two workers, the same sums, so the same steps bit for bit; on other counts
    # the float32 sums round otherwise, but the last steps are exact: the same optimum
    first = runs["serial", 2]
    for other in (runs["threads", 2], runs[local_engine, 2]):
        assert [r["loss"] for r in other.history] == [r["loss"] for r in first.history]
        np.testing.assert_array_equal(other.params, first.params)
    for other in (runs["serial", 1], runs["serial", 3]):
        assert np.abs(other.params - first.params).max() <= 1e-12 * np.abs(first.params).max()


def test_an_estimated_step_that_meets_tol_is_not_the_last():
    # Prepare: tol above exact_below, so an estimated step meets it
    X, y = classification(3000, 12)
    optimizer = pg.optim.Newton(hessian_float32=True, exact_below=1e-3)
    # Execute
    run = fit(pg.models.LogisticRegression(), X, y, optimizer, tol=0.05)
    # Assert: its point evaluated again, and an exact step taken from there
    assert run.converged and run.optimizer.endswith("then exact: a step met tol)")
    estimated_only = fit(
        pg.models.LogisticRegression(), X, y, pg.optim.Newton(hessian_float32=True), tol=0.05
    )
    assert len(run.history) == len(estimated_only.history) + 1


# Exact from round 2 (the first step measures 0.19), but the second step still takes the
# estimate its point was evaluated with, and meets tol (it measures 0.035).
SWITCH_EARLY = {"optimizer": pg.optim.Newton(hessian_float32=True, exact_below=0.5), "tol": 0.05}


def test_the_step_after_the_switch_takes_the_estimate_and_is_not_the_last():
    # Prepare
    X, y = classification(3000, 12)
    # Execute
    run = pg.train(pg.models.LogisticRegression(), pg.Dataset(X, y), engine="serial", **SWITCH_EARLY)
    # Assert: a third round, an exact step from the second's point evaluated again
    assert run.converged and run.optimizer.endswith("in float32 to round 1, then exact)")
    assert len(run.history) == 3


def test_a_run_resumed_after_the_switch_knows_its_point_holds_an_estimate(tmp_path):
    # Prepare: a run stopped after round 1, when the Hessian it holds is an estimate
    data = pg.Dataset(*classification(3000, 12))
    whole = pg.train(pg.models.LogisticRegression(), data, engine="serial", **SWITCH_EARLY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)
        pg.train(
            pg.models.LogisticRegression(),
            data,
            engine="serial",
            checkpoint_dir=tmp_path,
            max_rounds=1,
            **SWITCH_EARLY,
        )
    # Execute
    resumed = pg.train(
        pg.models.LogisticRegression(),
        data,
        engine="serial",
        checkpoint_dir=tmp_path,
        resume=True,
        **SWITCH_EARLY,
    )
    # Assert: the same three rounds
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_dependent_features_are_found_over_all_rows_then_estimated_again():
    # Prepare: a repeated column, which makes every Hessian singular
    X, y = classification(3000, 6)
    X = np.column_stack([X, X[:, 2]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = fit(pg.models.LogisticRegression(), X, y, pg.optim.Newton())
        # Execute
        run = fit(pg.models.LogisticRegression(), X, y, ESTIMATED)
    # Assert: the smallest-norm solution, as exact Newton's; the warning once a run
    assert run.converged
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-9, atol=1e-12)
    assert sum(issubclass(w.category, RankDeficient) for w in caught) == 2


@pytest.mark.parametrize("dependence", ["constant", "sum", "near"])
def test_dependence_float32_cannot_see_is_found_by_the_exact_hessian(dependence):
    # Prepare: a constant column beside the intercept, a column the sum of two others, or
    # one within 1e-7 of another: in float32 round-off hides each from the Cholesky pivot
    X, y = classification(3000, 12)
    X[:, 5] = {"constant": 3.0, "sum": X[:, 0] + X[:, 1], "near": X[:, 0] * (1 + 1e-7)}[dependence]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = fit(pg.models.LogisticRegression(), X, y, pg.optim.Newton())
        # Execute
        run = fit(pg.models.LogisticRegression(), X, y, ESTIMATED)
    # Assert: found over all the rows, said as for exact Newton (not "no finite optimum"),
    # and its answer the least-squares one of smallest norm, as exact Newton's
    kinds = [w.category for w in caught]
    assert run.converged and kinds.count(RankDeficient) == 2 and pg.ConvergenceWarning not in kinds
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-9, atol=1e-12)


def test_a_resumed_run_keeps_the_users_float32_hessian(tmp_path):
    # Prepare: a checkpoint of exact Newton's, which a float32 Hessian's run may resume
    X, y = classification(3000, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)
        fit(pg.models.LogisticRegression(), X, y, pg.optim.Newton(), checkpoint_dir=tmp_path, max_rounds=2)
    # Execute
    float32 = pg.optim.Newton(hessian_float32=True)
    run = fit(pg.models.LogisticRegression(), X, y, float32, checkpoint_dir=tmp_path, resume=True)
    # Assert
    assert run.optimizer == "newton (the Hessian in float32)"


def test_features_too_large_for_float32_take_the_exact_hessian():
    # Prepare: a feature near 1e20, whose squares float32 cannot hold
    X, y = classification(3000, 6)
    X[:, 0] *= 1e21
    exact = fit(pg.models.LogisticRegression(), X, y, pg.optim.Newton())
    # Execute
    run = fit(pg.models.LogisticRegression(), X, y, pg.optim.Newton(hessian_float32=True, exact_below=1e-2))
    # Assert: the exact Hessian from the first round, and its optimum
    assert run.optimizer.endswith("(the exact Hessian: the estimate was singular or not finite)")
    np.testing.assert_array_equal(run.params, exact.params)


@pytest.mark.parametrize("stop", [2, 3, 4])
def test_a_run_resumed_before_or_after_the_exact_hessian_takes_the_same_steps(tmp_path, stop):
    # Prepare: the whole run, and one stopped after round 2 (estimated), 3 (exact from then
    # on, its point's Hessian an estimate) or 4 (exact)
    X, y = classification(3000, 12)
    whole = fit(pg.models.LogisticRegression(), X, y, ESTIMATED)
    assert "to round 3, then exact" in whole.optimizer and len(whole.history) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)
        fit(pg.models.LogisticRegression(), X, y, ESTIMATED, checkpoint_dir=tmp_path, max_rounds=stop)
    # Execute
    resumed = fit(pg.models.LogisticRegression(), X, y, ESTIMATED, checkpoint_dir=tmp_path, resume=True)
    # Assert: the same steps, and the same summary
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    np.testing.assert_array_equal(resumed.params, whole.params)
    assert resumed.optimizer == whole.optimizer


@pytest.mark.parametrize("stop", [1, 2, 4])
def test_a_resumed_run_knows_a_step_grew_and_the_features_are_dependent(tmp_path, stop, monkeypatch):
    # Prepare: a repeated column (found dependent in round 0), and a rare feature that makes
    # a sampled step grow; blocks of 64 rows, so the sample is a tenth of them
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    X, y = classification(6000, 8)
    X = np.column_stack([X, X[:, 1], np.r_[np.ones(40), np.zeros(5960)]])
    optimizer = pg.optim.Newton(hessian_sample=0.1, hessian_float32=True, exact_below=ESTIMATE_UNTIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = fit(pg.models.LogisticRegression(), X, y, optimizer)
        fit(pg.models.LogisticRegression(), X, y, optimizer, checkpoint_dir=tmp_path, max_rounds=stop)
        # Execute
        resumed = fit(pg.models.LogisticRegression(), X, y, optimizer, checkpoint_dir=tmp_path, resume=True)
    # Assert: the whole run found both, at rounds 0 and 3; the resumed one took its steps
    assert (
        whole.optimizer == "newton (the Hessian over 10.0% of the rows to round 3, then exact: a step grew)"
    )
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert resumed.optimizer == whole.optimizer


# -- the default -------------------------------------------------------------------------------


def test_dense_data_of_a_costly_hessian_default_to_an_estimate_until_near_the_optimum():
    # Prepare: 40,000 x 100 (4e8 products a pass), and variations
    model, strategy = pg.models.LogisticRegression(), pg.GradientDescent()
    # Execute
    dense = default_optimizer(model, strategy, dataset(40_000, 100))
    single = default_optimizer(model, strategy, dataset(40_000, 100, dtype=np.float32))
    sparse = default_optimizer(model, strategy, dataset(40_000, 100, sparse=True))
    small = default_optimizer(model, strategy, dataset(4_000, 100))
    # Assert
    assert isinstance(dense, pg.optim.Newton)
    assert dense.hessian_sample == pytest.approx(ESTIMATE_ROWS_PER_PARAM * 101 / 40_000)
    assert dense.hessian_float32 and dense.exact_below == ESTIMATE_UNTIL
    assert isinstance(single, pg.optim.Newton) and not single.hessian_float32 and single.exact_below
    for exact in (sparse, small):
        assert isinstance(exact, pg.optim.Newton) and not exact.estimated
    # The same optimum as Newton's: checkpoints of either resume with the other
    assert dense.config() == pg.optim.Newton().config()


def test_the_default_is_chosen_for_the_type_the_data_is_trained_in():
    # Prepare: float32 data, trained in float64 (7e7 products a pass)
    X, y = classification(20_000, 60)
    # Execute
    run = pg.train(pg.models.LogisticRegression(), pg.Dataset(X.astype(np.float32), y), dtype="float64")
    # Assert: float64's estimate, summed in float32
    assert "in float32 to round" in run.optimizer


def test_exact_below_must_be_positive():
    with pytest.raises(pg.ConfigError, match="exact_below"):
        pg.optim.Newton(exact_below=0)
    with pytest.raises(pg.ConfigError, match="hessian_float32 must be True or False, got 1"):
        pg.optim.Newton(hessian_float32=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("measure", "back"), [(0.5, True), (1e-3, False)])
def test_dependence_found_near_the_optimum_keeps_the_exact_hessian(measure, back):
    # Prepare: an exact round that found the features dependent, far from or near the optimum
    schedule = HessianSchedule()
    estimated = pg.optim.Newton(hessian_sample=0.5, hessian_float32=True, exact_below=1e-2)
    exact_step = StepOutcome(np.zeros(3), None, 0.5, 0.1, criterion=measure, singular=True)
    # Execute
    after = schedule.back_to_estimate(estimated, exact_step, 0)
    # Assert: far from it, the sample again (its steps of smallest norm, so not in float32)
    if back:
        assert after is not None and after.singular_known and after.hessian_every == 2
        assert not after.hessian_float32
    else:
        assert after is None
