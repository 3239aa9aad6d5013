"""Multinomial (softmax) regression on k classes (coded 0..k-1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.errors import DataError
from paragrad.models.base import Classifier, features_of
from paragrad.models.crossentropy import log_softmax_xent, softmax
from paragrad.models.linear_layout import LinearLayout


class SoftmaxRegression(LinearLayout, Classifier):
    """Softmax regression; objective ``mean cross-entropy + l2/2 ||W||^2``.

    scikit-learn's multinomial ``LogisticRegression(C=C)`` on m rows is the same problem
    with ``l2 = 1 / (C m)``. The classes are the distinct labels; ``num_classes`` declares
    classes ``0..num_classes-1`` for integer labels, some of which the data may lack.
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

    def _classes_from(self, labels: np.ndarray | None) -> np.ndarray:
        classes = super()._classes_from(labels)
        hint = self.num_classes_hint
        if hint is None:
            return classes
        if classes.dtype.kind not in "iu" or classes[0] < 0 or classes[-1] >= hint:
            shown = ", ".join(map(str, classes[:5].tolist()))
            raise DataError(f"num_classes={hint} declares labels 0..{hint - 1}; found {shown}")
        return np.arange(hint)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def flat_directions(self) -> np.ndarray:
        """Adding the same amount to every class's intercept (and, unpenalised, to every
        class's weight for one feature) changes no probability: k outputs, k - 1 free."""
        k, rows = self.num_outputs, self._flat_rows()
        directions = np.zeros((int(rows.sum()), self.num_params))
        for i, j in enumerate(np.flatnonzero(rows).tolist()):
            directions[i, j * k : (j + 1) * k] = 1.0
        return directions

    def without_flat(self, hessian: np.ndarray) -> np.ndarray:
        """``P H P``, P the projection off :meth:`flat_directions`: each flat feature's (and
        the intercept's) mean over the classes taken off its rows and columns. The data's
        Hessian is flat along them to within its round-off, which in a Hessian summed in
        float32 would put a part along them into every step, one no later step takes back."""
        k, flat = self.num_outputs, self._flat_rows()
        blocks = hessian.reshape(len(flat), k, len(flat), k)
        blocks = np.where(flat[:, None, None, None], blocks - blocks.mean(axis=1, keepdims=True), blocks)
        blocks = np.where(flat[None, None, :, None], blocks - blocks.mean(axis=3, keepdims=True), blocks)
        return blocks.reshape(hessian.shape)

    def _flat_rows(self) -> np.ndarray:
        """Which rows of the parameters ``[W; b]`` (features, then the intercept if fitted)
        have a flat direction: every feature's when unpenalised, and the intercept's."""
        d = features_of(self)
        flat = np.zeros(d + int(self.fit_intercept), dtype=bool)
        flat[:d] = self.l2 == 0.0
        flat[d:] = True  # the intercept, if fitted
        return flat

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.outputs(params, X)

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return log_softmax_xent(Z, y)

    def output_curvature(self, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``diag(p) - p p^T`` per row, with p the softmax of the row's logits."""
        P = softmax(Z)
        return P, P
