"""Standardisation from per-shard moments: each worker sums its own rows, and the
moments merge exactly into one mean and scale per feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of each feature over some rows."""

    count: int
    mean: np.ndarray
    m2: np.ndarray


def moments(X: np.ndarray) -> Moments:
    """The moments of the rows of ``X``, accumulated in float64."""
    mean = X.mean(axis=0, dtype=np.float64)
    centred = X - mean
    return Moments(len(X), mean, np.einsum("ij,ij->j", centred, centred))


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
        std = np.sqrt(stats.m2 / stats.count)
        return cls(stats.mean, np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(X.dtype, copy=False)
