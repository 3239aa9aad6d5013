"""The three training algorithms: what a worker does in a round, and how results combine.

Each strategy has a worker side (``worker_step``, run on every shard) and a coordinator
side (``combine``). Neither knows about processes. Every random draw of a worker comes
from the seed, the epoch (derived from the round number) and the virtual shards it
holds (see :mod:`paragrad.training.sampling`), so a round gives the same result on any engine,
after any restart and, for GradientDescent and SGD, on any number of workers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.core.shards import Shard, StateField
from paragrad.data import take_rows
from paragrad.errors import ConfigError, check_positive_int, model_term
from paragrad.models.base import Model
from paragrad.models.curvature import RowSample
from paragrad.models.linear_layout import LinearLayout, block_rows
from paragrad.optim import Evaluation, Newton, Optimizer
from paragrad.optim.base import Needs
from paragrad.optim.least_squares import combine_factors, shard_factor
from paragrad.training.compression import Compressor, get_compressor
from paragrad.training.sampling import batch_rows, stream_rows

RESIDUAL = "residual"  # the StateField of error feedback


class WorkerResult(NamedTuple):
    """What a worker returns: rows used, loss sum over them, and a vector.

    The vector is a gradient sum (GradientDescent, SGD) or the worker's trained
    parameters (LocalSGD). ``count`` weighs the worker's result when results combine;
    ``processed`` is how many rows it computed on, when that differs (LocalSGD's local
    steps). ``compute_s`` is the worker's own computing time. ``matrix`` holds what a
    full-batch solver needs besides (see ``Optimizer.needs``).
    """

    count: int  # type: ignore[assignment]  # a field: it hides tuple.count on purpose
    loss_sum: float
    vector: Any  # an array, or its compressed payload
    compute_s: float = 0.0
    matrix: np.ndarray | None = None  # a Hessian sum or a least-squares factor, when needed
    processed: int | None = None  # rows computed on, when not ``count``
    cpu_s: float = 0.0  # the worker process's CPU seconds, when it is not the coordinator's

    @property
    def rows_processed(self) -> int:
        """Rows the worker computed on in the round."""
        return self.count if self.processed is None else self.processed


class StepOutcome(NamedTuple):
    """The coordinator's result of a round.

    ``loss`` is the objective (mean loss plus penalty) the round measured: over the whole
    data at the incoming parameters for GradientDescent, over the round's batches
    otherwise. ``grad_norm`` is the largest absolute gradient entry, when known;
    ``stalled`` says a line search found no better point (the parameters stayed put);
    ``criterion`` is the optimizer's own convergence measure, when it has one,
    ``solved`` says an exact solver reached the optimum, and ``singular`` that a Newton
    step met a singular Hessian.
    """

    params: np.ndarray
    opt_state: Any
    loss: float
    grad_norm: float | None
    stalled: bool = False
    criterion: float | None = None
    solved: bool = False
    singular: bool = False


@dataclass(frozen=True)
class RoundPlan:
    """Run-wide facts a worker step needs: the seed and the epoch structure."""

    seed: int
    rounds_per_epoch: int
    epochs: int


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w_i v_i) / sum(w_i)``, summed in the given order (so results repeat exactly)."""
    total = weights[0] * np.asarray(vectors[0], dtype=np.float64)
    for vector, weight in zip(vectors[1:], weights[1:], strict=True):
        total += weight * vector
    return total / float(sum(weights))


def sum_results(results: Sequence[WorkerResult]) -> tuple[int, float, np.ndarray]:
    """Total count, loss sum and vector sum of the workers' results, in worker order (one
    result's vector as it is, to be read only)."""
    first = results[0].vector
    total = np.array(first, dtype=np.float64) if len(results) > 1 else np.asarray(first, dtype=np.float64)
    count, loss = results[0].count, results[0].loss_sum
    for result in results[1:]:
        count += result.count
        loss += result.loss_sum
        total += result.vector
    return count, loss, total


def objective(
    results: Sequence[WorkerResult], params: np.ndarray, model: Model, needs: Needs = "gradient"
) -> Evaluation:
    """The mean objective at ``params``: sums averaged exactly, the penalty added once.

    With ``needs="hessian"`` the mean Hessian too; with ``"factor"``, the workers'
    least-squares factors combined with the penalty's rows (and no loss yet).
    """
    count, loss_sum, grad_sum = sum_results(results)
    matrices = [result.matrix for result in results if result.matrix is not None]
    if needs == "factor":
        scales = np.sqrt(count * model.penalty_hessian(params))
        penalty_rows = np.zeros((int(np.count_nonzero(scales)), len(params) + 1))
        penalty_rows[:, :-1] = np.diag(scales)[scales > 0]
        return Evaluation(
            math.nan, np.zeros(len(params)), factor=combine_factors(matrices, penalty_rows), count=count
        )
    hessian = None
    if needs == "hessian":
        hessian = (matrices[0] if len(matrices) == 1 else np.add.reduce(matrices)) / count
        if model.l2 != 0.0:  # l2 on the weights' diagonal
            hessian += np.diag(model.penalty_hessian(params))
        flat = model.flat_directions()  # curvature where the objective is flat: a definite system
        if len(flat):
            hessian = model.without_flat(hessian)
            hessian += (np.trace(hessian) / len(params)) * (flat.T @ flat) / len(flat)
    loss, grad = loss_sum / count, grad_sum / count
    if model.l2 != 0.0:
        penalty, penalty_grad = model.penalty(params)
        loss, grad = loss + penalty, grad + penalty_grad
    return Evaluation(loss, grad, hessian, count=count)


RunWorkers = Callable[[np.ndarray], list[WorkerResult]]


class Strategy(ABC):
    """A distributed training algorithm.

    ``compress`` (``"topk:0.01"``, ``"int8"``, ``"fp16"`` or None) shrinks what workers
    send back; top-k keeps the left-out part in the worker's error-feedback state.
    """

    name: str
    stochastic: bool = True
    default_epochs: ClassVar[int] = 10
    compress: str | None = None

    @property
    def compressor(self) -> Compressor | None:
        return get_compressor(self.compress)

    def worker_state(self, num_params: int) -> tuple[StateField, ...]:
        """The arrays each worker keeps between rounds: top-k's error-feedback residual."""
        compressor = self.compressor
        if compressor is None or not compressor.error_feedback:
            return ()
        return (StateField(RESIDUAL, num_params),)

    def send(self, shard: Shard, vector: np.ndarray, plan: RoundPlan, round_index: int) -> Any:
        """What a worker sends for ``vector``: itself, or its compressed form."""
        compressor = self.compressor
        if compressor is None:
            return vector
        if compressor.error_feedback:
            vector = vector + shard.state.setdefault(RESIDUAL, np.zeros(len(vector)))
        rng = np.random.default_rng([plan.seed, shard.worker, round_index, 1])
        payload = compressor.encode(vector, rng)
        if compressor.error_feedback:
            shard.state[RESIDUAL] = vector - compressor.decode(payload, len(vector))
        return payload

    def receive(self, results: Sequence[WorkerResult], size: int) -> list[WorkerResult]:
        """The workers' results with their vectors decompressed."""
        compressor = None if self.compress is None else self.compressor  # made only to decode
        if compressor is None:
            return list(results)
        return [result._replace(vector=compressor.decode(result.vector, size)) for result in results]

    @abstractmethod
    def rounds_per_epoch(self, shard_sizes: Sequence[int]) -> int:
        """How many rounds make one pass over the data."""

    def total_rounds(self, shard_sizes: Sequence[int], epochs: int) -> int:
        return epochs * self.rounds_per_epoch(shard_sizes)

    def epoch_of(self, round_index: int, shard_sizes: Sequence[int]) -> int:
        """The epoch (pass over the data, from 0) that round ``round_index`` belongs to."""
        return round_index // self.rounds_per_epoch(shard_sizes)

    @abstractmethod
    def worker_step(
        self,
        shard: Shard,
        model: Model,
        optimizer: Optimizer,
        params: np.ndarray,
        round_index: int,
        plan: RoundPlan,
    ) -> WorkerResult:
        """One worker's part of round ``round_index``."""

    def round(
        self, run_workers: RunWorkers, params: np.ndarray, opt_state: Any, model: Model, optimizer: Optimizer
    ) -> StepOutcome:
        """One round on the coordinator: ``run_workers(point)`` is one pass of the workers.

        Gradient strategies hand the optimizer the objective, whose every evaluation is a
        pass (a line search makes several): the sums averaged exactly, the penalty added once.
        """

        def evaluate(point: np.ndarray) -> Evaluation:
            return objective(self.receive(run_workers(point), len(point)), point, model, optimizer.needs)

        step = optimizer.minimize(evaluate, params, opt_state)
        # The gradient's largest entry: what convergence measures without the optimizer's own measure
        grad_norm = float(np.abs(step.grad).max()) if step.criterion is None else None
        return StepOutcome(
            step.params,
            step.state,
            step.loss,
            grad_norm,
            step.stalled,
            step.criterion,
            step.solved,
            step.singular,
        )

    def config(self) -> dict[str, Any]:
        """The settings that identify this strategy (for checking a resumed run)."""
        return {"name": self.name, **self.settings(), "compress": self.compress}

    def settings(self) -> dict[str, Any]:
        """The strategy's own settings, besides compression."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class GradientDescent(Strategy):
    """Full-batch gradient descent: every worker returns its shard's gradient sum.

    The coordinator divides the total by the total row count, which is exactly the
    single-process full-batch gradient for any number of workers and uneven shards.
    """

    name = "gd"
    stochastic = False
    default_epochs: ClassVar[int] = 500  # rounds: full-batch solvers stop when converged

    def __init__(self, compress: str | None = None) -> None:
        self.compress = compress
        get_compressor(compress)  # refuses a bad spec now

    def rounds_per_epoch(self, shard_sizes: Sequence[int]) -> int:
        return 1

    def worker_step(
        self,
        shard: Shard,
        model: Model,
        optimizer: Optimizer,
        params: np.ndarray,
        round_index: int,
        plan: RoundPlan,
    ) -> WorkerResult:
        if optimizer.needs == "gradient":
            loss, grad = model.loss_grad(params, shard.X, shard.labels)
            grad = model.restrict(grad)
            return WorkerResult(shard.num_rows, loss, self.send(shard, grad, plan, round_index))
        if not isinstance(model, LinearLayout):
            raise ConfigError(f"{optimizer.name} solves the linear models only, not {model_term(model)}")
        if optimizer.needs == "factor":
            factor = shard_factor(shard.X, shard.labels, model.fit_intercept)
            return WorkerResult(shard.num_rows, 0.0, np.zeros(0), matrix=factor)
        sample, float32 = None, False
        if isinstance(optimizer, Newton):
            float32 = optimizer.hessian_float32
            held = shard.held
            if optimizer.on_sample:
                sample = RowSample(optimizer.start_every, int(held.starts()[0]), held.total_rows)
                return sampled_rows_step(shard, model, params, sample, float32)
            if optimizer.hessian_every > 1:
                sample = RowSample(optimizer.hessian_every, int(held.starts()[0]), held.total_rows)
        design = model.kept_design(shard)
        loss, grad, hessian = model.loss_grad_hess(params, shard.X, shard.labels, sample, float32, design)
        return WorkerResult(shard.num_rows, loss, grad, matrix=hessian)


def sampled_rows_step(
    shard: Shard, model: LinearLayout, params: np.ndarray, sample: RowSample, float32: bool
) -> WorkerResult:
    """A Newton pass over the shard's sampled rows alone (:attr:`Newton.on_sample`): the
    loss, gradient and Hessian sums of its sampled blocks, each read where it lies."""
    size = len(params)
    loss, grad, hessian, count = 0.0, np.zeros(size), np.zeros((size, size)), 0
    for rows in sample.runs(0, shard.num_rows, block_rows(shard.X)):
        part = model.loss_grad_hess(params, shard.X[rows], shard.labels[rows], None, float32)
        loss += part[0]
        grad += part[1]
        hessian += part[2]
        count += rows.stop - rows.start
    return WorkerResult(count, loss, grad, matrix=hessian)


class SGD(Strategy):
    """Distributed minibatch SGD: every round draws a global batch of ``batch_size`` rows.

    Rows are drawn without replacement within an epoch (one pass over the data) from a
    stream that depends on the seed alone (see :mod:`paragrad.training.sampling`); each worker
    computes on the rows of the batch it holds, and the gradient is the exact mean over
    the batch. The batch, and so the result, is the same on any number of workers.
    """

    name = "sgd"

    def __init__(self, batch_size: int = 256, compress: str | None = None) -> None:
        check_positive_int("batch_size", batch_size)
        self.batch_size = int(batch_size)
        self.compress = compress
        get_compressor(compress)

    def rounds_per_epoch(self, shard_sizes: Sequence[int]) -> int:
        return math.ceil(sum(shard_sizes) / self.batch_size)

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def worker_step(
        self,
        shard: Shard,
        model: Model,
        optimizer: Optimizer,
        params: np.ndarray,
        round_index: int,
        plan: RoundPlan,
    ) -> WorkerResult:
        epoch, position = divmod(round_index, plan.rounds_per_epoch)
        start = position * self.batch_size
        rows = stream_rows(shard, plan.seed, epoch, start, start + self.batch_size)
        X, y = model.take_rows(shard.X, rows), take_rows(shard.labels, rows)
        if X.shape[0] == 0:
            loss, grad = 0.0, np.zeros(len(params))
        else:
            loss, grad = model.loss_grad(params, X, y)
            grad = model.restrict(grad)
        return WorkerResult(X.shape[0], loss, self.send(shard, grad, plan, round_index))


class LocalSGD(Strategy):
    """Local SGD / model averaging (FedAvg).

    Every round the workers start from the broadcast parameters, each takes
    ``local_steps`` optimizer steps on batches of its own shard (objective: its mean loss
    plus the penalty), and the coordinator averages the results weighted by shard size:
    ``theta + server_lr * (average - theta)``. The optimizer's state starts afresh each
    round; its step counter continues, so learning-rate schedules run across rounds.
    ``local_steps=None`` is one-shot averaging: every worker trains on its shard for all
    ``epochs`` and the results are averaged once. ``batch_size=None`` uses whole shards.
    """

    name = "local-sgd"

    def __init__(
        self,
        local_steps: int | None = 16,
        batch_size: int | None = 64,
        server_lr: float = 1.0,
        compress: str | None = None,
    ) -> None:
        check_positive_int("local_steps", local_steps, allow_none=True, what="a positive integer or None")
        if not isinstance(server_lr, (int, float)) or not 0.0 < server_lr <= 10.0:
            raise ConfigError(f"server_lr must be in (0, 10], got {server_lr!r}")
        self.local_steps = None if local_steps is None else int(local_steps)
        check_positive_int("batch_size", batch_size, allow_none=True)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.server_lr = float(server_lr)
        self.compress = compress
        get_compressor(compress)

    def _batches_per_epoch(self, num_rows: int) -> int:
        return 1 if self.batch_size is None else math.ceil(num_rows / self.batch_size)

    def rounds_per_epoch(self, shard_sizes: Sequence[int]) -> int:
        """Rounds in which the largest shard makes about one pass (at least one round)."""
        if self.local_steps is None:
            return 1
        return max(1, round(self._batches_per_epoch(max(shard_sizes)) / self.local_steps))

    def total_rounds(self, shard_sizes: Sequence[int], epochs: int) -> int:
        """Enough rounds for ``epochs`` passes over the largest shard."""
        if self.local_steps is None:
            return 1
        return math.ceil(epochs * self._batches_per_epoch(max(shard_sizes)) / self.local_steps)

    def epoch_of(self, round_index: int, shard_sizes: Sequence[int]) -> int:
        if self.local_steps is None:
            return 0
        return round_index * self.local_steps // self._batches_per_epoch(max(shard_sizes))

    def worker_step(
        self,
        shard: Shard,
        model: Model,
        optimizer: Optimizer,
        params: np.ndarray,
        round_index: int,
        plan: RoundPlan,
    ) -> WorkerResult:
        per_epoch = self._batches_per_epoch(shard.num_rows)
        if self.local_steps is None:
            first, num_steps = 0, plan.epochs * per_epoch
        else:
            first, num_steps = round_index * self.local_steps, self.local_steps
        optimizer = optimizer.starting_at(first)
        state = optimizer.init(params)
        theta, loss_total, processed = params, 0.0, 0
        for batch in range(first, first + num_steps):
            rows = batch_rows(shard, plan.seed, *divmod(batch, per_epoch), self.batch_size)
            X, y = model.take_rows(shard.X, rows), take_rows(shard.labels, rows)
            loss, grad = model.loss_grad(theta, X, y)
            grad = model.restrict(grad)
            penalty, penalty_grad = model.penalty(theta)
            loss_total += loss / X.shape[0] + penalty
            processed += X.shape[0]
            theta, state = optimizer.update(grad / X.shape[0] + penalty_grad, state, theta)
        # Compressed, the worker sends its change of the parameters rather than them.
        sent = theta if self.compress is None else self.send(shard, theta - params, plan, round_index)
        loss_sum = loss_total / num_steps * shard.num_rows  # weighted by the shard, as the average is
        return WorkerResult(shard.num_rows, loss_sum, sent, processed=processed)

    def settings(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "batch_size": self.batch_size, "server_lr": self.server_lr}

    def round(
        self, run_workers: RunWorkers, params: np.ndarray, opt_state: Any, model: Model, optimizer: Optimizer
    ) -> StepOutcome:
        """The workers train from ``params``; their results are averaged. The coordinator's
        optimizer state is untouched: each worker's optimizer starts afresh every round."""
        return self.combine(run_workers(params), params)._replace(opt_state=opt_state)

    def combine(self, results: Sequence[WorkerResult], params: np.ndarray) -> StepOutcome:
        """The shard-weighted average of the workers' parameters (or of their changes)."""
        counts = [result.count for result in results]
        if self.compress is None:
            average = weighted_mean([result.vector for result in results], counts)
        else:
            deltas = [result.vector for result in self.receive(results, len(params))]
            average = params + weighted_mean(deltas, counts)
        new_params = average if self.server_lr == 1.0 else params + self.server_lr * (average - params)
        loss = sum(result.loss_sum for result in results) / sum(counts)
        return StepOutcome(new_params, None, loss, None)


STRATEGIES: dict[str, type[Strategy]] = {"gd": GradientDescent, "sgd": SGD, "local-sgd": LocalSGD}


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """A strategy by name (``gd``, ``sgd``, ``local-sgd``) with its keyword arguments."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)
