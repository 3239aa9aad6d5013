"""The scikit-learn estimators: scikit-learn's own checks, pipelines, searches, references."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from paragrad.sklearn import ParagradClassifier, ParagradRegressor

# Checks run on the serial engine (the same code as the local engine, without starting
# processes for each of the hundreds of tiny fits).
CHECKED = [
    ParagradRegressor(engine="serial"),
    ParagradClassifier(engine="serial"),
    ParagradClassifier(engine="serial", model="mlp", epochs=300),
]
# No check is skipped on purpose. scikit-learn itself skips its three array-API checks
# unless SCIPY_ARRAY_API is set.
SKIPPED: dict = {}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda estimator: SKIPPED)
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def test_regressor_matches_ridge_on_the_original_scale():
    X, y = make_regression(300, 5, noise=1.0, random_state=0)
    X = X * [1, 10, 100, 0.1, 3] + 7
    ours = ParagradRegressor(engine="serial", l2=0.5 / 300, standardize=True, tol=1e-10, epochs=500).fit(X, y)
    scaled = StandardScaler().fit(X)
    ridge = Ridge(alpha=0.5).fit(scaled.transform(X), y)
    np.testing.assert_allclose(ours.coef_, ridge.coef_ / scaled.scale_, rtol=1e-6)
    np.testing.assert_allclose(
        ours.intercept_, ridge.intercept_ - scaled.mean_ @ (ridge.coef_ / scaled.scale_), rtol=1e-6
    )
    np.testing.assert_allclose(ours.predict(X), ridge.predict(scaled.transform(X)), rtol=1e-6)


def test_classifier_with_string_labels_on_two_local_workers_matches_scikit_learn():
    X, y = load_breast_cancer(return_X_y=True)
    labels = np.where(y == 1, "benign", "malignant")
    X = StandardScaler().fit_transform(X)
    ours = ParagradClassifier(engine="local", workers=2, l2=1.0 / len(X), tol=1e-9, epochs=500).fit(X, labels)
    reference = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X, labels)
    assert list(ours.classes_) == ["benign", "malignant"]
    np.testing.assert_allclose(ours.coef_, reference.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), atol=1e-6)
    assert ours.score(X, labels) == reference.score(X, labels)


def test_pipeline_and_grid_search():
    X, y = load_digits(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), ParagradClassifier(engine="serial", epochs=200))
    search = GridSearchCV(pipeline, {"paragradclassifier__l2": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.9
    assert search.best_estimator_[-1].coef_.shape == (10, 64)


def test_feature_names_are_kept():
    import pandas as pd

    X, y = make_regression(50, 3, random_state=1)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    model = ParagradRegressor(engine="serial").fit(frame, y)
    assert list(model.feature_names_in_) == ["a", "b", "c"] and model.n_features_in_ == 3
    assert model.model_.feature_names_ == ("a", "b", "c")


def test_sparse_input_trains_without_densifying():
    from paragrad.data import make_sparse_classification

    data = make_sparse_classification(2000, 20_000, density=0.005, seed=0)
    model = ParagradClassifier(engine="serial", workers=2, epochs=50).fit(data.X, data.y)
    dense = ParagradClassifier(engine="serial", workers=2, epochs=50).fit(data.X[:, :2000].toarray(), data.y)
    assert model.coef_.shape == (1, 20_000) and dense.coef_.shape == (1, 2000)
    assert model.score(data.X, data.y) > 0.8
