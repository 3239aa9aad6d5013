"""The round loop: set-up on the workers, rounds until converged, history and progress.

:func:`train` checks its settings, starts the engine, sets the model up from statistics
the workers gather, and runs a :class:`RoundLoop`. Each round hands the next one a
:class:`LoopState` (parameters, optimizer state, history, convergence); nothing passes
between methods through attributes set on the side.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paragrad.callbacks.base import Callback, CallbackList, RoundFunction, TrainInfo
from paragrad.checkpoint import (
    Checkpointing,
    CheckpointWarning,
    TrainingState,
    load_latest_checkpoint,
)
from paragrad.convergence import ConvergenceCheck, no_finite_optimum
from paragrad.data import Dataset, Moments, Standardizer, combine_moments
from paragrad.engines import Engine, make_engine
from paragrad.errors import (
    ConfigError,
    ConvergenceWarning,
    TrainingDiverged,
    WorkerError,
    WorkerLost,
)
from paragrad.models.base import LinearLayout, Model
from paragrad.optim import Optimizer
from paragrad.run import HISTORY_KEYS, Run, RunConfig
from paragrad.settings import check_inputs, check_settings, default_optimizer
from paragrad.shards import StateField, plan_shards
from paragrad.strategies import GradientDescent, RoundPlan, StepOutcome, Strategy, WorkerResult
from paragrad.tasks import DescribeShard, GetWorkerState, SetWorkerState, StandardizeShard, TrainStep

EXPLODED = 1e12  # a loss this many times the first one has diverged, even while finite


def train(
    model: Model,
    data: Dataset,
    *,
    strategy: Strategy | None = None,
    optimizer: Optimizer | None = None,
    engine: str | Engine = "local",
    workers: int | None = None,
    epochs: int | None = None,
    max_rounds: int | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    standardize: bool = False,
    shuffle: bool = False,
    progress: bool | None = None,
    dtype: str | np.dtype = "float64",
    max_restarts: int = 0,
    threads_per_worker: int = 1,
    address: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | str | None = None,
    resume: bool = False,
    keep_checkpoints: int = 3,
    callbacks: list[Callback | RoundFunction] | None = None,
) -> Run:
    """Train ``model`` on ``data`` with a distributed strategy.

    Parameters
    ----------
    model : Model
        An untrained model from :mod:`paragrad.models`; it is set up and trained in place.
    data : Dataset
        Features and labels (see :func:`paragrad.load` and :class:`paragrad.Dataset`).
    strategy : Strategy, default GradientDescent()
        ``GradientDescent()``, ``SGD(batch_size)`` or ``LocalSGD(local_steps, batch_size)``.
    optimizer : Optimizer, optional
        ``optim.SGD``, ``optim.Adam`` or ``optim.LBFGS`` (full batch only). Default:
        LBFGS for GradientDescent on the linear models, else ``Adam(lr=0.01)``.
    engine : {"serial", "local", "ray"} or Engine
        Where the workers run; an Engine object is used as is and left open.
    workers : int, optional
        Number of workers (shards); default one per core.
    epochs : int, optional
        Passes over the data (for ``LocalSGD(local_steps=None)``: local passes); for
        GradientDescent, rounds. Default: 500 for GradientDescent (it stops when
        converged), 10 for the stochastic strategies.
    max_rounds : int, optional
        A cap on rounds, below ``epochs``.
    tol : float
        Stop when the gradient's largest entry falls to ``tol`` (GradientDescent) or the
        epoch's mean loss changes by at most ``tol * max(1, |loss|)`` (stochastic).
        ``0`` trains for the whole budget.
    seed : int
        Seeds the initial parameters, the sampling and the shuffle.
    standardize : bool
        Scale features to mean 0 and variance 1, with statistics computed per shard and
        combined; the model keeps them and applies them when predicting.
    shuffle : bool
        Shuffle rows before splitting them into shards.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    dtype : {"float64", "float32"}
        Float type of the data on the workers.
    max_restarts : int
        How many dead workers to restart, replaying their round, before stopping with
        :class:`~paragrad.errors.WorkerLost` (local and ray engines).
    threads_per_worker : int
        BLAS threads in each local worker process; on Ray, the CPUs each actor reserves.
    address : str, optional
        Ray engine: ``HOST:PORT`` of a running cluster to join (default ``RAY_ADDRESS``,
        else a local Ray instance started for the run).
    checkpoint_dir : path, optional
        Write checkpoints here (atomically, with a checksum), and a last one at the end.
    checkpoint_every : int or str, optional
        Every so many rounds (``10``) or seconds (``"30s"``); default every 60 seconds.
    resume : bool
        Go on from the newest intact checkpoint in ``checkpoint_dir`` (a damaged newest
        one is skipped with a warning). The run ends with the parameters it would have
        had without the interruption. The worker count may differ (the data is then
        re-sharded and the sampling stream changes); the model, the data's shape, the
        strategy, the optimizer and the seed may not.
    keep_checkpoints : int
        How many of the newest checkpoints to keep.
    callbacks : list, optional
        :class:`paragrad.callbacks.Callback` objects (``TensorBoard(dir)``, ``MLflow()``) or
        functions ``f(record)`` of each round's history record; True from either stops the
        run after that round (``run.stopped == "stopped by a callback"``).

    Returns
    -------
    Run
        ``run.model``, ``run.params``, ``run.history``, ``run.summary()``, ``run.save()``.
    """
    strategy = GradientDescent() if strategy is None else strategy
    check_inputs(model, data, strategy)
    optimizer = default_optimizer(model, strategy, data) if optimizer is None else optimizer
    epochs = strategy.default_epochs if epochs is None else epochs
    check_settings(model, strategy, optimizer, epochs, max_rounds, workers, tol)
    data = data.astype(dtype)
    if standardize and data.sparse:
        raise ConfigError("standardize=True would make sparse features dense; scale them beforehand instead")
    checkpoints = Checkpointing.parse(checkpoint_dir, checkpoint_every, keep_checkpoints)
    hooks = CallbackList.of(callbacks)
    config = RunConfig.of(model, data, strategy, optimizer, seed, dtype, standardize, shuffle)
    resumed = _load_resume_state(checkpoint_dir, config, model, optimizer) if resume else None

    own_engine = not isinstance(engine, Engine)
    runner = (
        engine
        if isinstance(engine, Engine)
        else make_engine(
            engine, workers, address=address, max_restarts=max_restarts, threads_per_worker=threads_per_worker
        )
    )
    try:
        plan = plan_shards(data.num_rows, runner.num_workers, shuffle=shuffle, seed=seed)
        runner.start(data, plan)
        # The features' moments make L-BFGS's preconditioner.
        want = optimizer.takes_scales and isinstance(model, LinearLayout)
        standardizer = None if resumed is None else resumed.standardizer
        stats = _set_up_model(model, data, runner, standardize, standardizer, want)
        if stats is not None and isinstance(model, LinearLayout) and optimizer.takes_scales:
            optimizer = optimizer.with_scales(model.param_scales(root_mean_square(stats)))
        config = config.with_classes(model.classes_)
        if resumed is not None and resumed.config.get("classes") != config.classes:
            raise ConfigError(
                f"{checkpoint_dir}: the checkpoint was made for classes {resumed.config.get('classes')}, "
                f"but this data has {config.classes}"
            )
        loop = RoundLoop(model, runner, plan.sizes, strategy, optimizer, epochs, max_rounds, tol, seed)
        done = 0 if resumed is None else resumed.round
        hooks.train_start(TrainInfo(config.to_json(), runner.name, runner.num_workers, loop.total, done))
        with hooks.reporting_errors():
            run = loop.run(resumed, checkpoints, config, progress, hooks)
        hooks.train_end(run)
        return run
    finally:
        if own_engine:
            runner.close()


def _load_resume_state(
    checkpoint_dir: str | os.PathLike | None, config: RunConfig, model: Model, optimizer: Optimizer
) -> TrainingState | None:
    """The newest checkpoint of this same run, or None (with a warning) when there is none."""
    if checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir (--checkpoint DIR)")
    model.setup(config.num_features, None if not model.is_classifier else np.arange(2.0))
    opt_state_type = type(optimizer.init(model.init_params()))
    state = load_latest_checkpoint(checkpoint_dir, HISTORY_KEYS, opt_state_type)
    if state is None:
        warnings.warn(
            f"{checkpoint_dir}: no checkpoint to resume from; starting from the beginning",
            CheckpointWarning,
            stacklevel=3,
        )
        return None
    differences = config.differences(state.config)
    if differences:
        raise ConfigError(
            f"{checkpoint_dir}: the checkpoint belongs to another run; it differs in "
            + "; ".join(differences)
        )
    return state


def _set_up_model(
    model: Model,
    data: Dataset,
    runner: Engine,
    standardize: bool,
    standardizer: Standardizer | None,
    want_moments: bool,
) -> Moments | None:
    """Fix the model's shapes and standardisation from statistics gathered shard by shard;
    with ``want_moments``, return the features' moments as the model sees them.

    A resumed run brings its ``standardizer``, so it scales exactly as before.
    """
    gather = (standardize and standardizer is None) or want_moments
    described = runner.run(DescribeShard(model.is_classifier, gather))
    labels = None
    if model.is_classifier:
        labels = np.unique(np.concatenate([shard_labels for _, shard_labels, _ in described]))
    model.setup(data.num_features, labels, feature_names=data.feature_names, target_name=data.target_name)
    model.standardizer_ = None
    stats = combine_moments([part for *_, part in described]) if gather else None
    if standardize:
        model.standardizer_ = standardizer or Standardizer.from_moments(stats)  # type: ignore[arg-type]
        runner.run(StandardizeShard(model.standardizer_))
        stats = Moments(data.num_rows, np.zeros(data.num_features), np.full(data.num_features, data.num_rows))
    return stats if want_moments else None


def root_mean_square(stats: Moments) -> np.ndarray:
    """Each feature's root mean square: its scale, offset included (1 for a zero column)."""
    rms = np.sqrt(stats.m2 / stats.count + stats.mean**2)
    return np.where(rms > 0, rms, 1.0)


def _progress_bar(total: int, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(total=total, unit="round", disable=not show, leave=False, file=sys.stderr, dynamic_ncols=True)


@dataclass
class LoopState:
    """What one round hands the next: parameters, optimizer state, history, convergence."""

    params: np.ndarray
    opt_state: Any
    history: list[dict[str, Any]]
    check: ConvergenceCheck
    converged: bool = False
    first_loss: float | None = None
    norms: list[float] = field(default_factory=list)  # the parameters' largest entry, each round


@dataclass
class PassMeter:
    """What the workers' passes of one round cost (a line search makes several passes)."""

    runner: Engine
    compute_s: float = 0.0
    busy_s: float = 0.0
    wait_s: float = 0.0
    run_s: float = 0.0
    sent: int = 0
    received: int = 0
    samples: int = 0
    results: list[WorkerResult] = field(default_factory=list)

    def run(self, task: TrainStep, point: np.ndarray, round_index: int) -> list[WorkerResult]:
        """One pass of every worker at ``point``; errors name the round."""
        start = time.perf_counter()
        try:
            results: list[WorkerResult] = self.runner.run(task, point, round_index)
        except (WorkerLost, WorkerError) as exc:
            raise type(exc)(f"round {round_index}: {exc}") from exc
        self.run_s += time.perf_counter() - start
        slowest = max(result.compute_s for result in results)
        # Serial workers compute one after another: all of it is inside run_s.
        self.busy_s += slowest if self.runner.parallel else sum(result.compute_s for result in results)
        self.compute_s += slowest
        self.wait_s += slowest - sum(result.compute_s for result in results) / len(results)
        self.samples += sum(result.count for result in results)
        self.sent += self.runner.last_bytes_sent
        self.received += self.runner.last_bytes_received
        return results

    def record(self, round_index: int, epoch: int, loss: float, wall_s: float) -> dict[str, Any]:
        """The round's history record (the keys of ``HISTORY_KEYS``)."""
        return {
            "round": round_index,
            "epoch": epoch,
            "loss": float(loss),
            "wall_s": wall_s,
            "compute_s": self.compute_s,
            "comm_s": max(self.run_s - self.busy_s, 0.0),
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "samples": self.samples,
            "wait_s": self.wait_s,
        }


class RoundLoop:
    """The rounds of one run: broadcast, combine, record, check, checkpoint."""

    def __init__(
        self,
        model: Model,
        runner: Engine,
        shard_sizes: tuple[int, ...],
        strategy: Strategy,
        optimizer: Optimizer,
        epochs: int,
        max_rounds: int | None,
        tol: float,
        seed: int,
    ) -> None:
        self.model, self.runner, self.shard_sizes = model, runner, shard_sizes
        self.strategy, self.optimizer, self.tol, self.seed = strategy, optimizer, tol, seed
        rounds_per_epoch = strategy.rounds_per_epoch(shard_sizes)
        self.total = strategy.total_rounds(shard_sizes, epochs)
        if max_rounds is not None:
            self.total = min(self.total, max_rounds)
        self.task = TrainStep(strategy, model, optimizer, RoundPlan(seed, rounds_per_epoch, epochs))
        self.state_fields: tuple[StateField, ...] = strategy.worker_state(model.num_params)

    def run(
        self,
        resumed: TrainingState | None,
        checkpoints: Checkpointing,
        config: RunConfig,
        progress: bool | None,
        hooks: CallbackList,
    ) -> Run:
        state = self.initial_state(resumed)
        started = time.perf_counter()
        stalled = solved = halted = False
        with _progress_bar(self.total, progress) as bar:
            bar.update(len(state.history))
            for round_index in range(len(state.history), self.total):
                if state.converged:
                    break
                outcome = self.round(round_index, state)
                solved = outcome.solved
                halted = hooks.round_end(state.history[-1])
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{outcome.loss:.5g}", refresh=False)
                if outcome.stalled:  # a stalled search is no convergence, whatever it measured
                    stalled, state.converged = True, False
                    break
                if halted:  # the last checkpoint, below, is written all the same
                    break
                if checkpoints.due(round_index + 1):
                    checkpoints.write(self.snapshot(state, config), HISTORY_KEYS)
        if checkpoints.directory is not None:
            checkpoints.write(self.snapshot(state, config), HISTORY_KEYS)
        unbounded = self.unbounded(state)
        if unbounded is not None:
            warnings.warn(unbounded, ConvergenceWarning, stacklevel=4)
        elif self.tol > 0 and not state.converged and self.total > 1 and not (stalled or halted):
            warnings.warn(
                f"stopped after {len(state.history)} rounds without converging to tol={self.tol:g}; "
                "raise epochs (or max_rounds) or tol",
                ConvergenceWarning,
                stacklevel=4,
            )
        self.model.params_ = state.params
        elapsed = time.perf_counter() - started
        stopped = "solved" if solved else "converged" if state.converged else "round limit"
        stopped = "line search stalled" if stalled else stopped
        stopped = "stopped by a callback" if halted and not state.converged else stopped
        return Run(
            self.model,
            state.history,
            state.converged and unbounded is None,
            self.strategy,
            self.runner.name,
            self.runner.num_workers,
            elapsed,
            "no finite optimum" if unbounded is not None else stopped,
        )

    def unbounded(self, state: LoopState) -> str | None:
        """Why an unpenalised linear classifier has no finite optimum, if it has none."""
        model = self.model
        if not model.is_classifier or model.l2 > 0 or self.strategy.stochastic or not state.history:
            return None
        losses = [record["loss"] for record in state.history]
        largest = float(np.abs(state.params).max())
        return no_finite_optimum(losses, state.norms, self.optimizer.needs == "hessian", largest)

    def initial_state(self, resumed: TrainingState | None) -> LoopState:
        """A fresh start, or the checkpoint's state (worker state handed back to the workers)."""
        check = ConvergenceCheck(self.tol, self.strategy.stochastic)
        if resumed is None:
            params = self.model.init_params(self.seed)
            return LoopState(params, self.optimizer.init(params), [], check)
        check.restore(resumed.convergence)
        history = resumed.history
        self.restore_worker_state(resumed.worker_state)
        return LoopState(
            resumed.params,
            resumed.opt_state,
            history,
            check,
            converged=resumed.convergence.get("converged", False),
            first_loss=history[0]["loss"] if history else None,
        )

    def restore_worker_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Hand the workers their declared state back, if the worker count allows."""
        if not self.state_fields or not arrays:
            return
        rows = {len(array) for array in arrays.values()}
        if set(arrays) != {f.name for f in self.state_fields} or rows != {self.runner.num_workers}:
            warnings.warn(
                f"the checkpoint has error-feedback state for {max(rows)} workers, not "
                f"{self.runner.num_workers}: it starts again from zero",
                CheckpointWarning,
                stacklevel=5,
            )
            return
        self.runner.run(SetWorkerState(self.state_fields, tuple(arrays[f.name] for f in self.state_fields)))

    def snapshot(self, state: LoopState, config: RunConfig) -> TrainingState:
        """Everything needed to go on from the next round (the workers' state included)."""
        worker_state: dict[str, np.ndarray] = {}
        if self.state_fields:
            per_worker = self.runner.run(GetWorkerState(self.state_fields))
            worker_state = {
                f.name: np.stack([arrays[i] for arrays in per_worker])
                for i, f in enumerate(self.state_fields)
            }
        convergence = {**state.check.state(), "converged": state.converged}
        return TrainingState(
            len(state.history),
            state.params,
            state.opt_state,
            state.history,
            convergence,
            self.model.standardizer_,
            config.to_json(),
            worker_state,
        )

    def round(self, round_index: int, state: LoopState) -> StepOutcome:
        """One round, recorded in ``state``; raises TrainingDiverged, keeping the last
        finite parameters, if the result is not finite."""
        start = time.perf_counter()
        meter = PassMeter(self.runner)
        with np.errstate(over="ignore", invalid="ignore"):
            outcome = self.strategy.round(
                lambda point: meter.run(self.task, point, round_index),
                state.params,
                state.opt_state,
                self.model,
                self.optimizer,
            )
        epoch = self.strategy.epoch_of(round_index, self.shard_sizes)
        self.check_finite(round_index, outcome, state)
        state.history.append(meter.record(round_index, epoch, outcome.loss, time.perf_counter() - start))
        state.params, state.opt_state = outcome.params, outcome.opt_state
        state.norms.append(float(np.abs(outcome.params).max()))
        epoch_ends = self.strategy.epoch_of(round_index + 1, self.shard_sizes) != epoch
        state.converged = state.check.update(outcome, epoch_ends)
        return outcome

    def check_finite(self, round_index: int, outcome: StepOutcome, state: LoopState) -> None:
        """Raise TrainingDiverged when the loss or parameters are not finite, or exploded."""
        if state.first_loss is None:
            state.first_loss = outcome.loss
        exploded = abs(outcome.loss) > EXPLODED * max(1.0, abs(state.first_loss))
        if exploded or not (math.isfinite(outcome.loss) and np.isfinite(outcome.params).all()):
            self.model.params_ = state.params
            raise TrainingDiverged(
                f"training diverged at round {round_index} (loss {outcome.loss:g}): "
                f"lower the learning rate (now {self.optimizer.describe_lr()})",
                state.params,
                round_index,
            )
