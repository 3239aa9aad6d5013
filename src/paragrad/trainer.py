"""The round loop: set-up on the workers, rounds until converged, history and progress."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.checkpoint import CheckpointWarning, TrainingState, load_latest_checkpoint, save_checkpoint
from paragrad.data import Dataset, Standardizer, combine_moments
from paragrad.engines import Engine, make_engine
from paragrad.errors import (
    ConfigError,
    ConvergenceWarning,
    DataError,
    TrainingDiverged,
    WorkerError,
    WorkerLost,
)
from paragrad.models.base import LinearLayout, Model
from paragrad.optim import LBFGS, Adam, Optimizer
from paragrad.shards import plan_shards
from paragrad.strategies import GradientDescent, RoundPlan, StepOutcome, Strategy, objective
from paragrad.tasks import DescribeShard, GetWorkerState, SetWorkerState, StandardizeShard, TrainStep

EXPLODED = 1e12  # a loss this many times the first one has diverged, even while finite
HISTORY_KEYS = (
    "round",
    "epoch",
    "loss",
    "wall_s",
    "compute_s",
    "comm_s",
    "bytes_sent",
    "bytes_received",
    "samples",
    "wait_s",
)


# -- the result -----------------------------------------------------------------------------


@dataclass
class Run:
    """A finished training run: the trained model and one history record per round."""

    model: Model
    history: list[dict[str, Any]]
    converged: bool
    strategy: Strategy
    engine: str
    num_workers: int
    wall_s: float

    @property
    def params(self) -> np.ndarray:
        """The trained flat parameter vector."""
        return self.model.params

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan

    def summary(self) -> str:
        """A table of the run: rounds, loss, speed, where the time went, traffic and cost.

        Each round's wall time splits into computing (the workers' mean), waiting for the
        slowest worker, communication (moving data between processes) and the
        coordinator's own work. Worker-seconds are workers x wall time: what a
        pay-per-use cloud bills for holding the workers.
        """
        total = {key: sum(record[key] for record in self.history) for key in HISTORY_KEYS[3:]}
        wait, slowest = total["wait_s"], total["compute_s"]
        compute = slowest - wait
        coordinator = max(total["wall_s"] - slowest - total["comm_s"], 0.0)
        wall = max(total["wall_s"], 1e-12)
        lines = [
            f"model       {self.model!r}",
            f"strategy    {self.strategy!r} on {self.engine} engine, {self.num_workers} workers",
            f"rounds      {len(self.history)} ({'converged' if self.converged else 'stopped at the limit'})",
            f"final loss  {self.final_loss:.6g}",
            f"speed       {total['samples'] / wall:,.0f} samples/s",
            f"time        {total['wall_s']:.3f} s: computing {compute:.3f} s, waiting for the slowest "
            f"{wait:.3f} s, communication {total['comm_s']:.3f} s, coordinator {coordinator:.3f} s",
            f"traffic     {total['bytes_sent'] / 1e6:.3f} MB sent, "
            f"{total['bytes_received'] / 1e6:.3f} MB received",
            f"cost        {total['wall_s'] * self.num_workers:.3f} worker-seconds",
            f"stragglers  {slowest / compute if compute > 0 else 1.0:.2f} (slowest worker's compute / mean)",
        ]
        return "\n".join(lines)

    def save(self, path) -> None:
        """Write the trained model to a ``.npz`` model file (see :func:`paragrad.load_model`)."""
        from paragrad.checkpoint import save_model

        save_model(self.model, path)


# -- the loop -------------------------------------------------------------------------------


class ConvergenceCheck:
    """Decides after each round whether training has converged to ``tol``.

    Full-batch strategies converge when the gradient's largest entry is at most ``tol``;
    stochastic ones when an epoch's mean loss differs from the previous epoch's by at most
    ``tol * max(1, |previous|)``. ``tol=0`` never converges.
    """

    def __init__(self, tol: float, stochastic: bool) -> None:
        self.tol, self.stochastic = tol, stochastic
        self.previous_epoch_loss: float | None = None
        self.epoch_losses: list[float] = []

    def state(self) -> dict[str, Any]:
        return {"previous_epoch_loss": self.previous_epoch_loss, "epoch_losses": list(self.epoch_losses)}

    def restore(self, state: dict[str, Any]) -> None:
        self.previous_epoch_loss = state["previous_epoch_loss"]
        self.epoch_losses = list(state["epoch_losses"])

    def update(self, outcome: StepOutcome, epoch_ends: bool) -> bool:
        if self.tol == 0:
            return False
        if not self.stochastic and outcome.grad_norm is not None:
            return outcome.grad_norm <= self.tol
        self.epoch_losses.append(outcome.loss)
        if not epoch_ends:
            return False
        epoch_loss = float(np.mean(self.epoch_losses))
        previous, self.previous_epoch_loss, self.epoch_losses = (
            self.previous_epoch_loss,
            epoch_loss,
            [],
        )
        return previous is not None and abs(previous - epoch_loss) <= self.tol * max(1.0, abs(previous))


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def train(
    model: Model,
    data: Dataset,
    *,
    strategy: Strategy | None = None,
    optimizer: Optimizer | None = None,
    engine: str | Engine = "local",
    workers: int | None = None,
    epochs: int = 10,
    max_rounds: int | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    standardize: bool = False,
    shuffle: bool = False,
    progress: bool | None = None,
    dtype="float64",
    max_restarts: int = 0,
    threads_per_worker: int = 1,
    address: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | str | None = None,
    resume: bool = False,
    keep_checkpoints: int = 3,
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
    epochs : int
        Passes over the data (for ``LocalSGD(local_steps=None)``: local passes).
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

    Returns
    -------
    Run
        ``run.model``, ``run.params``, ``run.history``, ``run.summary()``, ``run.save()``.
    """
    if not isinstance(model, Model):
        raise ConfigError(f"model must be a paragrad model, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ConfigError(
            "data must be a paragrad.Dataset: build one with pg.Dataset(X, y) or pg.load(path, target=...)"
        )
    if not data.has_labels:
        raise DataError(f"{data.source}: no target values to train on (name the label column with target=)")
    strategy = GradientDescent() if strategy is None else strategy
    optimizer = default_optimizer(model, strategy) if optimizer is None else optimizer
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy must be a paragrad strategy, got {type(strategy).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(f"optimizer must be a paragrad optimizer, got {type(optimizer).__name__}")
    if getattr(optimizer, "needs_objective", False) and not isinstance(strategy, GradientDescent):
        raise ConfigError(f"{optimizer.name} needs full-batch training: use the GradientDescent strategy")
    if getattr(optimizer, "needs_objective", False) and strategy.compress is not None:
        raise ConfigError(f"{optimizer.name}'s line search needs exact gradients: compress with sgd or adam")
    _check_positive_int("epochs", epochs)
    _check_positive_int("max_rounds", max_rounds, allow_none=True)
    _check_positive_int("workers", workers, allow_none=True)
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise ConfigError(f"tol must be a non-negative number, got {tol!r}")
    data = data.astype(dtype)
    if standardize and data.sparse:
        raise ConfigError("standardize=True would make sparse features dense; scale them beforehand instead")
    every = Checkpointing.parse(checkpoint_dir, checkpoint_every, keep_checkpoints)
    config = _run_config(model, data, strategy, optimizer, seed, dtype, standardize, shuffle)
    state = _load_resume_state(checkpoint_dir, config, model, optimizer) if resume else None

    own_engine = not isinstance(engine, Engine)
    options = {"max_restarts": max_restarts, "threads_per_worker": threads_per_worker, "address": address}
    runner = make_engine(engine, workers, **options) if own_engine else engine
    try:
        plan = plan_shards(data.num_rows, runner.num_workers, shuffle=shuffle, seed=seed)
        runner.start(data, plan)
        _set_up_model(model, data, runner, standardize, None if state is None else state.standardizer)
        if state is not None and state.config.get("classes") != _classes(model):
            raise ConfigError(
                f"{checkpoint_dir}: the checkpoint was made for classes {state.config.get('classes')}, "
                f"but this data has {_classes(model)}"
            )
        config["classes"] = _classes(model)
        loop = RoundLoop(model, runner, plan.sizes, strategy, optimizer, epochs, max_rounds, tol, seed)
        return loop.run(state, every, config, progress)
    finally:
        if own_engine:
            runner.close()


def default_optimizer(model: Model, strategy: Strategy) -> Optimizer:
    """LBFGS for uncompressed full-batch training of the linear models, else Adam(lr=0.01)."""
    if (
        isinstance(strategy, GradientDescent)
        and isinstance(model, LinearLayout)
        and strategy.compress is None
    ):
        return LBFGS()
    return Adam(lr=0.01)


def _classes(model: Model) -> list[int] | None:
    return None if model.classes_ is None else model.classes_.tolist()


def _run_config(model, data, strategy, optimizer, seed, dtype, standardize, shuffle) -> dict[str, Any]:
    """What identifies a run: a checkpoint resumes only a run with the same values."""
    return {
        "model": model.name,
        "model_config": model.get_config(),
        "num_rows": data.num_rows,
        "num_features": data.num_features,
        "strategy": repr(strategy),
        "optimizer": repr(optimizer),
        "seed": seed,
        "dtype": str(np.dtype(dtype)),
        "standardize": standardize,
        "shuffle": shuffle,
    }


def _load_resume_state(checkpoint_dir, config, model: Model, optimizer: Optimizer) -> TrainingState | None:
    if checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir (--checkpoint DIR)")
    model.setup(config["num_features"], None if not model.is_classifier else np.arange(2.0))
    opt_state_type = type(optimizer.init(model.init_params()))
    state = load_latest_checkpoint(checkpoint_dir, HISTORY_KEYS, opt_state_type)
    if state is None:
        warnings.warn(
            f"{checkpoint_dir}: no checkpoint to resume from; starting from the beginning",
            CheckpointWarning,
            stacklevel=3,
        )
        return None
    differences = [
        f"{key} {state.config.get(key)!r} (now {value!r})"
        for key, value in config.items()
        if state.config.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"{checkpoint_dir}: the checkpoint belongs to another run; it differs in "
            + "; ".join(differences)
        )
    return state


def _set_up_model(
    model: Model, data: Dataset, runner: Engine, standardize: bool, standardizer: Standardizer | None
) -> None:
    """Fix the model's shapes and standardisation from statistics gathered shard by shard.

    A resumed run brings its ``standardizer``, so it scales exactly as before.
    """
    described = runner.run(DescribeShard(model.is_classifier, standardize and standardizer is None))
    labels = None
    if model.is_classifier:
        labels = np.unique(np.concatenate([shard_labels for _, shard_labels, _ in described]))
    model.setup(data.num_features, labels, feature_names=data.feature_names, target_name=data.target_name)
    model.standardizer_ = None
    if standardize:
        model.standardizer_ = standardizer or Standardizer.from_moments(
            combine_moments([stats for *_, stats in described])
        )
        runner.run(StandardizeShard(model.standardizer_))


def _progress_bar(total: int, show: bool | None):
    from tqdm.auto import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(
        total=total,
        unit="round",
        disable=not show,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


@dataclass
class Checkpointing:
    """When and where a run writes checkpoints: every so many rounds or seconds."""

    directory: Path | None
    every_rounds: int | None
    every_s: float | None
    keep: int
    last_written: float = 0.0

    @classmethod
    def parse(cls, directory, every: int | str | None, keep: int) -> Checkpointing:
        _check_positive_int("keep_checkpoints", keep)
        if directory is None:
            if every is not None:
                raise ConfigError("checkpoint_every needs checkpoint_dir (--checkpoint DIR)")
            return cls(None, None, None, keep)
        text = "60s" if every is None else str(every).strip()
        try:
            if text.endswith("s"):
                seconds = float(text[:-1])
                if not seconds > 0:
                    raise ValueError
                return cls(Path(directory), None, seconds, keep, time.monotonic())
            rounds = int(text)
            if rounds < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"checkpoint_every must be a positive number of rounds (10) or seconds (30s), got {every!r}"
            ) from None
        return cls(Path(directory), rounds, None, keep, time.monotonic())

    def due(self, rounds_done: int) -> bool:
        if self.directory is None:
            return False
        if self.every_rounds is not None:
            return rounds_done % self.every_rounds == 0
        return time.monotonic() - self.last_written >= self.every_s

    def write(self, state: TrainingState) -> None:
        save_checkpoint(self.directory, state, HISTORY_KEYS, self.keep)
        self.last_written = time.monotonic()


class RoundLoop:
    """The rounds of one run: broadcast, combine, record, check, checkpoint."""

    def __init__(
        self, model, runner, shard_sizes, strategy, optimizer, epochs, max_rounds, tol, seed
    ) -> None:
        self.model, self.runner, self.shard_sizes = model, runner, shard_sizes
        self.strategy, self.optimizer, self.tol, self.seed = strategy, optimizer, tol, seed
        rounds_per_epoch = strategy.rounds_per_epoch(shard_sizes)
        self.total = strategy.total_rounds(shard_sizes, epochs)
        if max_rounds is not None:
            self.total = min(self.total, max_rounds)
        self.task = TrainStep(strategy, model, optimizer, RoundPlan(seed, rounds_per_epoch, epochs))
        self.first_loss: float | None = None
        self.stalled = False

    def run(self, state: TrainingState | None, checkpoints: Checkpointing, config: dict, progress) -> Run:
        strategy, optimizer, model = self.strategy, self.optimizer, self.model
        check = ConvergenceCheck(self.tol, strategy.stochastic)
        if state is None:
            params = model.init_params(self.seed)
            opt_state, history, first, converged = optimizer.init(params), [], 0, False
        else:
            params, opt_state, history, first = state.params, state.opt_state, state.history, state.round
            check.restore(state.convergence)
            self.first_loss = history[0]["loss"] if history else None
            converged = state.convergence.get("converged", False)

        keeps_state = strategy.compressor is not None and strategy.compressor.error_feedback
        if state is not None and keeps_state:
            self.restore_worker_states(state.worker_states)

        def snapshot(next_round: int) -> TrainingState:
            convergence = {**check.state(), "converged": converged}
            worker_states = None
            if keeps_state:
                fields = strategy.worker_state(len(params))
                worker_states = [
                    {field.name: array for field, array in zip(fields, arrays, strict=True)}
                    for arrays in self.runner.run(GetWorkerState(fields))
                ]
            return TrainingState(
                next_round,
                params,
                opt_state,
                history,
                convergence,
                model.standardizer_,
                config,
                worker_states,
            )

        started = time.perf_counter()
        with _progress_bar(self.total, progress) as bar:
            bar.update(first)
            for round_index in range(first, self.total):
                if converged:
                    break
                record, outcome = self.round(round_index, params, opt_state)
                history.append(record)
                params, opt_state = outcome.params, outcome.opt_state
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{outcome.loss:.5g}", refresh=False)
                epoch_ends = strategy.epoch_of(round_index + 1, self.shard_sizes) != record["epoch"]
                converged = check.update(outcome, epoch_ends)
                if self.stalled:
                    break
                if checkpoints.due(round_index + 1):
                    checkpoints.write(snapshot(round_index + 1))
        if checkpoints.directory is not None:
            checkpoints.write(snapshot(len(history)))
        if self.tol > 0 and not converged and self.total > 1 and not self.stalled:
            warnings.warn(
                f"stopped after {len(history)} rounds without converging to tol={self.tol:g}; "
                "raise epochs (or max_rounds) or tol",
                ConvergenceWarning,
                stacklevel=4,
            )
        model.params_ = params
        return Run(
            model,
            history,
            converged,
            strategy,
            self.runner.name,
            self.runner.num_workers,
            time.perf_counter() - started,
        )

    def restore_worker_states(self, states: list[dict[str, np.ndarray]] | None) -> None:
        """Hand the workers their error-feedback state back, if the worker count allows."""
        if not states:
            return
        if len(states) != self.runner.num_workers:
            warnings.warn(
                f"the checkpoint has error-feedback state for {len(states)} workers, not "
                f"{self.runner.num_workers}: it starts again from zero",
                CheckpointWarning,
                stacklevel=4,
            )
            return
        fields = self.strategy.worker_state(self.model.num_params)
        arrays = tuple(np.stack([state[field.name] for state in states]) for field in fields)
        self.runner.run(SetWorkerState(fields, arrays))

    def round(self, round_index: int, params, opt_state) -> tuple[dict[str, Any], StepOutcome]:
        """One round; raises TrainingDiverged, keeping ``params``, if the result is not finite.

        With an optimizer that minimises through whole evaluations (LBFGS), the round is
        one optimizer step, and each evaluation of its line search one pass of the workers.
        """
        start = time.perf_counter()
        passes = {
            "compute_s": 0.0,
            "busy_s": 0.0,
            "wait_s": 0.0,
            "run_s": 0.0,
            "sent": 0,
            "received": 0,
            "samples": 0,
        }

        def run_workers(point):
            pass_start = time.perf_counter()
            try:
                results = self.runner.run(self.task, point, round_index)
            except (WorkerLost, WorkerError) as exc:
                raise type(exc)(f"round {round_index}: {exc}") from exc
            passes["run_s"] += time.perf_counter() - pass_start
            slowest = max(result.compute_s for result in results)
            # Serial workers compute one after another: all of it is inside run_s.
            passes["busy_s"] += slowest if self.runner.parallel else sum(r.compute_s for r in results)
            passes["compute_s"] += slowest
            passes["wait_s"] += slowest - sum(result.compute_s for result in results) / len(results)
            passes["samples"] += sum(result.count for result in results)
            passes["sent"] += self.runner.last_bytes_sent
            passes["received"] += self.runner.last_bytes_received
            return results

        with np.errstate(over="ignore", invalid="ignore"):
            if getattr(self.optimizer, "needs_objective", False):
                evaluate = lambda point: objective(run_workers(point), point, self.model)  # noqa: E731
                new_params, new_state, loss, grad, stalled = self.optimizer.minimize_step(
                    evaluate, params, opt_state
                )
                outcome = StepOutcome(new_params, new_state, loss, float(np.abs(grad).max()))
                self.stalled = stalled
            else:
                results = run_workers(params)
                outcome = self.strategy.combine(results, params, opt_state, self.model, self.optimizer)
        record = {
            "round": round_index,
            "epoch": self.strategy.epoch_of(round_index, self.shard_sizes),
            "loss": float(outcome.loss),
            "wall_s": time.perf_counter() - start,
            "compute_s": passes["compute_s"],
            "comm_s": max(passes["run_s"] - passes["busy_s"], 0.0),
            "bytes_sent": passes["sent"],
            "bytes_received": passes["received"],
            "samples": passes["samples"],
            "wait_s": passes["wait_s"],
        }
        if self.first_loss is None:
            self.first_loss = outcome.loss
        exploded = abs(outcome.loss) > EXPLODED * max(1.0, abs(self.first_loss))
        if exploded or not (math.isfinite(outcome.loss) and np.isfinite(outcome.params).all()):
            self.model.params_ = params
            raise TrainingDiverged(
                f"training diverged at round {round_index} (loss {outcome.loss:g}): "
                f"lower the learning rate (now {self.optimizer.describe_lr()})",
                params,
                round_index,
            )
        return record, outcome
