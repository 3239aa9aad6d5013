"""Newton with the Hessian summed over a sample of the rows: the same optimum as Newton's.

The gradient stays exact, so the fixed point is the exact one; the sample only changes the
steps. A sample that sees no curvature in some direction (a rare feature) is caught, and
the round is taken again with the Hessian over all the rows.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from newton_data import classification, dataset

import paragrad as pg
from paragrad.cli.commands import _optimizer
from paragrad.cli.parser import build_parser
from paragrad.models import linear_layout
from paragrad.models.curvature import RowSample
from paragrad.optim.least_squares import RankDeficient
from paragrad.optim.newton import newton_direction
from paragrad.training.settings import default_optimizer


def logistic_at_random_point(X: np.ndarray) -> tuple[pg.models.LogisticRegression, np.ndarray]:
    model = pg.models.LogisticRegression(l2=0.1)
    model.setup(X.shape[1], np.array([0.0, 1.0]))
    return model, np.random.default_rng(1).standard_normal(model.num_params)


@pytest.mark.parametrize("every", [1, 3])
def test_sampled_hessian_is_every_kth_blocks_sum_scaled_to_all_rows(every, monkeypatch):
    # Prepare: blocks of 64 rows (the smallest), so 1000 rows take 16 of them
    X, y = classification(1000, 4)
    model, params = logistic_at_random_point(X)
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    sampled = [rows for rows in np.array_split(np.arange(1000), range(64, 1000, 64))][::every]
    expected = sum(model.loss_grad_hess(params, X[rows], y[rows])[2] for rows in sampled)
    expected = expected * 1000 / sum(len(rows) for rows in sampled)
    # Execute
    loss, grad, hess = model.loss_grad_hess(params, X, y, RowSample(every, 0, 1000))
    # Assert: the gradient is the exact one, the Hessian the sample's, scaled
    assert loss == model.loss_grad(params, X, y)[0]
    np.testing.assert_array_equal(grad, model.loss_grad(params, X, y)[1])
    np.testing.assert_allclose(hess, expected, rtol=1e-12)
    np.testing.assert_array_equal(hess, hess.T)


@pytest.mark.parametrize("splits", [[0, 1000], [0, 500, 1000], [0, 100, 333, 800, 1000]])
def test_sampled_hessian_is_the_same_whatever_the_shards(splits, monkeypatch):
    # Prepare: the sample is every third block of 64 of all the rows, not of each shard's
    X, y = classification(1000, 4)
    model, params = logistic_at_random_point(X)
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    whole = model.loss_grad_hess(params, X, y, RowSample(3, 0, 1000))[2]
    # Execute
    shards = [
        model.loss_grad_hess(params, X[first:end], y[first:end], RowSample(3, first, 1000))[2]
        for first, end in itertools.pairwise(splits)
    ]
    # Assert
    np.testing.assert_allclose(sum(shards), whole, rtol=1e-12)


@pytest.mark.parametrize(
    ("model", "classes"), [(pg.models.LogisticRegression, 2), (pg.models.SoftmaxRegression, 3)]
)
def test_sampled_newton_reaches_newtons_optimum(model, classes, monkeypatch):
    # Prepare: 64-row blocks, a Hessian over one block in ten
    X, y = classification(6000, 6, classes)
    data = pg.Dataset(X, y)
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    exact = pg.train(model(), data, optimizer=pg.optim.Newton(), engine="serial", tol=1e-10)
    # Execute
    sampled = pg.train(
        model(), data, optimizer=pg.optim.Newton(hessian_sample=0.1), engine="serial", tol=1e-10
    )
    # Assert
    assert sampled.converged
    np.testing.assert_allclose(sampled.params, exact.params, rtol=1e-8, atol=1e-10)
    assert sampled.model.loss(X, y) <= exact.model.loss(X, y) + 1e-14


def test_sampled_newton_takes_the_same_steps_on_any_number_of_workers(monkeypatch):
    # Prepare: 64-row blocks; shards of 6000 / 7 rows do not start on a block's first row
    X, y = classification(6000, 6)
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    sampled = pg.optim.Newton(hessian_sample=0.1)
    # Execute
    runs = [
        pg.train(
            pg.models.LogisticRegression(), pg.Dataset(X, y), optimizer=sampled, engine="serial", workers=n
        )
        for n in (1, 7)
    ]
    # Assert: the same rows in the Hessian, so the same steps to round-off
    assert [r["loss"] for r in runs[0].history] == pytest.approx(
        [r["loss"] for r in runs[1].history], rel=1e-13
    )
    np.testing.assert_allclose(runs[1].params, runs[0].params, rtol=1e-11)


def rare_feature_data() -> tuple[np.ndarray, np.ndarray]:
    """A feature that is non-zero in the third block of 16,384 rows of each half only."""
    X, y = classification(4 * 2 * 16_384, 7, seed=2)
    rare = np.zeros(len(X))
    for half in (0, 4 * 16_384):
        rare[half + 2 * 16_384 : half + 2 * 16_384 + 300] = 1.0
    return np.column_stack([X, rare]), y


def test_a_sample_blind_to_a_feature_is_taken_again_with_all_rows(local_engine):
    # Prepare: 8 float64 features make blocks of 16,384 rows; two shards of four blocks
    # each, the Hessian over one in four (the first): it never sees the rare feature
    X, y = rare_feature_data()
    data = pg.Dataset(X, y)
    exact = pg.train(
        pg.models.LogisticRegression(), data, optimizer=pg.optim.Newton(), engine="serial", workers=2
    )
    sampled = pg.optim.Newton(hessian_sample=0.25)
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficient)  # the features are independent
        runs = [
            pg.train(pg.models.LogisticRegression(), data, optimizer=sampled, engine=engine, workers=2)
            for engine in ("serial", local_engine)
        ]
    # Assert: Newton's rounds from the first, on any engine
    for run in runs:
        assert run.converged
        np.testing.assert_array_equal(run.params, exact.params)
        assert len(run.history) == len(exact.history)


@pytest.mark.parametrize("rows", [1000, 5000, 100_000])
def test_a_constant_feature_beside_the_intercept_makes_the_hessian_singular(rows):
    # Prepare: dependent columns whose Hessian round-off may let Cholesky through (1000 and
    # 100,000 rows here did, unscaled)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 8))
    X[:, 3] = 3.0
    model = pg.models.LogisticRegression()
    model.setup(8, np.array([0.0, 1.0]))
    _, grad, hessian = model.loss_grad_hess(0.1 * rng.standard_normal(9), X, (rng.random(rows) < 0.4) * 1.0)
    # Execute
    _, singular = newton_direction(hessian, grad)
    # Assert
    assert singular


def test_dependent_features_are_checked_over_all_rows_once_then_sampled_again(monkeypatch):
    # Prepare: a constant feature beside the intercept, as statsmodels' add_constant makes;
    # 500 sampled rows a parameter, as the default samples
    X, y = classification(40_000, 6)
    X = np.column_stack([X, np.full(len(X), 3.0)])
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    data = pg.Dataset(X, y)
    with pytest.warns(RankDeficient):
        exact = pg.train(
            pg.models.LogisticRegression(), data, optimizer=pg.optim.Newton(), engine="serial", tol=1e-10
        )
    # Execute
    sampled = pg.optim.Newton(hessian_sample=0.1)
    with pytest.warns(RankDeficient) as caught:
        run = pg.train(pg.models.LogisticRegression(), data, optimizer=sampled, engine="serial", tol=1e-10)
    # Assert: said once; the sample's Hessian again after the check; exact Newton's answer
    assert len([w for w in caught if w.category is RankDeficient]) == 1
    assert run.converged and run.optimizer == "newton (the Hessian over 10.0% of the rows)"
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-8, atol=1e-10)


def test_rare_features_that_mislead_the_sampled_steps_hand_over_to_the_exact_hessian(monkeypatch):
    # Prepare: 64-row blocks, one in ten in the Hessian; eight one-hot columns non-zero in
    # 0.1-0.5% of the rows, which the sample holds a few of, or none
    rng = np.random.default_rng(1)
    X, y = classification(20_000, 4, seed=1)
    rare = np.zeros((20_000, 8))
    for j, count in enumerate([20, 30, 40, 60, 80, 100, 20, 40]):
        rare[rng.choice(20_000, count, replace=False), j] = 1.0
    X = np.column_stack([X, rare])
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(X[:, :4].sum(axis=1) + rare.sum(axis=1))))) * 1.0
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    data = pg.Dataset(X, y)
    exact = pg.train(pg.models.LogisticRegression(), data, optimizer=pg.optim.Newton(), engine="serial")
    # Execute
    sampled = pg.optim.Newton(hessian_sample=0.1)
    run = pg.train(pg.models.LogisticRegression(), data, optimizer=sampled, engine="serial")
    # Assert: the exact Hessian's answer, and the summary says why it took over
    assert run.converged and "then exact: a step grew" in run.summary()
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-9, atol=1e-12)


def test_large_dense_data_default_to_newton_with_a_sampled_hessian():
    # Prepare: 100,000 x 100 (Newton's exact Hessian: 1e9 products a pass, above the budget)
    model, strategy = pg.models.LogisticRegression(), pg.GradientDescent()
    # Execute
    dense = default_optimizer(model, strategy, dataset(100_000, 100))
    sparse = default_optimizer(model, strategy, dataset(100_000, 100, sparse=True))
    wide = default_optimizer(model, strategy, dataset(30_000, 200))
    small = default_optimizer(model, strategy, dataset(5_000, 100))
    # Assert: 800 rows a parameter in float32, started on 200, on dense data, where the
    # sample's Hessian is cheap
    assert isinstance(dense, pg.optim.Newton) and dense.hessian_sample == pytest.approx(800 * 101 / 100_000)
    assert dense.hessian_float32 and dense.start_sample == pytest.approx(200 * 101 / 100_000)
    assert dense.exact_below is None
    assert isinstance(sparse, pg.optim.LBFGS)
    assert isinstance(wide, pg.optim.LBFGS)
    assert isinstance(small, pg.optim.Newton) and small.hessian_sample == 1.0


def test_a_nearly_separable_fit_by_default_converges_to_newtons_optimum():
    # Prepare: classes 40 apart, whose sample's rounds take a dozen to converge, and whose
    # weights grow for many rounds over all the rows (exact Newton takes 14)
    data = pg.make_classification(150_000, 100, seed=7, separation=40)
    exact = pg.train(pg.models.LogisticRegression(), data, optimizer=pg.optim.Newton(), tol=1e-10)
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.ConvergenceWarning)  # not taken for separable
        run = pg.train(pg.models.LogisticRegression(), data)
    # Assert: the start found the sample's optimum, and the run Newton's to its tol (the
    # sampled Hessian's linear rate is slow where the classes barely overlap)
    assert run.converged and "rows alone)" in run.optimizer and "found no optimum" not in run.optimizer
    X, y = data.X, data.y
    assert run.model.loss(X, y) - exact.model.loss(X, y) <= 1e-10 * exact.model.loss(X, y)
    np.testing.assert_allclose(run.params, exact.params, rtol=1e-5, atol=1e-6)


def test_rounds_on_a_sample_that_ran_out_are_not_taken_for_separable_classes(monkeypatch):
    # Prepare: the same classes 40 apart, the start cut at 10 rounds: the run starts afresh
    # over all the rows, whose weights then grow round after round from zero
    from paragrad.training import hessian_schedule

    monkeypatch.setattr(hessian_schedule, "MAX_SAMPLE_ROUNDS", 10)
    data = pg.make_classification(150_000, 100, seed=7, separation=40)
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.ConvergenceWarning)  # the classes overlap
        run = pg.train(pg.models.LogisticRegression(), data)
    # Assert: only the rounds over all the rows tell whether the weights keep growing
    assert "which found no optimum: all the rows from the start" in run.optimizer
    assert run.converged and run.stopped == "converged" and len(run.history) >= 20


def test_the_command_line_takes_the_default_solver_as_chosen():
    # Prepare: `paragrad train data --target y` on data over the exact Hessian's budget
    args = build_parser().parse_args(["train", "data.csv", "--target", "y"])
    data = dataset(100_000, 100)
    # Execute
    chosen = _optimizer(args, pg.models.LogisticRegression(), pg.GradientDescent(), data)
    # Assert: the sampled Hessian the library would use, not a Newton over all the rows
    assert isinstance(chosen, pg.optim.Newton) and chosen.hessian_sample == pytest.approx(800 * 101 / 100_000)


def test_hessian_sample_must_be_a_share_of_the_rows():
    with pytest.raises(pg.ConfigError, match=r"hessian_sample must be in \(0, 1\], got 0"):
        pg.optim.Newton(hessian_sample=0)
