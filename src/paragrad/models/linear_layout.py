"""Models linear in their features: parameters laid out as ``[W.ravel(), b]`` for
``X @ W + b``, and their loss, gradient and Hessian sums over blocks of rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.data import is_sparse
from paragrad.data.checks import Features
from paragrad.models.base import features_of
from paragrad.models.curvature import RowSample, add_hessian_sums, finish_hessian
from paragrad.models.rowwise import row_product

if TYPE_CHECKING:
    from paragrad.core.shards import Shard

BLOCK_BYTES = 1024 * 1024
# Blocks of up to this many rows and values (64 KiB of float64) are summed with a column of
# ones beside them: copying the block costs less than the operations the intercept takes
# apart (500 x 5 with its Hessian: 29 us against 41). Larger ones are not: the copy then
# costs more than the operations save (1000 x 31: 151 us against 113; 2730 x 2: 71 against 63).
SMALL_BLOCK_ROWS, SMALL_BLOCK_VALUES = 1024, 8192


def block_rows(X: np.ndarray) -> int:
    """Rows per block so that a (dense) block of X stays in a core's L2 cache."""
    return max(64, BLOCK_BYTES // max(1, X.shape[1] * X.dtype.itemsize))


class LinearLayout:
    """Parameters laid out as ``[W.ravel(), b]`` for ``X @ W + b`` with W of shape (d, k)."""

    fit_intercept: bool
    num_features_: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass whose own loss or curvature comes after a family's fused
        :meth:`output_loss_curvature` (a weighted or distilled loss over logistic
        regression's) gets the one made of its own two, not the family's."""
        super().__init_subclass__(**kwargs)
        order = cls.__mro__

        def owner(name: str) -> int:
            return next(index for index, klass in enumerate(order) if name in vars(klass))

        fused = owner("output_loss_curvature")
        if owner("output_loss") < fused or owner("output_curvature") < fused:
            cls.output_loss_curvature = LinearLayout.output_loss_curvature  # type: ignore[method-assign]

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def num_params(self) -> int:
        return (features_of(self) + int(self.fit_intercept)) * self.num_outputs

    def _make_weight_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_params, dtype=bool)
        mask[: features_of(self) * self.num_outputs] = True
        return mask

    def param_scales(self, feature_scales: np.ndarray) -> np.ndarray:
        """Each parameter's scale, for preconditioning: its feature's scale for a weight
        (``W[j, c]`` has feature ``j``'s), 1 for an intercept."""
        k = self.num_outputs
        intercepts = np.ones(k if self.fit_intercept else 0)
        return np.concatenate([np.repeat(np.asarray(feature_scales, dtype=np.float64), k), intercepts])

    def weight_matrices(self) -> list[tuple[int, int, int]]:
        return [(0, features_of(self), self.num_outputs)]

    def split(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
        """Views of the weights (d, k) and the intercepts (k,) in ``params``."""
        d, k = features_of(self), self.num_outputs
        W = params[: d * k].reshape(d, k)
        b = params[d * k :] if self.fit_intercept else 0.0
        return W, b

    def weights_for(self, params: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
        """Weights and intercepts in the data's float type (float32 data: float32 products)."""
        W, b = self.split(params)
        if X.dtype != W.dtype:
            W = W.astype(X.dtype)
            b = b.astype(X.dtype) if isinstance(b, np.ndarray) else b
        return W, b

    def outputs(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """``X @ W + b``, shape (rows, k), as predictions take it: each row's result
        independent of the other rows (:func:`row_product`)."""
        W, b = self.weights_for(params, X)
        if self.num_outputs == 1:
            return (row_product(X, W[:, 0]) + b)[:, None]
        return row_product(X, W) + b

    def _outputs(self, W: np.ndarray, b: np.ndarray | float, X: Features) -> np.ndarray:
        if self.num_outputs == 1:
            return (X @ W[:, 0] + b)[:, None]
        return X @ W + b

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss sum of outputs ``Z`` (rows, k) against ``y``, and its derivative dLoss/dZ."""
        raise NotImplementedError

    def output_curvature(self, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Hessian of each row's loss with respect to its outputs ``Z`` (rows, k), as ``(D, U)``
        for ``diag(D_i) - U_i U_i^T``, both (rows, k); U is None where the Hessian is diagonal.
        """
        raise NotImplementedError

    def output_loss_curvature(
        self, Z: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`output_loss` and :meth:`output_curvature` at once, where a family shares
        work between them (a subclass with a loss or curvature of its own gets this one
        again, see ``__init_subclass__``)."""
        loss, dZ = self.output_loss(Z, y)
        return (loss, dZ, *self.output_curvature(Z, y))

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and gradient sums, fused block by block: each block of X is read from
        memory once, and read again for ``X_block.T @ dZ`` while it is still in cache.

        Products run in the data's float type; sums over blocks accumulate in float64.
        """
        return self._fused_sums(params, X, y, None)

    def loss_grad_hess(
        self,
        params: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        sample: RowSample | None = None,
        float32: bool = False,
        design: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Loss, gradient and Hessian sums (float64, num_params x num_params) for Newton's method.

        The loss and gradient are :meth:`loss_grad`'s, bit for bit: the same block loop adds
        each block's Hessian while the block is in cache (small dense data: the same few
        products, see :meth:`_small_sums`). Hessian products run in the data's float type,
        as the gradient's do; the sums accumulate in float64.

        With a ``sample`` (dense X) the Hessian is summed over the sample's rows only and
        scaled to all the data's: an estimate of the sum at a fraction of the cost. With
        ``float32``, its products run in float32 whatever the data's type. ``design`` is
        :meth:`small_design` of X, where the caller keeps it between passes (a shard does).
        """
        design = self.small_design(X) if design is None else design
        if sample is None and not float32 and design is not None:
            loss, grad, _, exact = self._small_sums(params, design, y, hessian=True)
            assert exact is not None
            return loss, grad, finish_hessian(exact, 1)
        hess = np.zeros((self.num_params, self.num_params))
        if is_sparse(X) or (sample is not None and sample.every == 1):
            sample = None
        loss, grad = self._fused_sums(params, X, y, hess, sample, float32, design)
        if sample is not None:
            hess *= sample.scale(block_rows(X))
        return loss, grad, finish_hessian(hess, self.num_outputs)

    def _fused_sums(
        self,
        params: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        hess: np.ndarray | None,
        sample: RowSample | None = None,
        float32: bool = False,
        design: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """The block loop of :meth:`loss_grad` (small dense data: :meth:`_small_sums` over
        ``design``, made here unless given); adds the Hessian sum (over the ``sample``'s rows,
        if one is given; its products in float32 if ``float32``) to ``hess`` unless None."""
        design = self.small_design(X) if design is None else design
        if design is not None:
            loss, grad, Z, _ = self._small_sums(params, design, y, hessian=False)
            if hess is not None:  # sampled, or in float32 (loss_grad_hess sums the exact one)
                step = block_rows(X)
                for rows in [slice(None)] if sample is None else sample.runs(0, X.shape[0], step):
                    diag, outer = self.output_curvature(Z[rows], y[rows])
                    add_hessian_sums(hess, X[rows], diag, outer, self.fit_intercept, step, float32)
            return loss, grad
        d, k = features_of(self), self.num_outputs
        W, b = self.weights_for(params, X)
        grad = np.zeros(self.num_params)
        grad_W = grad[: d * k].reshape(d, k)
        loss = 0.0
        num_rows = X.shape[0]
        step = max(num_rows, 1) if is_sparse(X) else block_rows(X)  # CSR rows are read in one go
        for start in range(0, num_rows, step):
            X_block, y_block = X[start : start + step], y[start : start + step]
            Z = self._outputs(W, b, X_block)
            if hess is not None and sample is None:  # every row's curvature: with the loss
                block_loss, dZ, diag, outer = self.output_loss_curvature(Z, y_block)
            else:
                block_loss, dZ = self.output_loss(Z, y_block)
            loss += block_loss
            if k == 1 and not is_sparse(X_block):
                grad_W[:, 0] += dZ[:, 0] @ X_block
            else:
                grad_W += np.asarray(X_block.T @ dZ)
            if self.fit_intercept:  # one output: a contiguous column's sum, several times faster
                column = dZ[:, 0] if k == 1 else dZ
                grad[d * k :] += column.sum(axis=0, dtype=np.float64)
            if hess is None:
                continue
            if sample is None:
                add_hessian_sums(hess, X_block, diag, outer, self.fit_intercept, block_rows(X), float32)
                continue
            for rows in sample.runs(start, start + X_block.shape[0], step):
                diag, outer = self.output_curvature(Z[rows], y_block[rows])
                add_hessian_sums(hess, X_block[rows], diag, outer, self.fit_intercept, block_rows(X), float32)
        return loss, grad

    def small_design(self, X: Features) -> np.ndarray | None:
        """X beside a column of ones for the intercept (X itself without one), where
        :meth:`_small_sums` sums small dense float64 data of one output; None elsewhere."""
        if self.num_outputs != 1 or not _small_dense(X):
            return None
        if not self.fit_intercept:
            return X
        design = np.empty((X.shape[0], X.shape[1] + 1))
        design[:, :-1], design[:, -1] = X, 1.0
        return design

    def kept_design(self, shard: Shard) -> np.ndarray | None:
        """:meth:`small_design` of the shard's features, made once while it holds them."""
        key = ("small design", self.num_outputs, self.fit_intercept)
        return shard.made_from_features(key, self.small_design)

    def _small_sums(
        self, params: np.ndarray, A: np.ndarray, y: np.ndarray, hessian: bool
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """The loss and gradient sums of one output over :meth:`small_design`'s A, the
        outputs, and with ``hessian`` the exact Hessian sum (its upper triangle, as
        :func:`finish_hessian` takes it), in the fewest array operations (on small data each
        costs more than its arithmetic): with the intercept's column of ones in A, one
        product makes the outputs, one the gradient and one the Hessian."""
        Z = (A @ params)[:, None]
        hess = None
        if hessian:
            loss, dZ, diag, _ = self.output_loss_curvature(Z, y)  # one output: no outer part
            hess = A.T @ (A * diag)
        else:
            loss, dZ = self.output_loss(Z, y)
        return loss, dZ[:, 0] @ A, Z, hess


def _small_dense(X: Features) -> bool:
    """Whether X is small, dense and float64 (see :meth:`LinearLayout._small_sums`)."""
    rows, columns = X.shape
    return (
        not is_sparse(X)
        and X.dtype == np.float64
        and rows <= SMALL_BLOCK_ROWS
        and rows * (columns + 1) <= SMALL_BLOCK_VALUES
    )
