"""Model maths: gradients against finite differences, exact additivity over shards, stability."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest

import paragrad as pg
from paragrad.models import (
    MLP,
    Classifier,
    LinearRegression,
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    get_model,
)


def make_model(kind: str):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    if kind == "linear":
        model, y = LinearRegression(l2=0.3), rng.standard_normal(40)
    elif kind == "linear-no-intercept":
        model, y = LinearRegression(l2=0.3, fit_intercept=False), rng.standard_normal(40)
    elif kind == "logistic":
        model, y = LogisticRegression(l2=0.1), rng.integers(0, 2, 40).astype(float)
    elif kind == "softmax":
        model, y = SoftmaxRegression(l2=0.1), rng.integers(0, 4, 40).astype(float)
    elif kind == "mlp-tanh":
        model, y = MLP(hidden=(7, 4), activation="tanh", l2=0.05), rng.integers(0, 3, 40).astype(float)
    elif kind == "mlp-relu":
        model, y = MLP(hidden=(6,), activation="relu", l2=0.05), rng.integers(0, 3, 40).astype(float)
    else:
        model, y = MLP(hidden=(5,), activation="tanh", task="regression"), rng.standard_normal(40)
    labels = np.unique(y) if model.is_classifier else None
    model.setup(X.shape[1], labels)
    params = model.init_params(seed=1) + 0.3 * rng.standard_normal(model.num_params)
    return model, params, X, y


KINDS = ["linear", "linear-no-intercept", "logistic", "softmax", "mlp-tanh", "mlp-relu", "mlp-regression"]


def objective(model, params, X, y) -> float:
    return model.loss_grad(params, X, y)[0] / len(X) + model.penalty(params)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_central_finite_differences(kind):
    model, params, X, y = make_model(kind)
    _loss, grad = model.loss_grad(params, X, y)
    grad = grad / len(X) + model.penalty(params)[1]
    step = 1e-6
    numeric = np.empty_like(params)
    for i in range(len(params)):
        e = np.zeros_like(params)
        e[i] = step
        numeric[i] = (objective(model, params + e, X, y) - objective(model, params - e, X, y)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_gradient_sums_add_up_over_uneven_shards(kind):
    model, params, X, y = make_model(kind)
    whole_loss, whole_grad = model.loss_grad(params, X, y)
    parts = [model.loss_grad(params, X[rows], y[rows]) for rows in np.array_split(np.arange(40), 3)]
    assert sum(loss for loss, _ in parts) == pytest.approx(whole_loss, rel=1e-13)
    np.testing.assert_allclose(sum(grad for _, grad in parts), whole_grad, rtol=1e-12, atol=1e-12)


def test_penalty_leaves_intercepts_free():
    model, params, _, _ = make_model("softmax")
    value, grad = model.penalty(params)
    W, _ = model.split(params)
    assert value == pytest.approx(0.5 * 0.1 * np.sum(W**2))
    np.testing.assert_array_equal(grad[W.size :], 0.0)
    mlp, mlp_params, _, _ = make_model("mlp-tanh")
    grad = mlp.penalty(mlp_params)[1]
    for (W, _b), (gW, gb) in zip(mlp.layers(mlp_params), mlp.layers(grad), strict=True):
        np.testing.assert_allclose(gW, 0.05 * W)
        np.testing.assert_array_equal(gb, 0.0)


def test_logistic_is_stable_for_huge_logits():
    model = LogisticRegression()
    model.setup(1, np.array([0.0, 1.0]))
    X = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    params = np.array([1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = model.loss_grad(params, X, y)
        model.params_ = params
        proba = model.predict_proba(X)
    assert loss == pytest.approx(2e4)
    np.testing.assert_allclose(grad, [2e4, 0.0])
    np.testing.assert_array_equal(proba[:, 1], [1.0, 0.0, 1.0, 0.0])


def test_softmax_is_stable_for_huge_logits():
    model = SoftmaxRegression()
    model.setup(1, np.array([0.0, 1.0, 2.0]))
    params = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    X = np.array([[1e4], [-1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = model.loss_grad(params, X, np.array([0.0, 0.0]))
    assert loss == pytest.approx(2e4)
    assert np.isfinite(grad).all()


def test_classifier_predictions_and_probabilities():
    model, params, X, _ = make_model("softmax")
    model.params_ = params
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(X), np.argmax(proba, axis=1))
    with pytest.raises(pg.DataError, match="X has 3 features, but the model was trained with 5"):
        model.predict(X[:, :3])


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        (LogisticRegression(), [0.0, 1.0, 2.0], "takes two classes, but the target has 3"),
        (LogisticRegression(), [1.0], "at least two classes; every label is 1"),
        (LogisticRegression(), ["yes"], "at least two classes; every label is 'yes'"),
        (SoftmaxRegression(num_classes=3), [1.0, 3.0], "num_classes=3 declares labels 0..2; found 1, 3"),
        (SoftmaxRegression(num_classes=3), ["a", "b"], "num_classes=3 declares labels 0..2"),
        (MLP(), np.arange(1500.0), "more than 1000 distinct values"),
    ],
)
def test_labels_that_do_not_fit_the_model_are_refused(model, labels, message):
    with pytest.raises(pg.DataError, match=message):
        model.setup(2, np.asarray(labels))


def test_bad_hyperparameters_are_refused():
    with pytest.raises(pg.ConfigError, match="l2 must be a non-negative"):
        LinearRegression(l2=-1)
    with pytest.raises(pg.ConfigError, match="activation must be one of relu, tanh"):
        MLP(activation="sigmoid")
    with pytest.raises(
        pg.ConfigError, match="unknown model 'tree'; choose one of linear, logistic, softmax, mlp"
    ):
        get_model("tree")


def test_untrained_model_says_so():
    with pytest.raises(pg.ConfigError, match="has not been trained yet"):
        LinearRegression().predict(np.ones((1, 1)))


def test_mlp_task_picks_a_regressor_or_a_classifier_class():
    regressor, classifier = MLP(task="regression"), MLP()
    assert type(regressor) is MLP and not isinstance(regressor, Classifier)
    assert type(classifier) is MLPClassifier and isinstance(classifier, MLP)
    assert not regressor.is_classifier and classifier.is_classifier
    assert "is_classifier" not in vars(regressor) and "is_classifier" not in vars(classifier)
    assert type(MLP((3,), "tanh", "regression")) is MLP
    assert type(get_model("mlp")(**regressor.get_config())) is MLP
    with pytest.raises(pg.ConfigError, match="MLPClassifier does classification, not regression"):
        MLPClassifier(task="regression")


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_copies_of_an_mlp_keep_its_class(task):
    model = MLP(hidden=(3,), task=task)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(copied) is type(model) and copied.get_config() == model.get_config()


def test_a_regressor_has_no_class_probabilities():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3))
    model = MLP(hidden=(4,), task="regression")
    model.setup(3)
    model.params_ = model.init_params(0)
    assert model.predict(X).shape == (20,)
    with pytest.raises(pg.ConfigError, match="predict_proba needs a classifier; this MLP does regression"):
        model.predict_proba(X)


# -- Hessian sums for Newton's method ---------------------------------------------------

HESSIAN_KINDS = [
    (family, intercept) for family in ("linear", "logistic", "softmax") for intercept in (True, False)
]


@pytest.fixture(params=["small data", "block loop"])
def sums(request, monkeypatch) -> str:
    """How the one-output families sum small dense data: with a column of ones (as they
    do), or by the block loop that larger data takes."""
    from paragrad.models import linear_layout

    if request.param == "block loop":
        monkeypatch.setattr(linear_layout, "SMALL_BLOCK_ROWS", 0)
    return request.param


ONE_OUTPUT_KINDS = [(family, intercept) for family, intercept in HESSIAN_KINDS if family != "softmax"]


def make_linear_family(family: str, fit_intercept: bool, rows: int = 40):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows, 5))
    if family == "linear":
        model, y = LinearRegression(l2=0.3, fit_intercept=fit_intercept), rng.standard_normal(rows)
    elif family == "logistic":
        model, y = LogisticRegression(l2=0.1, fit_intercept=fit_intercept), rng.integers(0, 2, rows)
    else:
        model, y = SoftmaxRegression(l2=0.1, fit_intercept=fit_intercept), rng.integers(0, 4, rows)
    y = y.astype(float)
    model.setup(X.shape[1], np.unique(y) if model.is_classifier else None)
    params = 0.5 * rng.standard_normal(model.num_params)
    return model, params, X, y


def reference_hessian(model, params, X, y) -> np.ndarray:
    """``sum_i kron(a_i a_i^T, S_i)`` row by row, S_i the Hessian of row i's loss in its outputs."""
    A = np.column_stack([X, np.ones(len(X))]) if model.fit_intercept else X
    Z = model.outputs(params, X)
    if isinstance(model, LinearRegression):
        S = np.ones((len(X), 1, 1))
    elif isinstance(model, LogisticRegression):
        p = 1.0 / (1.0 + np.exp(-Z[:, 0]))
        S = (p * (1.0 - p))[:, None, None]
    else:
        P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
        S = np.stack([np.diag(p) - np.outer(p, p) for p in P])
    return sum(np.kron(np.outer(a, a), s) for a, s in zip(A, S, strict=True))


def assert_same_hessian(actual, expected, rtol):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize(("family", "fit_intercept"), HESSIAN_KINDS)
def test_hessian_sum_matches_finite_differences_of_the_gradient_sum(family, fit_intercept, sums):
    # Prepare
    model, params, X, y = make_linear_family(family, fit_intercept)
    step = 1e-5
    numeric = np.empty((model.num_params, model.num_params))
    for i in range(model.num_params):
        e = np.zeros_like(params)
        e[i] = step
        numeric[:, i] = (model.loss_grad(params + e, X, y)[1] - model.loss_grad(params - e, X, y)[1]) / (
            2 * step
        )
    # Execute
    _loss, _grad, hess = model.loss_grad_hess(params, X, y)
    # Assert
    assert hess.shape == (model.num_params, model.num_params) and hess.dtype == np.float64
    assert_same_hessian(hess, numeric, rtol=1e-6)
    assert_same_hessian(hess, reference_hessian(model, params, X, y), rtol=1e-12)
    np.testing.assert_array_equal(hess, hess.T)


@pytest.mark.parametrize(("family", "fit_intercept"), HESSIAN_KINDS)
def test_hessian_call_returns_the_loss_and_gradient_of_loss_grad_bit_for_bit(family, fit_intercept, sums):
    # Prepare
    model, params, X, y = make_linear_family(family, fit_intercept)
    # Execute
    loss, grad, _hess = model.loss_grad_hess(params, X, y)
    # Assert
    expected_loss, expected_grad = model.loss_grad(params, X, y)
    assert loss == expected_loss
    np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize(("family", "fit_intercept"), ONE_OUTPUT_KINDS)
@pytest.mark.parametrize("rows", [8, 40, 1024])
def test_small_data_is_summed_as_the_block_loop_sums_it(family, fit_intercept, rows, monkeypatch):
    """Small dense data is summed with a column of ones, in a few products: the block
    loop's loss, gradient and Hessian to round-off."""
    # Prepare
    from paragrad.models import linear_layout

    model, params, X, y = make_linear_family(family, fit_intercept, rows=rows)
    assert linear_layout._small_dense(X)
    small = model.loss_grad_hess(params, X, y)
    monkeypatch.setattr(linear_layout, "SMALL_BLOCK_ROWS", 0)
    assert not linear_layout._small_dense(X)
    # Execute
    loss, grad, hess = model.loss_grad_hess(params, X, y)
    # Assert
    assert small[0] == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(small[1], grad, rtol=1e-12, atol=1e-12 * np.abs(grad).max())
    assert_same_hessian(small[2], hess, rtol=1e-12)
    np.testing.assert_array_equal(small[2], small[2].T)


def test_a_subclass_with_a_loss_of_its_own_gets_it_in_newtons_sums(sums):
    """A family's fused loss and curvature give way to a subclass's own loss (weighted,
    or distilled): the Hessian pass measures the loss the gradient pass does."""

    class Weighted(LogisticRegression):
        def output_loss(self, Z, y):
            loss, dZ = super().output_loss(Z, y)
            return 3.0 * loss, 3.0 * dZ

    model, params, X, y = make_linear_family("logistic", True)
    weighted = Weighted(l2=model.l2)
    weighted.setup(X.shape[1], np.array([0, 1]))

    loss, grad, _ = weighted.loss_grad_hess(params, X, y)

    assert loss == weighted.loss_grad(params, X, y)[0] == 3.0 * model.loss_grad(params, X, y)[0]
    np.testing.assert_array_equal(grad, weighted.loss_grad(params, X, y)[1])


def test_infinite_logits_on_their_side_of_the_boundary_lose_nothing():
    model = LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dZ = model.output_loss(np.array([[np.inf], [-np.inf]]), np.array([1.0, 0.0]))
    assert loss == 0.0 and np.array_equal(dZ, np.zeros((2, 1)))


def test_the_linear_layout_still_imports_from_the_base_module():
    from paragrad.models.base import LinearLayout as before
    from paragrad.models.linear_layout import LinearLayout

    assert before is LinearLayout


@pytest.mark.parametrize(("family", "fit_intercept"), HESSIAN_KINDS)
def test_hessian_sums_add_up_over_row_splits(family, fit_intercept, sums):
    # Prepare
    model, params, X, y = make_linear_family(family, fit_intercept)
    # Execute
    whole = model.loss_grad_hess(params, X, y)[2]
    parts = [model.loss_grad_hess(params, X[rows], y[rows])[2] for rows in (slice(0, 17), slice(17, 40))]
    # Assert
    assert_same_hessian(parts[0] + parts[1], whole, rtol=1e-12)


@pytest.mark.parametrize("family", ["linear", "logistic", "softmax"])
def test_hessian_is_the_same_over_many_blocks(family, monkeypatch):
    # Prepare: blocks of 64 rows, so 300 rows take five of them (not the small data's sums)
    from paragrad.models import linear_layout

    monkeypatch.setattr(linear_layout, "SMALL_BLOCK_ROWS", 0)
    model, params, X, y = make_linear_family(family, True, rows=300)
    one_block = model.loss_grad_hess(params, X, y)
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    # Execute
    loss, grad, hess = model.loss_grad_hess(params, X, y)
    # Assert
    assert loss == model.loss_grad(params, X, y)[0]
    np.testing.assert_array_equal(grad, model.loss_grad(params, X, y)[1])
    assert_same_hessian(hess, one_block[2], rtol=1e-12)
    np.testing.assert_array_equal(hess, hess.T)


@pytest.mark.parametrize(("family", "fit_intercept"), HESSIAN_KINDS)
def test_hessian_of_float32_data_is_close_to_float64(family, fit_intercept):
    # Prepare
    model, params, X, y = make_linear_family(family, fit_intercept, rows=500)
    # Execute
    hess32 = model.loss_grad_hess(params, X.astype(np.float32), y)[2]
    # Assert
    assert hess32.dtype == np.float64
    assert_same_hessian(hess32, model.loss_grad_hess(params, X, y)[2], rtol=1e-5)


@pytest.mark.parametrize(("family", "fit_intercept"), HESSIAN_KINDS)
def test_hessian_of_csr_data_equals_dense(family, fit_intercept, monkeypatch):
    # Prepare: a sparse matrix densified 64 rows at a time
    import scipy.sparse as sp

    from paragrad.models import linear_layout

    model, params, X, y = make_linear_family(family, fit_intercept, rows=200)
    X[np.abs(X) < 0.8] = 0.0
    monkeypatch.setattr(linear_layout, "BLOCK_BYTES", 1)
    # Execute
    loss, grad, hess = model.loss_grad_hess(params, sp.csr_matrix(X), y)
    # Assert
    dense_loss, dense_grad, dense_hess = model.loss_grad_hess(params, X, y)
    assert loss == pytest.approx(dense_loss, rel=1e-13)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-12, atol=1e-12)
    assert_same_hessian(hess, dense_hess, rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "linear-no-intercept", "softmax", "mlp-tanh"])
def test_penalty_hessian_matches_finite_differences_of_the_penalty_gradient(kind):
    # Prepare
    model, params, _, _ = make_model(kind)
    step = 1e-6
    numeric = np.empty((len(params), len(params)))
    for i in range(len(params)):
        e = np.zeros_like(params)
        e[i] = step
        numeric[:, i] = (model.penalty(params + e)[1] - model.penalty(params - e)[1]) / (2 * step)
    # Execute
    diagonal = model.penalty_hessian(params)
    # Assert
    np.testing.assert_allclose(np.diag(diagonal), numeric, atol=1e-9)
    assert diagonal.dtype == np.float64 and set(np.unique(diagonal)) <= {0.0, model.l2}


def labelled(num_classes: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and class codes 0..num_classes-1 (every class present)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((rows, 3))
    return X, (np.arange(rows) % num_classes).astype(float)


@pytest.mark.parametrize(
    "labels",
    [["no", "yes"], [-1, 1], [1, 2], [False, True], [0.5, 1.5]],
    ids=["text", "minus-one-one", "one-two", "booleans", "fractions"],
)
def test_labels_of_any_kind_train_the_same_parameters_as_codes(labels):
    X, codes = labelled(2, 120)
    reference = pg.train(LogisticRegression(l2=0.1), pg.Dataset(X, codes), engine="serial").params
    y = np.asarray(labels)[codes.astype(int)]

    model = LogisticRegression(l2=0.1)
    pg.train(model, pg.Dataset(X, y), engine="serial")

    np.testing.assert_allclose(model.params, reference, rtol=1e-10, atol=1e-12)
    assert model.classes_.tolist() == labels
    positive = model.predict_proba(X)[:, 1] > 0.5
    np.testing.assert_array_equal(model.predict(X), np.asarray(labels)[positive.astype(int)])
    assert type(model.predict(X[:1])[0].item()) is type(labels[0])


def test_softmax_labels_are_sorted_classes_in_their_own_type():
    X, codes = labelled(4, 150)
    y = np.array(["c", "a", "b", "d"])[codes.astype(int)]

    model = SoftmaxRegression(l2=0.1)
    pg.train(model, pg.Dataset(X, y), engine="serial")

    assert model.classes_.tolist() == sorted(set(y.tolist()))
    assert set(model.predict(X).tolist()) <= set(y.tolist())
    assert model.loss(X, y) < np.log(len(model.classes_))


def test_unknown_labels_and_text_regression_targets_are_refused():
    X, codes = labelled(2, 50)
    y = np.where(codes > 0, "yes", "no")
    model = LogisticRegression()
    pg.train(model, pg.Dataset(X, y), engine="serial")

    unknown = r"label 'maybe' at row 2 is not one of the model's classes \('no', 'yes'\)"
    with pytest.raises(pg.DataError, match=unknown):
        model.loss(X[:2], ["no", "maybe"])
    with pytest.raises(pg.DataError, match="LinearRegression needs a numeric target, but it holds labels"):
        pg.train(LinearRegression(), pg.Dataset(X, y), engine="serial")


def _trained_like(model, rng, num_features: int):
    """A model with random parameters, set up for ``num_features`` and three classes."""
    labels = np.array(["a", "b", "c"]) if isinstance(model, Classifier) else None
    if isinstance(model, LogisticRegression):
        labels = np.array([-1, 1])
    model.setup(num_features, labels)
    model.params_ = 0.3 * rng.standard_normal(model.num_params)
    return model


@pytest.mark.parametrize("num_features", [1, 7, 33, 100, 257])
@pytest.mark.parametrize(
    "make",
    [
        LinearRegression,
        LogisticRegression,
        SoftmaxRegression,
        lambda: MLP(hidden=(40,), task="regression"),
        lambda: MLP(hidden=(128, 16)),
        lambda: MLP(hidden=(512,), activation="tanh"),
    ],
)
def test_a_rows_prediction_does_not_depend_on_the_rows_predicted_with_it(make, num_features):
    # A server batches requests and workers predict shards of any size: every row must come
    # out bit for bit as when it is predicted alone.
    rng = np.random.default_rng(num_features)
    model = _trained_like(make(), rng, num_features)
    X = rng.standard_normal((300, num_features))
    outputs = model.predict_proba if model.is_classifier else model.predict
    together = outputs(X)
    for start, count in [(0, 1), (5, 1), (3, 2), (17, 5), (40, 64), (100, 200), (299, 1)]:
        alone = outputs(X[start : start + count].copy())
        np.testing.assert_array_equal(alone, together[start : start + count])
    np.testing.assert_array_equal(model.predict(X[7:8]), model.predict(X)[7:8])
