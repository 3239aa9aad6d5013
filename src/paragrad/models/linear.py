"""Least-squares linear regression: loss ``1/2 (x.w + b - y)^2`` per row."""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.models.base import Model
from paragrad.models.linear_layout import LinearLayout


class LinearRegression(LinearLayout, Model):
    """Linear regression; the objective is ``1/(2m) ||X w + b - y||^2 + l2/2 ||w||^2``.

    That is scikit-learn's ``Ridge(alpha=l2 * m)`` divided by ``m`` (m rows).
    """

    name = "linear"

    def __init__(self, l2: float = 0.0, *, fit_intercept: bool = True) -> None:
        super().__init__(l2=l2)
        self.fit_intercept = bool(fit_intercept)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2, "fit_intercept": self.fit_intercept}

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.outputs(params, X)[:, 0]

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        residual = Z[:, 0] - y
        return 0.5 * float(residual @ residual), residual[:, None]

    def output_curvature(self, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, None]:
        """The squared error's second derivative is 1 on every row: the Hessian is ``A^T A``."""
        return np.ones_like(Z), None
