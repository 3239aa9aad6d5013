"""The tasks workers run: describe and standardise a shard, a training step, predict.

Each is a small frozen dataclass holding what it needs besides the round's arguments,
sent to the workers once; engines run it on every shard and know nothing of what it does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from paragrad.core.shards import Shard, StateField, Task
from paragrad.data import Moments, Standardizer, is_sparse
from paragrad.data.checks import Features, within_bounds
from paragrad.data.moments import moments_and_bounds
from paragrad.models.base import MAX_CLASSES, Classifier, Model
from paragrad.optim import Optimizer
from paragrad.training.strategies import RoundPlan, Strategy, WorkerResult


@dataclass(frozen=True)
class DescribeShard(Task):
    """Row count, distinct labels (classifiers) and feature moments of a shard, and with
    ``check_values`` whether its features are all finite and within bounds (the check of
    a memory-mapped file, made where the rows are read)."""

    want_labels: bool
    want_moments: bool
    check_values: bool = False

    def __call__(self, shard: Shard) -> tuple[int, np.ndarray | None, Moments | None, bool]:
        labels = distinct_labels(shard.y) if self.want_labels and shard.y is not None else None
        if self.want_moments:  # the check rides along the moments' pass
            stats, clean = moments_and_bounds(shard.X, self.check_values)
            return shard.num_rows, labels, stats if clean else None, clean
        clean = within_bounds(shard.X) if self.check_values else True
        return shard.num_rows, labels, None, clean


def distinct_labels(y: np.ndarray) -> np.ndarray:
    """The distinct values of ``y``, sorted (at most ``MAX_CLASSES + 1`` of them): counted
    for class codes 0, 1, 2, ... (a pass over y), given as integers then, as the classes
    of whole numbers are; sorted otherwise."""
    if len(y) and 0 <= y.min() and y.max() < 2 * MAX_CLASSES:
        codes = y.astype(np.intp)
        if (codes == y).all():
            return np.flatnonzero(np.bincount(codes))[: MAX_CLASSES + 1]
    return np.unique(y)[: MAX_CLASSES + 1]


_HOST = socket.gethostname()  # this machine's name, asked once: TrainStep compares it every pass

# Rows of each virtual shard that go into the data's fingerprint: its first, its last and
# evenly spaced ones between (a pass over 8 rows of 1024 virtual shards: milliseconds).
FINGERPRINT_ROWS = 8


@dataclass(frozen=True)
class FingerprintShard(Task):
    """A cheap fingerprint of the shard's data: for each virtual shard it holds (in
    order), a hash of its row count, its width and a few sampled rows of features and
    labels. Virtual shards do not depend on the worker count, so neither does the
    fingerprint the coordinator combines from them (see :func:`data_fingerprint`).

    The sampled rows of every virtual shard are gathered at once and hashed a shard at a
    time: the rows ``np.unique(np.linspace(lo, max(hi - 1, lo), 8).astype(np.intp))``
    below ``hi``, as numpy's linspace places them. Sparse rows are hashed as their stored
    values and columns (duplicates summed, zeros left out), not made dense: eight rows of
    2^20 columns are 64 MB dense. ``as_stored`` hashes every shard's rows so (True) or as
    dense values (False: sparse rows as checkpoints made before hashed them), whatever
    the data's form, so that a checkpoint resumes on the same rows given the other way.
    """

    as_stored: bool | None = None  # by the data's own form

    def __call__(self, shard: Shard) -> list[str]:
        starts = shard.held.starts()
        starts = starts - starts[0]
        low, high = starts[:-1], starts[1:]
        rows, ends = fingerprint_rows(low, high)
        X: Features = shard.X[rows]
        as_stored = is_sparse(X) if self.as_stored is None else self.as_stored
        y = None if shard.y is None else np.ascontiguousarray(shard.y[rows], dtype=np.float64)
        digests, first, width = [], 0, shard.X.shape[1]
        form = "csr|" if as_stored else ""
        parts = _stored_rows(X, ends) if as_stored else _dense_rows(X, ends)
        for size, last, arrays in zip((high - low).tolist(), ends.tolist(), parts, strict=True):
            digest = hashlib.sha256(f"{size}|{width}|{form}".encode())
            for array in arrays:
                digest.update(array.data)
            if y is not None:
                digest.update(y[first:last].data)
            digests.append(digest.hexdigest()[:16])
            first = last
        return digests


def _dense_rows(X: Features, ends: np.ndarray) -> Iterator[tuple[np.ndarray]]:
    """Each shard's rows of ``X`` (the rows up to each of ``ends``) as float64 values;
    sparse rows made dense a shard at a time (all at once, 2^20 columns take 64 GB)."""
    sparse = is_sparse(X)
    values: Features = X if sparse else np.ascontiguousarray(X, dtype=np.float64)
    first = 0
    for last in ends.tolist():
        block = values[first:last]
        yield (np.ascontiguousarray(block.toarray(), dtype=np.float64) if sparse else block,)
        first = last


def _stored_rows(X: Features, ends: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each shard's rows of ``X`` as each row's count of non-zero values, their columns
    and the values, the same however the rows are stored (dense, or sparse with duplicate
    entries, explicit zeros, unsorted columns)."""
    if is_sparse(X):
        X = X.tocsr(copy=True)
        X.sum_duplicates()
        X.eliminate_zeros()
        starts, columns = X.indptr.astype(np.int64), X.indices.astype(np.int64)
        values = np.ascontiguousarray(X.data, dtype=np.float64)
    else:  # numpy alone: scipy may not be installed
        dense = np.ascontiguousarray(X, dtype=np.float64)
        kept = dense != 0
        starts = np.r_[0, np.cumsum(kept.sum(axis=1, dtype=np.int64))]
        columns, values = np.nonzero(kept)[1].astype(np.int64), dense[kept]
    first = 0
    for last in ends.tolist():
        yield (
            np.diff(starts[first : last + 1]),
            columns[starts[first] : starts[last]],
            values[starts[first] : starts[last]],
        )
        first = last


def fingerprint_rows(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sampled rows of virtual shards ``[low, high)``, shard after shard, and where each
    shard's rows end among them."""
    count = FINGERPRINT_ROWS
    low = low.astype(np.float64)
    last = np.maximum(high - 1.0, low)
    # As np.linspace computes each shard's points: i * ((last - low) / (n - 1)) + low, the
    # last point exactly ``last`` (a zero step gives ``low`` either way).
    points = np.arange(count, dtype=np.float64) * ((last - low) / (count - 1))[:, None] + low[:, None]
    points[:, -1] = last
    picks = points.astype(np.intp)
    kept = picks < high[:, None]
    kept[:, 1:] &= picks[:, 1:] != picks[:, :-1]  # distinct: the points never decrease
    return picks[kept], np.cumsum(kept.sum(axis=1))


def data_fingerprint(parts: list[list[str]]) -> str:
    """The workers' virtual-shard hashes (from :class:`FingerprintShard`, in worker order,
    so in virtual-shard order) combined into one."""
    return hashlib.sha256("".join(digest for part in parts for digest in part).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StandardizeShard(Task):
    """Replace the shard's features by their standardised copy (the data stays untouched).

    It changes the shard, so an engine replays it on a worker it restarts.
    """

    standardizer: Standardizer
    mutates_shard: ClassVar[bool] = True

    def __call__(self, shard: Shard) -> None:
        shard.X = self.standardizer.transform(shard.X)


@dataclass(frozen=True)
class EncodeLabels(Task):
    """Replace the shard's labels by their positions among ``classes`` (sorted floats),
    so the models see classes ``0..k-1`` whatever the labels are (-1/1, 1/2, ...).

    It changes the shard, so an engine replays it on a worker it restarts.
    """

    classes: np.ndarray
    mutates_shard: ClassVar[bool] = True

    @classmethod
    def needed_for(cls, classes: np.ndarray | None) -> EncodeLabels | None:
        """The task for numeric labels that are not already ``0..k-1``; None when none is."""
        if classes is None:
            return None
        values = classes.astype(np.float64)
        return None if bool((values == np.arange(len(values))).all()) else cls(values)

    def __call__(self, shard: Shard) -> None:
        y = shard.labels
        shard.y = np.searchsorted(self.classes, y).astype(y.dtype)


@dataclass(frozen=True)
class GetWorkerState(Task):
    """The worker's state fields (error-feedback residuals), for a checkpoint."""

    fields: tuple[StateField, ...]

    def __call__(self, shard: Shard) -> tuple[np.ndarray, ...]:
        """Each field's array; zeros for one the worker has not used yet."""
        return tuple(np.array(shard.state.get(field.name, np.zeros(field.size))) for field in self.fields)


@dataclass(frozen=True)
class TrainStep(Task):
    """A strategy's worker step with everything it needs but the round's parameters."""

    strategy: Strategy
    model: Model
    optimizer: Optimizer
    plan: RoundPlan
    # Where the coordinator runs: a worker in its process reports no CPU time of its own
    # (the coordinator's process time holds it).
    coordinator: tuple[str, int] = field(default_factory=lambda: (_HOST, os.getpid()))
    zero_copy_results: ClassVar[bool] = True  # the round loop combines them before the next round

    def __call__(self, shard: Shard, params: np.ndarray, round_index: int) -> WorkerResult:
        here = os.getpid() == self.coordinator[1] and _HOST == self.coordinator[0]
        cpu_start = 0.0 if here else time.process_time()
        with np.errstate(over="ignore", invalid="ignore"):
            result = self.inline(shard, params, round_index)
        return result if here else result._replace(cpu_s=time.process_time() - cpu_start)

    def inline(self, shard: Shard, params: np.ndarray, round_index: int) -> WorkerResult:
        """The step and its time, within the caller's ``np.errstate``; no CPU time of its own
        (called by the coordinator on a shard of its own, it is the coordinator's)."""
        start = time.perf_counter()
        result = self.strategy.worker_step(shard, self.model, self.optimizer, params, round_index, self.plan)
        return result._replace(compute_s=time.perf_counter() - start)


@dataclass(frozen=True)
class PredictShard(Task):
    """Predict a shard's rows with the model sent along (once per worker).

    Returns the predictions and the first row (within the shard) whose scores are not
    finite, or -1: NaN or infinite features always make non-finite scores, so this checks
    the input without a pass of its own.
    """

    model: Model
    proba: bool

    def __call__(self, shard: Shard) -> tuple[np.ndarray, int]:
        model, X = self.model, self.model.prepare(shard.X)
        classifier = model if isinstance(model, Classifier) else None
        if classifier is not None and self.proba:
            scores = classifier.proba(model.params, X)
        else:
            scores = model.decision_function(model.params, X)
        finite = np.isfinite(scores) if scores.ndim == 1 else np.isfinite(scores).all(axis=1)
        bad = -1 if finite.all() else int(np.argmin(finite))
        if classifier is None or self.proba:
            return scores, bad
        return classifier.labels_from(scores), bad
