"""Standardisation from per-shard moments: each worker sums its own rows, and the
moments merge exactly into one mean and scale per feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.data.checks import is_sparse, within_bounds
from paragrad.errors import DataError


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of each feature over some rows."""

    count: int
    mean: np.ndarray
    m2: np.ndarray


def moments(X: Any) -> Moments:
    """The moments of the rows of ``X`` (an array or CSR matrix), accumulated in float64.

    A block's own moments are computed in the data's type (float32 data: float32 sums
    over a block of a few hundred rows, as the training kernels' products run), and the
    blocks merged in float64. For CSR rows, from the sums of values and of squares
    (centring would make them dense).
    """
    return moments_and_bounds(X, check=False)[0]


def moments_and_bounds(X: Any, check: bool) -> tuple[Moments, bool]:
    """:func:`moments`, and with ``check`` whether every value is finite and within its
    type's bound, found in the same pass (each block is read from memory once)."""
    if is_sparse(X):
        mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
        squares = np.asarray(X.multiply(X).sum(axis=0, dtype=np.float64)).ravel()
        stats = Moments(X.shape[0], mean, np.maximum(squares - X.shape[0] * mean**2, 0.0))
        return stats, not check or within_bounds(X)
    # Block by block: each block's mean and squared deviations while it is in cache
    # (sums as matrix-vector products), then merged exactly:
    # m2 = the blocks' m2 + n_b (mean_b - mean)^2.
    step = max(1, BLOCK_VALUES // max(1, X.shape[1]))
    ones, centred = np.ones(step, X.dtype), np.empty((min(step, len(X)), X.shape[1]), X.dtype)
    counts, means, m2, clean = [], [], np.zeros(X.shape[1]), True
    with np.errstate(over="ignore", invalid="ignore"):  # too large values: the caller says
        for start in range(0, X.shape[0], step):
            block = X[start : start + step]
            rows = len(block)
            if check and clean:
                clean = within_bounds(block)
            means.append(ones[:rows] @ block / rows)
            counts.append(rows)
            np.subtract(block, means[-1], out=centred[:rows])
            np.multiply(centred[:rows], centred[:rows], out=centred[:rows])
            m2 += ones[:rows] @ centred[:rows]
    weights, block_means = np.array(counts, dtype=np.float64), np.array(means, dtype=np.float64)
    mean = weights @ block_means / len(X)
    return Moments(len(X), mean, m2 + weights @ (block_means - mean) ** 2), clean


# Values per block of a streaming pass: small enough to stay in cache, large enough that
# numpy's per-call cost does not show.
BLOCK_VALUES = 1 << 17


def combine_moments(parts: Sequence[Moments]) -> Moments:
    """Merge per-shard moments exactly (Chan, Golub and LeVeque's pairwise update)."""
    total = parts[0]
    for part in parts[1:]:
        count = total.count + part.count
        delta = part.mean - total.mean
        mean = total.mean + delta * (part.count / count)
        m2 = total.m2 + part.m2 + delta**2 * (total.count * part.count / count)
        total = Moments(count, mean, m2)
    return total


@dataclass(frozen=True)
class Standardizer:
    """``(X - mean) / scale`` per feature; constant features keep scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_moments(cls, stats: Moments) -> Standardizer:
        """Mean and scale from moments; a non-finite one is refused (an infinite scale would
        turn the feature into zeros, silently dropping it)."""
        std = np.sqrt(stats.m2 / stats.count)
        bad = ~(np.isfinite(stats.mean) & np.isfinite(std))
        if bad.any():
            feature = int(np.argmax(bad))
            raise DataError(
                f"cannot standardize feature {feature} (counted from 0): its mean or scale is "
                f"not finite (mean {float(stats.mean[feature]):g}, scale {float(std[feature]):g}); "
                "its values are too large for float64: rescale the column"
            )
        return cls(stats.mean, np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(X.dtype, copy=False)
