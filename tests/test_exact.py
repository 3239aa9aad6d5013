"""Correct by default on real data: statsmodels' exact fits, from the defaults a user types.

The data sets ship inside statsmodels and scikit-learn (see realdata.py). Least squares
is solved by tall-skinny QR and logistic and softmax regression by Newton's method, so
the coefficients match statsmodels' to 1e-6 and the loss to 1e-8, unscaled, whatever the
conditioning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import realdata
from conftest import relative_error, run_cli

import paragrad as pg
from paragrad.optim.least_squares import combine_factors, shard_factor

pytest.importorskip("statsmodels")
MODELS = {"linear": pg.models.LinearRegression, "logistic": pg.models.LogisticRegression}
MODELS["softmax"] = pg.models.SoftmaxRegression


def norm_error(case: realdata.Case, params: np.ndarray) -> float:
    reference = realdata.reference_vector(case)
    return float(np.linalg.norm(realdata.comparable(case, params) - reference) / np.linalg.norm(reference))


def assert_matches(case: realdata.Case, params: np.ndarray) -> None:
    assert norm_error(case, params) <= 1e-6, f"{case.name}: coefficients {norm_error(case, params):.2e} off"
    loss = realdata.mean_loss(case, params)
    assert abs(loss - case.loss) <= 1e-8 * abs(case.loss), f"{case.name}: loss {loss!r} vs {case.loss!r}"


@pytest.mark.parametrize("name", realdata.CASES)
def test_the_command_line_defaults_give_statsmodels_fit(name, tmp_path):
    case = realdata.load(name)
    realdata.write_csv(case, tmp_path / "data.csv")
    result = run_cli(
        "train", tmp_path / "data.csv", "--target", "y", "--model", case.kind, "--out", tmp_path / "m.npz"
    )
    assert result.returncode == 0, result.stderr
    assert "(converged" in result.stdout and "not converged" not in result.stdout
    assert_matches(case, pg.load_model(tmp_path / "m.npz").params)


@pytest.mark.parametrize("engine", ["serial", "local"])
def test_the_python_defaults_give_statsmodels_fit_on_each_engine(engine):
    for name in realdata.CASES:
        case = realdata.load(name)
        run = pg.train(MODELS[case.kind](), pg.Dataset(case.X, case.y), engine=engine, workers=2)
        assert run.converged, name
        assert_matches(case, run.params)


def test_the_estimators_defaults_give_statsmodels_fit():
    from paragrad.sklearn import ParagradClassifier, ParagradRegressor

    for name in realdata.CASES:
        case = realdata.load(name)
        if case.kind == "linear":
            estimator = ParagradRegressor(l2=0.0).fit(case.X, case.y)
            params = np.append(estimator.coef_, estimator.intercept_)
        else:
            estimator = ParagradClassifier(l2=0.0).fit(case.X, case.y.astype(int))
            W, b = np.atleast_2d(estimator.coef_), np.ravel(estimator.intercept_)
            params = np.append(W.T.ravel(), b) if case.kind == "softmax" else np.append(W[0], b[0])
        assert_matches(case, params)


# -- tall-skinny QR ------------------------------------------------------------------------------


def ill_conditioned(rows: int, cols: int, condition: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A matrix with singular values from 1 down to 1/condition, and a target near its range."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    X = (left * np.logspace(0, -np.log10(condition), cols)) @ right.T
    return X, X @ rng.standard_normal(cols) + 1e-3 * rng.standard_normal(rows)


def test_qr_does_not_depend_on_the_worker_count():
    X, y = ill_conditioned(700, 12, 1e6, seed=1)
    data = pg.Dataset(X, y)
    runs = {w: pg.train(pg.models.LinearRegression(), data, engine="serial", workers=w) for w in (1, 2, 3, 7)}
    # Shards change only the rounding of a backward-stable factorisation: within a few
    # times condition x machine epsilon (2.2e-10 here) of one another.
    bound = 4 * 1e6 * np.finfo(np.float64).eps
    for run in runs.values():
        assert len(run.history) == 1 and run.converged
        assert relative_error(run.params, runs[1].params) <= bound


def extended_lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares solution by Householder QR in long double (x87's 64-bit mantissa:
    about a thousandth of float64's round-off), to judge float64 solvers against."""
    R = np.column_stack([A, y]).astype(np.longdouble)
    for j in range(A.shape[1]):
        v = R[j:, j].copy()
        v[0] += np.copysign(np.sqrt(v @ v), v[0])
        R[j:, j:] -= np.outer(v, (2 / (v @ v)) * (v @ R[j:, j:]))
    theta = np.zeros(A.shape[1], dtype=np.longdouble)
    for i in reversed(range(A.shape[1])):
        theta[i] = (R[i, -1] - R[i, i + 1 : -1] @ theta[i + 1 :]) / R[i, i]
    return theta.astype(np.float64)


def test_qr_reaches_lstsq_accuracy_where_the_normal_equations_fail():
    if np.finfo(np.longdouble).eps > 1e-18:
        pytest.skip("long double here has no more precision than float64")
    X, y = ill_conditioned(2000, 10, 1e10, seed=2)
    A = np.column_stack([X, np.ones(len(X))])
    truth = extended_lstsq(A, y)
    # The accuracy lstsq itself reaches: its error on the same problem, the rows in several
    # orders (its error is a draw of the round-off: 4e-8 to 8e-7 here).
    rng = np.random.default_rng(0)
    orders = [np.arange(len(X))] + [rng.permutation(len(X)) for _ in range(5)]
    lstsq_error = max(relative_error(np.linalg.lstsq(A[o], y[o], rcond=None)[0], truth) for o in orders)
    for workers in (1, 2, 3, 7):
        run = pg.train(pg.models.LinearRegression(), pg.Dataset(X, y), engine="serial", workers=workers)
        assert relative_error(run.params, truth) <= 10 * lstsq_error
    normal = np.linalg.solve(A.T @ A, A.T @ y)
    assert relative_error(normal, truth) > 1e-3  # condition 1e20: nothing left in float64


def test_qr_of_a_shard_in_blocks_equals_one_factorisation(monkeypatch):
    X, y = ill_conditioned(300, 5, 1e3, seed=3)
    whole = shard_factor(X, y, fit_intercept=True)
    monkeypatch.setattr("paragrad.optim.least_squares.BLOCK_ELEMENTS", 1)  # blocks of 14 rows
    blocked = shard_factor(X, y, fit_intercept=True)
    # Factors are unique up to the signs of their rows.
    np.testing.assert_allclose(np.abs(blocked), np.abs(whole), rtol=1e-9, atol=1e-12)
    square = combine_factors([blocked[:3], blocked[3:]], np.zeros((0, 7)))
    np.testing.assert_allclose(np.abs(square), np.abs(whole), rtol=1e-9, atol=1e-12)


def test_qr_with_l2_is_ridge_regression():
    from sklearn.linear_model import Ridge

    data = pg.make_regression(400, 6, seed=4)
    l2 = 0.05
    run = pg.train(pg.models.LinearRegression(l2=l2), data, engine="serial", workers=3)
    ridge = Ridge(alpha=l2 * data.num_rows, tol=1e-12).fit(data.X, data.y)
    assert relative_error(run.params, np.append(ridge.coef_, ridge.intercept_)) <= 1e-10


def test_linearly_dependent_features_get_the_minimum_norm_solution_with_a_warning():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 3))
    X = np.column_stack([X, X[:, 0] + X[:, 1], np.full(50, 2.0)])  # a sum and a constant column
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 0.3
    with pytest.warns(pg.optim.RankDeficient, match="rank 4 of 6 columns"):
        run = pg.train(pg.models.LinearRegression(), pg.Dataset(X, y), engine="serial", workers=2)
    exact = np.linalg.lstsq(np.column_stack([X, np.ones(50)]), y, rcond=None)[0]
    assert relative_error(run.params, exact) <= 1e-10


def test_more_features_than_rows_is_solved_like_lstsq():
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((8, 20)), rng.standard_normal(8)
    with pytest.warns(pg.optim.RankDeficient):
        run = pg.train(pg.models.LinearRegression(), pg.Dataset(X, y), engine="serial", workers=2)
    exact = np.linalg.lstsq(np.column_stack([X, np.ones(8)]), y, rcond=None)[0]
    assert relative_error(run.params, exact) <= 1e-10


def test_sparse_shards_factor_like_dense_ones():
    dense = pg.make_regression(300, 8, seed=7)
    import scipy.sparse as sp

    X = dense.X * (np.random.default_rng(7).random(dense.X.shape) < 0.3)
    dense_run = pg.train(pg.models.LinearRegression(), pg.Dataset(X, dense.y), engine="serial", workers=2)
    sparse_run = pg.train(
        pg.models.LinearRegression(), pg.Dataset(sp.csr_matrix(X), dense.y), engine="local", workers=2
    )
    assert relative_error(sparse_run.params, dense_run.params) <= 1e-10


# -- Newton ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["spector", "fair", "modechoice"])
def test_newton_reaches_statsmodels_optimum_within_12_rounds_unscaled(name):
    case = realdata.load(name)
    run = pg.train(MODELS[case.kind](), pg.Dataset(case.X, case.y), engine="serial", workers=3)
    assert type(run.history) is list and len(run.history) <= 12 and run.converged
    assert_matches(case, run.params)


def test_newtons_last_step_is_taken_without_a_pass_to_check_it():
    # Prepare
    case = realdata.load("spector")
    data = pg.Dataset(case.X, case.y)
    # Execute: the default stops once a step is below tol; tol=0 checks every step
    run = pg.train(pg.models.LogisticRegression(), data, engine="serial")
    checked = pg.train(
        pg.models.LogisticRegression(), data, engine="serial", tol=0, max_rounds=len(run.history)
    )
    # Assert: one pass a round (two in the first, none in the last), the same steps
    assert run.converged
    assert sum(record["samples"] for record in run.history) == len(run.history) * data.num_rows
    assert sum(record["samples"] for record in checked.history) == (len(run.history) + 1) * data.num_rows
    np.testing.assert_allclose(run.params, checked.params, rtol=1e-13)
    assert_matches(case, run.params)


@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_newton_matches_a_tight_scikit_learn_fit_with_l2_within_12_rounds(name):
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    l2 = 1e-3
    # scikit-learn's own Newton solver: its default L-BFGS at tol=1e-10 stops 1e-3 away here.
    tight = {"tol": 1e-10, "max_iter": 1000, "solver": "newton-cholesky"}
    reference = LogisticRegression(C=1.0 / (l2 * len(X)), **tight).fit(X, y)
    model = (
        pg.models.LogisticRegression(l2=l2) if name == "breast_cancer" else pg.models.SoftmaxRegression(l2=l2)
    )
    run = pg.train(model, pg.Dataset(X, y), optimizer=pg.optim.Newton(), engine="serial", workers=2)
    assert run.converged and len(run.history) <= 12
    if name == "breast_cancer":
        expected = np.append(reference.coef_[0], reference.intercept_)
        assert relative_error(run.params, expected) <= 1e-10
    else:
        np.testing.assert_allclose(run.model.predict_proba(X), reference.predict_proba(X), atol=1e-9)


def test_unregularised_breast_cancer_is_said_to_have_no_finite_optimum():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    with pytest.warns(pg.ConvergenceWarning, match="separable.*no finite optimum.*add one"):
        run = pg.train(pg.models.LogisticRegression(), pg.Dataset(X, y), engine="serial", workers=2)
    assert not run.converged


# -- L-BFGS on badly scaled data ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["longley", "spector", "randhie"])
def test_preconditioned_lbfgs_solves_unscaled_data(name):
    case = realdata.load(name)  # longley's features differ in scale by 1e5: condition 5e9
    run = pg.train(
        MODELS[case.kind](), pg.Dataset(case.X, case.y), optimizer=pg.optim.LBFGS(), engine="serial"
    )
    assert run.converged and run.stopped == "converged"
    assert norm_error(case, run.params) <= 1e-5


def test_lbfgs_that_stops_at_its_limit_says_so_rather_than_converged(tmp_path):
    case = realdata.load("star98")
    realdata.write_csv(case, tmp_path / "data.csv")
    args = ["train", tmp_path / "data.csv", "--target", "y", "--model", "linear", "--optimizer", "lbfgs"]
    args += ["--epochs", "50"]
    result = run_cli(*args, "--out", tmp_path / "m.npz")
    assert result.returncode == 0
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith("not converged: stopped at the round limit after 50")
    )
    strict = run_cli(*args, "--strict", "--out", tmp_path / "strict.npz")
    assert strict.returncode == 3 and not (tmp_path / "strict.npz").exists()
    assert strict.stderr.strip().splitlines()[-1].startswith("paragrad: error: not converged")


def test_dependent_features_under_newton_give_the_same_probabilities_with_a_warning():
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 3))
    y = (rng.random(500) < 1 / (1 + np.exp(-(X @ [1.0, -1.0, 0.5])))).astype(float)
    with_copies = np.column_stack([X, X[:, 0], np.full(500, 3.0)])  # a repeated and a constant column
    with pytest.warns(pg.optim.RankDeficient, match="linearly dependent"):
        run = pg.train(pg.models.LogisticRegression(), pg.Dataset(with_copies, y), engine="serial", workers=2)
    reference = sm.Logit(y, sm.add_constant(X)).fit(disp=0, method="newton", tol=1e-12)
    assert run.converged
    np.testing.assert_allclose(
        run.model.predict_proba(with_copies)[:, 1], reference.predict(sm.add_constant(X)), atol=1e-12
    )


# -- what the review of the solvers found --------------------------------------------------------


def test_qr_is_exact_when_one_column_is_in_much_larger_units():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((2000, 3))
    y = X @ np.array([1.0, 2.0, 3.0]) + 0.01 * rng.standard_normal(2000)
    X[:, 0] *= 1e13
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.optim.RankDeficient)
        run = pg.train(pg.models.LinearRegression(), pg.Dataset(X, y), engine="serial", workers=2)
    scaled = np.linalg.lstsq(np.column_stack([X / [1e13, 1, 1], np.ones(2000)]), y, rcond=None)[0]
    assert relative_error(run.params, scaled / [1e13, 1, 1, 1]) <= 1e-9


def test_softmax_under_newton_is_not_said_to_be_singular():
    case = realdata.load("anes96")
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.optim.RankDeficient)
        for l2 in (0.0, 1e-3):
            run = pg.train(pg.models.SoftmaxRegression(l2=l2), pg.Dataset(case.X, case.y), engine="serial")
            assert run.converged and len(run.history) <= 12


def test_digits_softmax_defaults_to_newton_and_converges():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    run = pg.train(pg.models.SoftmaxRegression(l2=1e-3), pg.Dataset(X, y), engine="local", workers=2)
    assert run.converged and len(run.history) <= 12


class StallsAtZero(pg.optim.Optimizer):
    """Reports a stalled search that nonetheless measured zero."""

    name = "stalls"

    def __init__(self) -> None:
        super().__init__(1.0)

    def init(self, params):
        return pg.optim.LeastSquaresState(np.array(0))

    def minimize(self, evaluate, params, state):
        here = evaluate(params)
        return pg.optim.OptimizerStep(params, state, here.loss, here.grad, stalled=True, criterion=0.0)


def test_a_stalled_line_search_is_never_convergence():
    run = pg.train(
        pg.models.LinearRegression(), pg.make_regression(50, 2), optimizer=StallsAtZero(), engine="serial"
    )
    assert not run.converged and run.stopped == "line search stalled"


def test_values_too_large_for_float32_are_refused_when_training_in_float32():
    X = np.random.default_rng(10).standard_normal((40, 2))
    X[7, 1] = 1e20
    data = pg.Dataset(X, (X[:, 0] > 0).astype(float), feature_names=["a", "b"])
    with pytest.raises(pg.DataError, match=r"too large to square in float32.*row 8, 'b'"):
        pg.train(pg.models.LogisticRegression(), data, engine="serial", dtype="float32")


def test_resuming_a_separable_run_with_no_rounds_left_says_so_again(tmp_path):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 2))
    data = pg.Dataset(X, (X[:, 0] > 0).astype(float))
    options = dict(engine="serial", workers=2, epochs=30, checkpoint_dir=tmp_path)
    with pytest.warns(pg.ConvergenceWarning, match="no finite optimum"):
        first = pg.train(pg.models.LogisticRegression(), data, **options)
    with pytest.warns(pg.ConvergenceWarning, match="no finite optimum"):
        again = pg.train(pg.models.LogisticRegression(), data, resume=True, **options)
    assert not first.converged and not again.converged
    np.testing.assert_array_equal(again.params, first.params)
