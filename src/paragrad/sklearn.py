"""scikit-learn estimators over paragrad: use data-parallel training in pipelines and searches.

``ParagradRegressor`` and ``ParagradClassifier`` follow scikit-learn's conventions:
``__init__`` stores the parameters, ``fit`` validates the data and returns ``self``, and
learned state ends in ``_``. Classifiers accept any labels (strings, -1/1, ...) and map
them to ``0..k-1`` for the models. Needs scikit-learn (``pip install 'paragrad[svmlight]'``
or ``'paragrad[dev]'``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from paragrad.core.shards import default_workers
from paragrad.data import Dataset
from paragrad.errors import ConfigError
from paragrad.models import MLP, LinearRegression, LogisticRegression, Model, SoftmaxRegression
from paragrad.models.linear_layout import LinearLayout
from paragrad.optim import Optimizer, get_optimizer
from paragrad.training.elastic import Workers
from paragrad.training.strategies import Strategy, get_strategy
from paragrad.training.trainer import train


class _ParagradEstimator(BaseEstimator):
    """What both estimators share: the parameters and the training call."""

    # Set by fit for linear models; a regressor's intercept is a float.
    coef_: np.ndarray
    intercept_: np.ndarray | float

    def __init__(
        self,
        model: str | Model = "linear",
        strategy: str | Strategy = "gd",
        optimizer: str | Optimizer | None = None,
        engine: str = "auto",
        workers: Workers = None,
        epochs: int = 100,
        seed: int = 0,
        l2: float = 0.0,
        tol: float = 1e-6,
        standardize: bool = False,
    ) -> None:
        self.model = model
        self.strategy = strategy
        self.optimizer = optimizer
        self.engine = engine
        self.workers = workers
        self.epochs = epochs
        self.seed = seed
        self.l2 = l2
        self.tol = tol
        self.standardize = standardize

    def _make_model(self, num_classes: int | None) -> Model:
        raise NotImplementedError

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR features train without being densified
        return tags

    def _fit(self, X: Any, y: np.ndarray, num_classes: int | None) -> _ParagradEstimator:
        model = self._make_model(num_classes)
        strategy = (
            get_strategy(self.strategy) if isinstance(self.strategy, str) else copy.deepcopy(self.strategy)
        )
        optimizer = self.optimizer
        if isinstance(optimizer, str):
            optimizer = get_optimizer(optimizer)
        workers = self.workers  # (min, max) and "auto" never go past the rows themselves
        if isinstance(workers, int) or (workers is None and self.engine != "auto"):
            workers = min(workers or default_workers(), X.shape[0])
        names = getattr(self, "feature_names_in_", None)
        data = Dataset(X, y, None if names is None else [str(n) for n in names])
        self.run_ = train(
            model,
            data,
            strategy=strategy,
            optimizer=copy.deepcopy(optimizer),
            engine=self.engine,
            workers=workers,
            epochs=self.epochs,
            tol=self.tol,
            seed=self.seed,
            standardize=self.standardize,
            progress=False,
        )
        self.model_ = self.run_.model
        self.n_iter_ = len(self.run_.history)
        for name in ("coef_", "intercept_"):
            self.__dict__.pop(name, None)
        coefficients = _linear_coefficients(self.model_)
        if coefficients is not None:
            self.coef_, self.intercept_ = coefficients
        return self

    def _validated(self, X: Any) -> Any:
        check_is_fitted(self, "model_")
        return validate_data(self, X, reset=False, accept_sparse="csr", dtype=[np.float64, np.float32])


class ParagradRegressor(RegressorMixin, _ParagradEstimator):
    """Regression by data-parallel training: ``model`` is ``"linear"``, ``"mlp"`` or a model.

    Parameters
    ----------
    model : {"linear", "mlp"} or Model
    strategy : {"gd", "sgd", "local-sgd"} or Strategy
    optimizer : {"sgd", "adam", "lbfgs"}, Optimizer or None (the trainer's default)
    engine : {"serial", "local"}
    workers, epochs, seed, tol, standardize
        As for :func:`paragrad.train` (a worker count is capped at the number of rows;
        ``(min, max)`` and ``"auto"`` make the fit elastic).
    l2 : float
        L2 penalty of a model named by string.
    """

    def _make_model(self, num_classes: int | None) -> Model:
        if isinstance(self.model, Model):
            return copy.deepcopy(self.model)
        if self.model == "linear":
            return LinearRegression(l2=self.l2)
        if self.model == "mlp":
            return MLP(task="regression", l2=self.l2)
        raise ConfigError(f"model must be 'linear', 'mlp' or a paragrad model, got {self.model!r}")

    def fit(self, X: Any, y: ArrayLike) -> ParagradRegressor:
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32], y_numeric=True)
        self._fit(X, np.asarray(y, dtype=np.float64), None)  # float32 features keep their type if y fits
        if hasattr(self, "coef_"):
            self.coef_, self.intercept_ = self.coef_[0], float(np.ravel(self.intercept_)[0])
        return self

    def predict(self, X: Any) -> np.ndarray:
        X = self._validated(X)
        return self.model_.predict(X)


class ParagradClassifier(ClassifierMixin, _ParagradEstimator):
    """Classification by data-parallel training.

    ``model="linear"`` picks logistic regression for two classes and softmax regression
    for more; ``"mlp"`` a neural network; or pass a paragrad model. Labels may be of any
    type; ``classes_`` holds them in sorted order.
    """

    def _make_model(self, num_classes: int | None) -> Model:
        if isinstance(self.model, Model):
            return copy.deepcopy(self.model)
        if self.model == "linear":
            return LogisticRegression(l2=self.l2) if num_classes == 2 else SoftmaxRegression(l2=self.l2)
        if self.model == "mlp":
            return MLP(task="classification", l2=self.l2)
        raise ConfigError(f"model must be 'linear', 'mlp' or a paragrad model, got {self.model!r}")

    def fit(self, X: Any, y: ArrayLike) -> ParagradClassifier:
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least two classes; got one class, {self.classes_[0]!r}")
        self._fit(X, encoder.transform(y).astype(X.dtype), len(self.classes_))
        if hasattr(self, "coef_") and len(self.classes_) == 2 and self.coef_.shape[0] == 1:
            self.intercept_ = np.ravel(self.intercept_)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._validated(X)
        return self.model_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def decision_function(self, X: Any) -> np.ndarray:
        X = self._validated(X)
        scores = self.model_.decision_function(self.model_.params, self.model_.prepare(X))
        if scores.ndim == 2 and scores.shape[1] == 2:  # two classes: one score, as scikit-learn has it
            return scores[:, 1] - scores[:, 0]
        return scores

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = False
        return tags


def _linear_coefficients(model: Model) -> tuple[np.ndarray, np.ndarray] | None:
    """A linear model's weights and intercepts on the original feature scale (undoing
    standardisation); None for other models."""
    if not isinstance(model, LinearLayout):
        return None
    W, b = model.split(model.params)
    W, intercepts = W.copy(), np.array(b, dtype=float).copy() if model.fit_intercept else np.zeros(W.shape[1])
    if model.standardizer_ is not None:
        scale, mean = model.standardizer_.scale, model.standardizer_.mean
        W = W / scale[:, None]
        intercepts = intercepts - mean @ W
    return W.T, intercepts
