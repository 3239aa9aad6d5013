"""The rounds of one run: broadcast, combine, record, check, checkpoint.

Each round hands the next one a :class:`LoopState` (parameters, optimizer state, history,
convergence); a round's passes of the workers are metered in a :class:`PassMeter`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from paragrad.callbacks.base import CallbackList
from paragrad.core.shards import ShardPlan, StateField, move_state
from paragrad.engines import Engine
from paragrad.engines.base import GiveState, payload_nbytes
from paragrad.errors import (
    ConvergenceWarning,
    TrainingDiverged,
    WorkerError,
    WorkerLost,
    caller_stacklevel,
    setting,
)
from paragrad.models.base import Model
from paragrad.optim import Newton, Optimizer
from paragrad.optim.line_search import LineSearchStalled
from paragrad.optim.newton import EstimateSingular
from paragrad.training.checkpoint import (
    CheckpointWarning,
    TrainingState,
)
from paragrad.training.checkpointing import Checkpointing
from paragrad.training.convergence import ConvergenceCheck, no_finite_optimum
from paragrad.training.elastic import AutoScaler
from paragrad.training.energy import EnergyMeter
from paragrad.training.hessian_schedule import HessianSchedule
from paragrad.training.run import HISTORY_KEYS, Run, RunConfig
from paragrad.training.strategies import RoundPlan, StepOutcome, Strategy, WorkerResult
from paragrad.training.tasks import GetWorkerState, TrainStep

EXPLODED = 1e12  # a loss this many times the first one has diverged, even while finite


class _NoBar:
    """The progress bar of a run that shows none: it costs nothing per round."""

    disable = True

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def update(self, count: int) -> None:
        pass


def _progress_bar(total: int, show: bool | None) -> Any:
    # Unless asked for, shown on a terminal once a run has taken a second: short runs print nothing.
    shown, delay = (sys.stderr.isatty(), 1.0) if show is None else (show, 0.0)
    if not shown:
        return _NoBar()
    from tqdm.auto import tqdm

    style = {"unit": "round", "leave": False, "file": sys.stderr, "dynamic_ncols": True}
    return tqdm(total=total, delay=delay, **style)


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
    # Newton: whether the Hessian was singular at this run's first round (None: not seen,
    # as in a resumed run), and whether it became singular later.
    singular_first: bool | None = None
    singular_later: bool = False

    def evaluate_again(self) -> None:
        """Have Newton evaluate its point again at the next step (its state's loss NaN), as
        the Hessian it holds is no longer the one the run goes on with."""
        self.opt_state = self.opt_state._replace(loss=np.array(np.nan))


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
    worker_cpu_s: float = 0.0  # of worker processes other than the coordinator's

    def run(self, task: TrainStep, point: np.ndarray, round_index: int) -> list[WorkerResult]:
        """One pass of every worker at ``point``; errors name the round.

        Where the engine's one worker is a call in this thread (:meth:`Engine.inline_shard`),
        the step is called here, without the engine's and the task's bookkeeping: the same
        call on the same shard, counted as the engine counts it.
        """
        start = time.perf_counter()
        shard = self.runner.inline_shard()
        try:
            if shard is not None:
                results: list[WorkerResult] = [task.inline(shard, point, round_index)]
            else:
                results = self.runner.run(task, point, round_index)
        except (WorkerLost, WorkerError) as exc:
            raise type(exc)(f"round {round_index}: {exc}") from exc
        self.run_s += time.perf_counter() - start
        if shard is not None:
            self.sent += payload_nbytes((point, round_index))
            self.received += payload_nbytes(results)
        else:
            self.sent += self.runner.last_bytes_sent
            self.received += self.runner.last_bytes_received
        computing = [result.compute_s for result in results]
        slowest, summed = max(computing), sum(computing)
        # Serial workers compute one after another: all of it is inside run_s.
        self.busy_s += slowest if self.runner.parallel else summed
        self.compute_s += slowest
        self.wait_s += slowest - summed / len(results)
        for result in results:
            self.samples += result.rows_processed
            self.worker_cpu_s += result.cpu_s
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
        plan: ShardPlan,
        strategy: Strategy,
        optimizer: Optimizer,
        epochs: int,
        max_rounds: int | None,
        tol: float,
        seed: int,
        energy: EnergyMeter | None = None,
    ) -> None:
        self.model, self.runner, self.plan, self.shard_sizes = model, runner, plan, plan.sizes
        shard_sizes = plan.sizes
        self.strategy, self.optimizer, self.tol, self.seed = strategy, optimizer, tol, seed
        rounds_per_epoch = strategy.rounds_per_epoch(shard_sizes)
        self.total = strategy.total_rounds(shard_sizes, epochs)
        if max_rounds is not None:
            self.total = min(self.total, max_rounds)
        self.task = TrainStep(strategy, model, optimizer, RoundPlan(seed, rounds_per_epoch, epochs))
        self.state_fields: tuple[StateField, ...] = strategy.worker_state(model.num_params)
        self.autoscaler: AutoScaler | None = None  # set for workers="auto"
        self.initial_params: np.ndarray | None = None  # set to start from a trained model
        # The call's meter, when given: each round a lap of it, the rounds' laps part of its total.
        self.energy = EnergyMeter() if energy is None else energy
        self.energy.mark()
        self.checkpoint_s = 0.0  # the rounds' time spent on checkpoints: snapshots, waiting for writes
        self.checkpoints_written = 0
        self.config_json: tuple[RunConfig, dict[str, Any]] | None = None  # made once a run
        self.hessians = HessianSchedule()  # Newton's: when an estimate, when exact

    def run(
        self,
        resumed: TrainingState | None,
        checkpoints: Checkpointing,
        config: RunConfig | None,
        progress: bool | None,
        hooks: CallbackList,
    ) -> Run:
        """The rounds, and the last checkpoint; ``config`` is the run's configuration, which
        checkpoints carry (None without them)."""
        state = self.initial_state(resumed)
        started = time.perf_counter()
        try:
            stalled, solved, halted = self._rounds(state, checkpoints, config, progress, hooks)
            if checkpoints.directory is not None:
                self.checkpoint(state, config, checkpoints)
            waited = time.perf_counter()
            checkpoints.finish()
            self.checkpoint_s += time.perf_counter() - waited
        except BaseException:
            with contextlib.suppress(Exception):  # the write in flight lands; the first error wins
                checkpoints.finish()
            raise
        unbounded = self.unbounded(state)
        if unbounded is not None:
            warnings.warn(unbounded, ConvergenceWarning, stacklevel=caller_stacklevel())
        elif self.tol > 0 and not state.converged and self.total > 1 and not (stalled or halted):
            warnings.warn(
                f"stopped after {len(state.history)} rounds without converging to tol {self.tol:g}; "
                f"raise {setting('epochs')} (or {setting('max_rounds')}) or {setting('tol')}",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
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
            optimizer=self.optimizer.label() + self.hessians.describe(),
            changes=list(self.runner.changes),
            scaling=self.autoscaler.describe() if self.autoscaler is not None else "",
            checkpoint_s=self.checkpoint_s,
            checkpoints_written=self.checkpoints_written,
        )

    def _rounds(
        self,
        state: LoopState,
        checkpoints: Checkpointing,
        config: RunConfig | None,
        progress: bool | None,
        hooks: CallbackList,
    ) -> tuple[bool, bool, bool]:
        """The rounds until converged, stalled, halted by a callback or at the limit."""
        stalled = solved = halted = False
        caller_errors = np.geterr()
        # Overflow and invalid values are the rounds' to handle (a diverging run raises
        # TrainingDiverged): no warnings, set once for all the rounds but the callbacks'.
        with _progress_bar(self.total, progress) as bar, np.errstate(over="ignore", invalid="ignore"):
            bar.update(len(state.history))
            for round_index in range(len(state.history), self.total):
                if state.converged:
                    break
                try:
                    self.runner.between_rounds(round_index)
                except WorkerLost as exc:
                    raise WorkerLost(f"round {round_index}: {exc}") from exc
                outcome = self.round(round_index, state)
                self.autoscale(state.history[-1])
                solved = outcome.solved
                if hooks:
                    with np.errstate(**caller_errors):  # the caller's own functions, as called
                        halted = hooks.round_end(state.history[-1])
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{outcome.loss:.5g}", refresh=False)
                if outcome.stalled:  # a stalled search is no convergence, whatever it measured
                    stalled, state.converged = True, False
                    break
                if halted:  # the last checkpoint is written all the same
                    break
                if checkpoints.due(round_index + 1):
                    self.checkpoint(state, config, checkpoints)
        return stalled, solved, halted

    def checkpoint(self, state: LoopState, config: RunConfig | None, checkpoints: Checkpointing) -> None:
        """A snapshot handed to the background writer; its time is the run's checkpoint time."""
        started = time.perf_counter()
        assert config is not None, "a run with checkpoints has its configuration"
        checkpoints.write(self.snapshot(state, config), HISTORY_KEYS)
        self.checkpoint_s += time.perf_counter() - started
        self.checkpoints_written += 1

    def autoscale(self, record: dict[str, Any]) -> None:
        """workers="auto": after a round, ask for the next worker count to measure, or the best."""
        if self.autoscaler is None:
            return
        count = self.autoscaler.next_count(record)
        if count is not None:
            settled = self.autoscaler.chosen is not None
            cause = f"workers=auto: {'the fastest' if settled else 'measuring'} {count}"
            self.runner.resize(count, cause=cause, wait=False)

    def unbounded(self, state: LoopState) -> str | None:
        """Why an unpenalised linear classifier has no finite optimum, if it has none."""
        model = self.model
        if not model.is_classifier or model.l2 > 0 or self.strategy.stochastic or not state.history:
            return None
        # The rounds over all the rows: those on a sample measured another objective (and a
        # run that started afresh after them grows its weights from its first point again).
        losses = [record["loss"] for record in state.history[self.hessians.sample_rounds :]]
        norms = state.norms[max(0, len(state.norms) - len(losses)) :]
        largest = float(np.abs(state.params).max())
        saturated = state.singular_first is False and state.singular_later
        return no_finite_optimum(losses, norms, self.optimizer.needs == "hessian", largest, saturated)

    def first_params(self) -> np.ndarray:
        """The parameters a fresh run starts from: the model's first ones, or ``init``'s."""
        if self.initial_params is None:
            return self.model.init_params(self.seed)
        return self.initial_params.copy()

    def initial_state(self, resumed: TrainingState | None) -> LoopState:
        """A fresh start, or the checkpoint's state (worker state handed back to the workers)."""
        check = ConvergenceCheck(self.tol, self.strategy.stochastic)
        if resumed is None:
            params = self.first_params()
            return LoopState(params, self.optimizer.init(params), [], check)
        check.restore(resumed.convergence, resumed.history)
        self.use(self.hessians.restore(self.optimizer, resumed.convergence.get("hessians")))
        history = resumed.history
        self.restore_worker_state(resumed.worker_state)
        state = LoopState(
            resumed.params,
            resumed.opt_state,
            history,
            check,
            converged=resumed.convergence.get("converged", False),
            first_loss=history[0]["loss"] if history else None,
        )
        if self.hessians.saved_on_another_sample:  # the state's sums are not this optimizer's rows'
            state.evaluate_again()
        return state

    def restore_worker_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Hand the workers their declared state back; on another worker count, moved to
        the workers that now hold each saved worker's rows (see :func:`move_state`)."""
        if not self.state_fields or not arrays:
            return
        rows = {len(array) for array in arrays.values()}
        if set(arrays) != {f.name for f in self.state_fields} or len(rows) != 1:
            warnings.warn(
                "the checkpoint's error-feedback state is not this strategy's: it starts again from zero",
                CheckpointWarning,
                stacklevel=caller_stacklevel(),
            )
            return
        saved = self.plan.regroup(rows.pop())
        states = [{name: array[w] for name, array in arrays.items()} for w in range(saved.num_shards)]
        self.runner.run(GiveState(tuple(move_state(states, saved.bounds, self.plan.bounds))))

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
        if isinstance(self.optimizer, Newton):
            convergence["hessians"] = self.hessians.state(self.optimizer)
        if self.config_json is None or self.config_json[0] is not config:
            self.config_json = (config, config.to_json())
        # No copies: the checkpoint's arrays are copied from it before the rounds go on (and
        # the history's list is the run's own, so its rows already made are kept).
        return TrainingState(
            len(state.history),
            state.params,
            state.opt_state,
            state.history,
            convergence,
            self.model.standardizer_,
            self.config_json[1],
            worker_state,
        )

    def round(self, round_index: int, state: LoopState) -> StepOutcome:
        """One round, recorded in ``state``; raises TrainingDiverged, keeping the last
        finite parameters, if the result is not finite."""
        start = time.perf_counter()
        meter = PassMeter(self.runner)
        evaluated = isinstance(self.optimizer, Newton) and not math.isnan(state.opt_state.loss)
        step_estimated = self.hessians.step_takes_estimate(self.optimizer, evaluated)
        on_sample = isinstance(self.optimizer, Newton) and self.optimizer.on_sample
        # A search stalled on a sample ends its rounds, not the run: no warning that it stops.
        quiet = warnings.catch_warnings() if on_sample else contextlib.nullcontext()
        try:  # within the rounds' error state (see _rounds)
            with quiet:
                if on_sample:
                    warnings.simplefilter("ignore", LineSearchStalled)
                outcome = self.strategy.round(
                    lambda point: meter.run(self.task, point, round_index),
                    state.params,
                    state.opt_state,
                    self.model,
                    self.optimizer,
                )
        except EstimateSingular:  # the round again, with a better estimate or the exact Hessian
            estimated = self.optimizer
            assert isinstance(estimated, Newton)
            lesser = self.hessians.less_estimated(estimated, round_index)
            self.use(lesser)
            state.evaluate_again()
            self.start_over_if_asked(state)
            outcome = self.round(round_index, state)
            if outcome.singular and not lesser.estimated:  # over all the rows too: the features are dependent
                back = self.hessians.back_to_estimate(estimated.all_rows(), outcome, round_index)
                self.use(back or self.optimizer)
            return outcome
        epoch = self.strategy.epoch_of(round_index, self.shard_sizes)
        largest = self.check_finite(round_index, outcome, state)
        record = meter.record(round_index, epoch, outcome.loss, time.perf_counter() - start)
        energy = self.energy.lap(meter.worker_cpu_s)
        record["workers"], record["cpu_s"], record["energy_j"] = (
            self.runner.num_workers,
            energy.cpu_s,
            energy.energy_j,
        )
        state.history.append(record)
        state.params, state.opt_state = outcome.params, outcome.opt_state
        state.norms.append(largest)
        if state.singular_first is None and round_index == 0:
            state.singular_first = outcome.singular
        elif outcome.singular:
            state.singular_later = True
        epoch_ends = self.strategy.epoch_of(round_index + 1, self.shard_sizes) != epoch
        state.converged = state.check.update(outcome, epoch_ends)
        optimizer, evaluate_again, state.converged = self.hessians.after_round(
            self.optimizer, outcome, state.converged, step_estimated, round_index
        )
        self.use(optimizer)
        if evaluate_again:
            state.evaluate_again()
        self.start_over_if_asked(state)
        return outcome._replace(stalled=False) if on_sample else outcome

    def start_over_if_asked(self, state: LoopState) -> None:
        """The run's first point again, where the rounds on a sample found no optimum."""
        if self.hessians.restart:
            self.hessians.restart = False
            state.params = self.first_params()

    def use(self, optimizer: Optimizer) -> None:
        """Go on with ``optimizer`` (the task the workers run with it)."""
        if optimizer is not self.optimizer:
            self.optimizer = optimizer
            self.task = replace(self.task, optimizer=optimizer)

    def check_finite(self, round_index: int, outcome: StepOutcome, state: LoopState) -> float:
        """The parameters' largest magnitude; raise TrainingDiverged when the loss or
        parameters are not finite (a NaN or infinite entry makes the largest one so), or
        the loss exploded."""
        if state.first_loss is None:
            state.first_loss = outcome.loss
        exploded = abs(outcome.loss) > EXPLODED * max(1.0, abs(state.first_loss))
        largest = float(np.abs(outcome.params).max())
        if exploded or not (math.isfinite(outcome.loss) and math.isfinite(largest)):
            self.model.params_ = state.params
            raise TrainingDiverged(
                f"training diverged at round {round_index} (loss {outcome.loss:g}): "
                f"lower the learning rate (now {self.optimizer.describe_lr()})",
                state.params,
                round_index,
            )
        return largest
