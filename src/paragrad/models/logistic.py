"""Binary logistic regression on two classes (coded 0 and 1), stable for any size of logit."""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.errors import DataError, in_terms, model_term
from paragrad.models.base import Classifier
from paragrad.models.linear_layout import LinearLayout


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow, accurate in both tails."""
    return sigmoid_from(z, np.exp(-np.abs(z)))


def sigmoid_from(z: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """The sigmoid of ``z`` given ``tail = exp(-|z|)`` (in (0, 1], so nothing overflows):
    ``1 / (1 + tail)`` for ``z >= 0``, ``tail / (1 + tail)`` below."""
    return np.where(z >= 0, 1.0, tail) / (1.0 + tail)


class LogisticRegression(LinearLayout, Classifier):
    """Logistic regression; objective ``mean(log(1 + e^z) - y z) + l2/2 ||w||^2``.

    scikit-learn's ``LogisticRegression(C=C)`` on m rows is the same problem with
    ``l2 = 1 / (C m)``.
    """

    name = "logistic"

    def __init__(self, l2: float = 0.0, *, fit_intercept: bool = True) -> None:
        super().__init__(l2=l2)
        self.fit_intercept = bool(fit_intercept)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2, "fit_intercept": self.fit_intercept}

    def _classes_from(self, labels: np.ndarray | None) -> np.ndarray:
        classes = super()._classes_from(labels)
        if len(classes) > 2:
            raise DataError(
                f"{model_term(self)} takes two classes, but the target has {len(classes)}: "
                + in_terms("use SoftmaxRegression for more classes", "use --model softmax for more classes")
            )
        return classes

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.outputs(params, X)[:, 0]

    def labels_from(self, scores: np.ndarray) -> np.ndarray:
        return self._known_classes()[(scores > 0).astype(np.intp)]

    def proba_from(self, scores: np.ndarray) -> np.ndarray:
        p = sigmoid(scores)
        return np.column_stack([1.0 - p, p])

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        loss, dZ, _ = self._loss_terms(Z, y, curvature=False)
        return loss, dZ

    def output_curvature(self, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, None]:
        """``p (1 - p)`` per row, as ``sigmoid(z) sigmoid(-z) = t / (1 + t)^2`` with
        ``t = exp(-|z|)``: accurate in both tails, with one exponential."""
        tail = np.exp(-np.abs(Z))
        return tail / np.square(1.0 + tail), None

    def output_loss_curvature(
        self, Z: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray, None]:
        loss, dZ, curvature = self._loss_terms(Z, y, curvature=True)
        assert curvature is not None
        return loss, dZ, curvature[:, None], None

    def _loss_terms(
        self, Z: np.ndarray, y: np.ndarray, curvature: bool
    ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """The loss sum, dLoss/dZ and, with ``curvature``, ``p (1 - p)`` per row, from one
        exponential (transcendental functions cost more than the products here)."""
        z = Z[:, 0]
        # log(1 + e^z) - y z, row by row as log(1 + e^s) with s = (1 - 2y) z for y in {0, 1}:
        # no cancellation between two large sums, so the loss of separated rows stays >= 0.
        # log(1 + e^s) = max(s, 0) + log1p(t) with t = e^{-|s|} = e^{-|z|} (an infinite logit
        # on its side of the boundary loses nothing: max(-inf, 0) = 0). The sigmoid is
        # 1 / (1 + t) for z >= 0, t / (1 + t) below; p (1 - p) = t / (1 + t)^2.
        tail = np.exp(-np.abs(z))
        softplus = np.maximum((1.0 - 2.0 * y) * z, 0.0) + np.log1p(tail)
        one_plus_tail = 1.0 + tail
        dz = np.where(z >= 0, 1.0, tail) / one_plus_tail - y
        curve = tail / np.square(one_plus_tail) if curvature else None
        return float(softplus.sum(dtype=np.float64)), dz[:, None], curve
