"""What every model is: a loss and gradient on a shard over one flat parameter vector.

A model returns *sums* over the rows it is given, never means, so that the sums from any
split of the data add up to the sums over the whole of it. The L2 penalty is a separate
function that the coordinator adds once per step, never once per worker.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from paragrad.core.model_file import write_model_file
from paragrad.data import Standardizer, is_sparse, take_rows
from paragrad.data.checks import Features
from paragrad.data.encoding import Encoding
from paragrad.errors import ROWS_FROM_ONE, ConfigError, DataError, in_terms, model_term
from paragrad.models.crossentropy import softmax

if TYPE_CHECKING:
    from paragrad.models.linear_layout import LinearLayout

MAX_CLASSES = 1000


class Model(ABC):
    """Base class of the model families.

    ``__init__`` only stores hyperparameters. :meth:`setup` fixes the shapes from the data
    (feature count, classes); training sets ``params_``. Learned state ends in ``_``.
    """

    name: ClassVar[str]
    is_classifier: ClassVar[bool] = False
    # Whether workers may compute with one model object at the same time (threads): the
    # numpy families' sums are pure functions of (params, rows).
    thread_safe: ClassVar[bool] = True

    def __init__(self, *, l2: float = 0.0) -> None:
        if not np.isfinite(l2) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2}")
        self.l2 = float(l2)
        self.num_features_: int | None = None
        self.classes_: np.ndarray | None = None
        self.params_: np.ndarray | None = None
        self.standardizer_: Standardizer | None = None
        self.feature_names_: tuple[str, ...] | None = None
        self.target_name_: str | None = None
        self.encoding_: Encoding | None = None  # the one-hot columns of the table it learnt from
        # How its training file wrote its cells (decimal mark, encoding), to read files of
        # the same kind the same way when predicting.
        self.read_options_: dict[str, Any] | None = None
        # How the model file stores the parameters (None: float64; "float16", "int8",
        # "sparse": see paragrad.core.model_file.encode_params); params_ hold what it stores.
        self.storage_: str | None = None
        self.stored_: dict[str, np.ndarray] | None = None  # the file's arrays of that form
        # The parameters training may change (None: all): a pruned model keeps its zeros.
        self.trainable_: np.ndarray | None = None

    # -- configuration -------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The hyperparameters, as JSON-compatible values, that rebuild this model."""
        return {"l2": self.l2}

    def setup(
        self,
        num_features: int,
        labels: np.ndarray | None = None,
        *,
        feature_names: tuple[str, ...] | None = None,
        target_name: str | None = None,
    ) -> None:
        """Fix the model's shapes for data with ``num_features`` columns.

        ``labels`` holds the distinct target values seen in the training data (at most
        ``MAX_CLASSES + 1`` of them); classifiers check them and derive ``classes_``.
        """
        self.num_features_ = int(num_features)
        self.classes_ = self._classes_from(labels) if self.is_classifier else None
        self.feature_names_ = feature_names
        self.target_name_ = target_name
        self._weight_mask = self._make_weight_mask()

    def _classes_from(self, labels: np.ndarray | None) -> np.ndarray:
        """The classes: the distinct labels, sorted, in their own type (numbers, text or
        booleans); at least two of them. Training sees each label as its position here."""
        if labels is None:
            raise DataError(f"{model_term(self)} needs labels to train on")
        labels = np.asarray(labels)
        # Distinct and sorted as the set-up pass gives them: a copy, not the caller's array
        labels = np.array(labels) if _distinct_sorted(labels) else np.unique(labels)
        if len(labels) > MAX_CLASSES:
            raise DataError(
                f"{model_term(self)} takes at most {MAX_CLASSES} classes, but the target has "
                f"more than {MAX_CLASSES} distinct values: is it a regression target?"
            )
        if len(labels) < 2:
            raise DataError(
                f"{model_term(self)} needs at least two classes; every label is {_shown(labels[0])}"
            )
        if labels.dtype.kind == "f" and (labels == np.round(labels)).all():
            return labels.astype(np.int64)  # whole numbers read as floats are integer labels
        return labels

    def codes_of(self, y: ArrayLike) -> np.ndarray:
        """Each label's position in ``classes_`` (float64), as training sees it; an error
        names the first label that is not one of the classes."""
        original = classes = self._known_classes()
        y = np.asarray(y)
        if y.dtype.kind in "fiub" and classes.dtype.kind in "fiub":
            y, classes = y.astype(np.float64), classes.astype(np.float64)
        elif y.dtype.kind != classes.dtype.kind:  # text against numbers: compare as text
            y, classes = y.astype(str), np.array([str(value) for value in classes])
        order = np.argsort(classes, kind="stable")
        places = np.clip(np.searchsorted(classes[order], y), 0, len(classes) - 1)
        codes = order[places]
        known = classes[codes] == y
        if not np.all(known):
            row = int(np.argmin(known))
            shown = ", ".join(_shown(value) for value in original[:10])
            raise DataError(
                f"label {_shown(y[row])} at row {row + 1} is not one of the model's classes ({shown}); "
                + ROWS_FROM_ONE
            )
        return codes.astype(np.float64)

    def _known_classes(self) -> np.ndarray:
        """``classes_``; an error for a model without them (a regressor, or untrained)."""
        if self.classes_ is None:
            raise ConfigError(f"this {type(self).__name__} has no classes")
        return self.classes_

    @property
    def num_classes(self) -> int:
        return 0 if self.classes_ is None else len(self.classes_)

    @property
    @abstractmethod
    def num_params(self) -> int:
        """Length of the flat parameter vector."""

    def init_params(self, seed: int = 0) -> np.ndarray:
        """Starting parameters; zeros unless the family needs random ones."""
        return np.zeros(self.num_params)

    def _make_weight_mask(self) -> np.ndarray:
        """True where a parameter is a weight (penalised), False for intercepts."""
        return np.ones(self.num_params, dtype=bool)

    # -- the maths -----------------------------------------------------------------------

    @abstractmethod
    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss sum and gradient sum over the rows of ``X`` (float64 gradient)."""

    def take_rows(self, X: Features, rows: slice | np.ndarray) -> Features:
        """A batch's rows of ``X``, as :meth:`loss_grad` takes them."""
        return take_rows(X, rows)

    def restrict(self, grad: np.ndarray) -> np.ndarray:
        """``grad`` with the entries of fixed parameters set to zero (see ``trainable_``), so
        that every first-order step leaves them where they are."""
        return grad if self.trainable_ is None else np.where(self.trainable_, grad, 0.0)

    def weight_matrices(self) -> list[tuple[int, int, int]]:
        """The weight matrices in the flat parameter vector, as (offset, rows, columns) with
        one column per output unit; the other parameters are intercepts."""
        raise ConfigError(f"{type(self).__name__} does not describe its weight matrices")

    def penalty(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """The L2 term ``l2/2 * ||weights||^2`` and its gradient; intercepts are free."""
        grad = np.zeros(len(params))
        if self.l2 == 0.0:
            return 0.0, grad
        weights = np.where(self._weight_mask, params, 0.0)
        grad[:] = self.l2 * weights
        return 0.5 * self.l2 * float(weights @ weights), grad

    def penalty_hessian(self, params: np.ndarray) -> np.ndarray:
        """Diagonal of the L2 term's Hessian: ``l2`` on weights, 0 on intercepts; the term
        is separable, so Newton's method adds this vector to the diagonal of the data Hessian.
        """
        return np.where(self._weight_mask, self.l2, 0.0)

    def flat_directions(self) -> np.ndarray:
        """Directions (rows) along which the objective never changes: none, unless a family
        is over-parameterised. Newton's method gives them curvature so that its system is
        definite; the gradient has no component along them."""
        return np.zeros((0, self.num_params))

    def without_flat(self, hessian: np.ndarray) -> np.ndarray:
        """The Hessian with any part along :meth:`flat_directions` taken off (none here)."""
        return hessian

    @abstractmethod
    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Raw outputs: predictions for regression, scores or logits for classifiers."""

    # -- the trained model ---------------------------------------------------------------

    @property
    def params(self) -> np.ndarray:
        """The trained flat parameter vector."""
        return self._trained_params()

    def _check_trained(self) -> None:
        self._trained_params()

    def _trained_params(self) -> np.ndarray:
        if self.params_ is None:
            raise ConfigError(f"this {type(self).__name__} has not been trained yet")
        return self.params_

    def prepare(self, X: Features) -> Features:
        """Validate features for prediction and apply the training standardisation."""
        self._check_trained()
        if is_sparse(X):
            if X.shape[1] != self.num_features_:
                raise DataError(
                    f"X has {X.shape[1]} features, but the model was trained with {self.num_features_}"
                )
            if self.standardizer_ is not None:
                raise DataError("a model trained on standardised features cannot take sparse input")
            return X.tocsr() if np.issubdtype(X.dtype, np.floating) else X.tocsr().astype(np.float64)
        X = np.asarray(X)
        if X.ndim == 1 and self.num_features_ == len(X):
            X = X[None, :]
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows x features), got shape {X.shape}")
        if X.shape[1] != self.num_features_:
            raise DataError(
                f"X has {X.shape[1]} features, but the model was trained with {self.num_features_}"
            )
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if self.standardizer_ is not None:
            X = self.standardizer_.transform(X)
        return X

    def predict(self, X: Features) -> np.ndarray:
        """Predicted targets (regression) or class labels (classification)."""
        return self.decision_function(self.params, self.prepare(X))

    def predict_proba(self, X: Features) -> np.ndarray:
        """Class probabilities: only a :class:`Classifier` has them."""
        raise ConfigError(f"predict_proba needs a classifier; this {type(self).__name__} does regression")

    def loss(self, X: Features, y: ArrayLike) -> float:
        """Mean data loss of the trained model on ``(X, y)``, without the penalty."""
        X = self.prepare(X)
        y = self.codes_of(y) if self.is_classifier else _numeric_target(y)
        return self.loss_grad(self.params, X, y)[0] / X.shape[0]

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained model to ``path`` as a model file for :func:`paragrad.load_model`."""
        params = self.params
        meta = {
            "family": self.name,
            "config": self.get_config(),
            "num_features": self.num_features_,
            "classes": None if self.classes_ is None else self.classes_.tolist(),
            "feature_names": None if self.feature_names_ is None else list(self.feature_names_),
            "target_name": self.target_name_,
        }
        if self.encoding_ is not None:  # predicting encodes new tables the same way
            meta["encoding"] = self.encoding_.to_json()
        if self.read_options_:
            meta["read_options"] = dict(self.read_options_)
        write_model_file(path, meta, params, self.standardizer_, self.storage_, self.stored_)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _shown(value: object) -> str:
    """A label as a person would write it: ``2`` for 2.0, ``'yes'`` for text."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return f"{float(value):g}"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _numeric_target(y: ArrayLike) -> np.ndarray:
    """A regression target as float64; text or booleans are refused by name."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiu":
        raise DataError(
            f"a regression model needs numeric targets, got values of type {y.dtype}: "
            + in_terms(
                "use a classifier (LogisticRegression or SoftmaxRegression) for labels",
                "use --model logistic or softmax for labels",
            )
        )
    return y.astype(np.float64)


def check_class_labels(model: Model, y: np.ndarray) -> None:
    """Reject labels that are not among the classes the model was trained with."""
    model.codes_of(y)


class Classifier(Model):
    """A model whose outputs are class probabilities."""

    is_classifier = True

    def proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (rows, classes)."""
        return self.proba_from(self.decision_function(params, X))

    def proba_from(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities from the raw scores of :meth:`decision_function` (a softmax
        of the logits), so that labels and probabilities come from one pass."""
        return softmax(scores)

    def predict_proba(self, X: Features) -> np.ndarray:
        """Probability of each class, shape (rows, classes), columns in ``classes_`` order."""
        return self.proba(self.params, self.prepare(X))

    def predict(self, X: Features) -> np.ndarray:
        """Class labels."""
        return self.labels_from(self.decision_function(self.params, self.prepare(X)))

    def labels_from(self, scores: np.ndarray) -> np.ndarray:
        """Class labels from the raw scores of :meth:`decision_function`."""
        return self._known_classes()[np.argmax(scores, axis=1)]


def _distinct_sorted(values: np.ndarray) -> bool:
    """Whether ``values`` (numbers) are distinct and in increasing order, as np.unique gives them."""
    return values.ndim == 1 and values.dtype.kind in "iuf" and bool((values[1:] > values[:-1]).all())


def features_of(model: Model | LinearLayout) -> int:
    """The feature count that ``setup`` fixed; an error for a model not yet set up."""
    if model.num_features_ is None:
        raise ConfigError(f"this {type(model).__name__} has not been set up for data yet: train it first")
    return model.num_features_


def __getattr__(name: str) -> Any:
    """``LinearLayout`` and its block sizes, which lived here before
    :mod:`paragrad.models.linear_layout` (a family written against this module still imports)."""
    if name in ("LinearLayout", "block_rows", "BLOCK_BYTES"):
        from paragrad.models import linear_layout

        return getattr(linear_layout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
