"""Multinomial (softmax) regression on labels 0..k-1."""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.errors import DataError
from paragrad.models.base import Classifier, LinearLayout, log_softmax_xent, softmax


class SoftmaxRegression(LinearLayout, Classifier):
    """Softmax regression; objective ``mean cross-entropy + l2/2 ||W||^2``.

    scikit-learn's multinomial ``LogisticRegression(C=C)`` on m rows is the same problem
    with ``l2 = 1 / (C m)``. The class count is ``max(label) + 1`` unless given.
    """

    name = "softmax"

    def __init__(
        self, l2: float = 0.0, *, fit_intercept: bool = True, num_classes: int | None = None
    ) -> None:
        super().__init__(l2=l2)
        self.fit_intercept = bool(fit_intercept)
        self.num_classes_hint = num_classes

    def get_config(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "fit_intercept": self.fit_intercept,
            "num_classes": self.num_classes_hint,
        }

    def _classes_from(self, labels):
        classes = super()._classes_from(labels)
        if self.num_classes_hint is not None:
            if len(classes) > self.num_classes_hint:
                raise DataError(f"labels go up to {classes[-1]}, but num_classes is {self.num_classes_hint}")
            classes = np.arange(self.num_classes_hint)
        return classes

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def flat_directions(self) -> np.ndarray:
        """Adding the same amount to every class's intercept (and, unpenalised, to every
        class's weight for one feature) changes no probability: k outputs, k - 1 free."""
        d, k = self.num_features_, self.num_outputs
        directions = []
        if self.l2 == 0.0:
            for j in range(d):
                vector = np.zeros(self.num_params)
                vector[j * k : (j + 1) * k] = 1.0
                directions.append(vector)
        if self.fit_intercept:
            vector = np.zeros(self.num_params)
            vector[d * k :] = 1.0
            directions.append(vector)
        return np.array(directions).reshape(-1, self.num_params)

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.outputs(params, X)

    def proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(params, X))

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return log_softmax_xent(Z, y)

    def output_curvature(self, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``diag(p) - p p^T`` per row, with p the softmax of the row's logits."""
        P = softmax(Z)
        return P, P
