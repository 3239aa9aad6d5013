"""Training: the settings checked, the workers set up, and the rounds run until converged.

:func:`train` checks its settings, starts the engine, sets the model up from statistics
the workers gather (classes, standardisation, feature scales) and runs the rounds of
:class:`~paragrad.training.rounds.RoundLoop`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any

import numpy as np

from paragrad.callbacks.base import Callback, CallbackList, RoundFunction, TrainInfo
from paragrad.core.shards import ShardPlan, Task, plan_shards
from paragrad.data import Dataset, Moments, Standardizer, combine_moments
from paragrad.engines import Engine, make_engine
from paragrad.engines.base import ROUND_TIMEOUT_S, START_TIMEOUT_S, check_timeout
from paragrad.engines.kept import engine_for_call
from paragrad.engines.kept import is_running as kept_engine_running
from paragrad.errors import (
    ConfigError,
    PerformanceWarning,
    caller_stacklevel,
    in_terms,
    option,
)
from paragrad.models.base import Model
from paragrad.models.linear_layout import LinearLayout
from paragrad.optim import Newton, Optimizer
from paragrad.training.checkpoint import (
    CheckpointWarning,
    TrainingState,
    load_latest_checkpoint,
)
from paragrad.training.checkpointing import Checkpointing
from paragrad.training.elastic import AutoScaler, WorkerBounds, Workers
from paragrad.training.energy import EnergyMeter
from paragrad.training.rounds import RoundLoop
from paragrad.training.run import HISTORY_KEYS, Run, RunConfig
from paragrad.training.settings import (
    check_class_rows,
    check_engine_takes,
    check_inputs,
    check_settings,
    default_engine,
    default_optimizer,
    resource_warnings,
)
from paragrad.training.starting import initial_params, model_for, standardizer_kept, start_model
from paragrad.training.strategies import GradientDescent, Strategy
from paragrad.training.tasks import (
    DescribeShard,
    EncodeLabels,
    FingerprintShard,
    StandardizeShard,
    data_fingerprint,
)


def train(
    model: Model | str | None,
    data: Dataset,
    *,
    strategy: Strategy | None = None,
    optimizer: Optimizer | None = None,
    engine: str | Engine = "auto",
    workers: Workers = None,
    epochs: int | None = None,
    max_rounds: int | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    standardize: bool = False,
    shuffle: bool = False,
    progress: bool | None = None,
    dtype: str | np.dtype | None = None,
    max_restarts: int = 0,
    round_timeout_s: float | None = None,
    start_timeout_s: float | None = None,
    threads_per_worker: int = 1,
    address: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | str | None = None,
    resume: bool = False,
    keep_checkpoints: int = 3,
    callbacks: list[Callback | RoundFunction] | None = None,
    init: Model | str | os.PathLike | None = None,
    shard_tasks: tuple[Task, ...] = (),
) -> Run:
    """Train ``model`` on ``data`` with a distributed strategy.

    Parameters
    ----------
    model : Model, str or None
        An untrained model from :mod:`paragrad.models`; it is set up and trained in place.
        ``None`` or ``"auto"`` chooses the model the target calls for (as ``paragrad
        train`` does without ``--model``: see the README's rule) and says why in
        ``run.model_choice``; a family's name (``"linear"``, ``"softmax"``) builds it.
    data : Dataset
        Features and labels (see :func:`paragrad.load` and :class:`paragrad.Dataset`).
    strategy : Strategy, default GradientDescent()
        ``GradientDescent()``, ``SGD(batch_size)`` or ``LocalSGD(local_steps, batch_size)``.
    optimizer : Optimizer, optional
        ``optim.SGD``, ``optim.Adam`` or ``optim.LBFGS`` (full batch only). Default:
        LBFGS for GradientDescent on the linear models, else ``Adam(lr=0.01)``.
    engine : {"auto", "serial", "threads", "forked", "local", "ray"} or Engine
        Where the workers run; an Engine object is used as is and left open. ``"auto"``
        (the default) runs small work in this process (the serial engine), larger
        full-batch training of the linear models on threads of this process (larger still,
        on processes forked from it), and the rest on the local workers, by the rule in the
        engines guide ("Where a run goes"), and says which and why in ``run.engine_choice``.
    workers : int, (min, max) or "auto", optional
        Number of workers; default one per core. ``(min, max)`` makes the run elastic:
        it starts with what is available (at least ``min``), goes on with fewer workers
        when one is lost for good (``max_restarts`` spent), down to ``min``, and grows
        when capacity appears (Ray) or on ``engine.resize(k)``, up to ``max``. ``"auto"``
        measures the rounds' speed on 1, 2, 4, ... workers (up to one per core, or the
        Ray cluster's CPUs) during the first rounds and keeps the fastest. GradientDescent
        and SGD give the same parameters whatever the workers do (without ``compress``:
        each worker compresses its own sum, so a change of the workers changes the path).
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
    dtype : {"float64", "float32"}, optional
        Float type of the data on the workers; default the data's own. Float32 data
        (a float32 ``.npy``, say) is used where it lies, products run in float32 and sums
        accumulate in float64; ``"float64"`` makes the workers hold a float64 copy.
    max_restarts : int
        How many dead workers to restart, replaying their round, before stopping with
        :class:`~paragrad.errors.WorkerLost` (local and ray engines); a budget for this
        call alone, on an engine kept between calls too.
    round_timeout_s : float, optional
        How long a worker may stay silent during a round (no result and no heartbeat;
        busy local workers send several a second, Ray actors answer a beat twice a
        second beside their call) before it counts as lost, like a dead one:
        replaced within ``max_restarts``, else the run shrinks within ``workers=(min,
        max)``, else :class:`~paragrad.errors.WorkerLost` names the worker and the round.
        Default 60 seconds (an Engine object given keeps its own setting); at least 1.
    start_timeout_s : float, optional
        How long a new worker may take to start (a Ray actor: to be placed on a node with
        a free CPU, and to start there) before it counts as lost. Default 120 seconds (an
        Engine object keeps its own). A replacement for a lost Ray worker is started only
        where the cluster shows a free CPU within a few seconds, so ``max_restarts`` never
        makes a lost node slower to get over than no restarts.
    threads_per_worker : int
        BLAS threads in each local worker process; on Ray, the CPUs each actor reserves.
    address : str, optional
        Ray engine: ``HOST:PORT`` of a running cluster to join (default ``RAY_ADDRESS``,
        else a local Ray instance started for the run).
    checkpoint_dir : path, optional
        Write checkpoints here, and a last one at the end: files written atomically with a
        SHA-256 checksum, and the checkpoints taken within a minute after a file appended
        to its log, each with a CRC-32.
        A checkpoint belongs to its run: it carries the run's identity and the data's
        fingerprint, and pruning removes only the run's own older files. A fresh run
        (``resume=False``) refuses a directory that holds another run's checkpoints.
        Temporaries of writes killed midway are removed at the next start.
    checkpoint_every : int or str, optional
        Every so many rounds (``10``) or seconds (``"30s"``); default every 60 seconds.
    resume : bool
        Go on from the newest intact checkpoint in ``checkpoint_dir`` (a damaged newest
        one is skipped with a warning). The run ends with the parameters it would have
        had without the interruption. The worker count may differ (the virtual shards are
        handed out again: GradientDescent and SGD follow the same path, LocalSGD's workers
        walk other rows, on a count that keeps its number of rounds: else refused); the
        model, the data (its shape and a fingerprint of sampled rows), the strategy, the
        optimizer and the seed may not: a checkpoint of another run is refused, naming
        the file.
    keep_checkpoints : int
        How many of the newest checkpoint files to keep, each with its log (the
        checkpoints taken within a minute after it, up to about 4 MiB); the file last
        synced to the device is kept besides until a newer one is (see the elastic guide).
    callbacks : list, optional
        :class:`paragrad.callbacks.Callback` objects (``TensorBoard(dir)``, ``MLflow()``) or
        functions ``f(record)`` of each round's history record; True from either stops the
        run after that round (``run.stopped == "stopped by a callback"``).
    init : Model or path, optional
        Start from this trained model's parameters (a model file's path, or a model) rather
        than a fresh initialisation. It must fit: the same family and shapes, the same
        features and classes; its standardisation, if any, is the run's.
    shard_tasks : tuple of Task
        Tasks that change every shard once the labels are encoded and the features
        standardised, before the first round (a teacher's outputs kept with the rows, see
        :func:`paragrad.distill`); an engine replays them on a worker it restarts.

    Returns
    -------
    Run
        ``run.model``, ``run.params``, ``run.history``, ``run.summary()``, ``run.save()``.
    """
    call_started = time.perf_counter()
    energy = EnergyMeter()
    model, model_choice, strategy, optimizer, epochs, dtype, read_as, data = _prepare(
        model, data, strategy, optimizer, epochs, max_rounds, tol, dtype, standardize
    )
    checkpoints = Checkpointing.parse(checkpoint_dir, checkpoint_every, keep_checkpoints).prepare(resume)
    hooks = CallbackList.of(callbacks)
    config = None  # what checkpoints carry and callbacks hear of: a small run's round costs less
    if resume or checkpoints.directory is not None or hooks:
        config = RunConfig.of(model, data, strategy, optimizer, seed, dtype, standardize, shuffle)
    resumed = (
        None if config is None or not resume else _load_resume_state(checkpoint_dir, config, model, optimizer)
    )

    start_from = None if init is None else start_model(init, model, data)
    if start_from is not None and start_from.standardizer_ is not None:
        standardize = True  # its parameters expect the features scaled as it scaled them
    choice = default_engine(engine, workers, model, data, strategy, kept_engine_running(), address)
    engine, workers = choice.name, choice.workers
    bounds = WorkerBounds.parse(workers)
    timeouts = _timeouts(round_timeout_s, start_timeout_s)
    with (
        _runner(engine, bounds, address, max_restarts, threads_per_worker) as runner,
        _coordinator_threads(runner),
    ):
        _apply_timeouts(runner, timeouts, keep_own=isinstance(engine, Engine))
        check_engine_takes(model, runner)
        first, low, high = bounds.resolve(runner.planned_workers, data.num_rows)
        runner.set_bounds(low, high)
        plan = plan_shards(data.num_rows, first, shuffle=shuffle, seed=seed)
        _check_budget_carries(resumed, strategy, plan, epochs, shuffle, seed)
        checks_s = time.perf_counter() - call_started
        runner.start(data, plan)
        started_s = time.perf_counter() - call_started
        fingerprints = (
            _fingerprints(runner, resumed, data.sparse) if checkpoints.directory is not None else ("",)
        )
        for message in resource_warnings(runner, strategy, plan.sizes):
            warnings.warn(message, PerformanceWarning, stacklevel=2)
        # The features' moments make L-BFGS's preconditioner.
        want = optimizer.takes_scales and isinstance(model, LinearLayout)
        standardizer = standardizer_kept(resumed, start_from)
        stats = _set_up_model(model, data, runner, standardize, standardizer, want)
        model.encoding_, model.read_options_ = read_as  # kept in the model file, for predicting
        for task in shard_tasks:
            runner.run(task)
        if stats is not None and isinstance(model, LinearLayout) and optimizer.takes_scales:
            optimizer = optimizer.with_scales(model.param_scales(root_mean_square(stats)))
        if isinstance(optimizer, Newton):
            optimizer = optimizer.stopping_at(tol)
        config = None if config is None else config.with_classes(model.classes_)
        checkpoints.adopt(resumed, fingerprints, None if config is None else config.classes)
        loop = RoundLoop(model, runner, plan, strategy, optimizer, epochs, max_rounds, tol, seed, energy)
        loop.initial_params = None if start_from is None else initial_params(start_from, model)
        loop.autoscaler = AutoScaler(high) if bounds.auto else None
        setup_s = time.perf_counter() - call_started
        setup_parts = _setup_parts(checks_s, started_s, setup_s, runner.placing_s)
        done = 0 if resumed is None else resumed.round
        if config is not None and hooks:  # its description costs more than a small run's round
            hooks.train_start(TrainInfo(config.to_json(), runner.name, runner.num_workers, loop.total, done))
        with hooks.reporting_errors():
            run = loop.run(resumed, checkpoints, config, progress, hooks)
    total_s = time.perf_counter() - call_started
    used = energy.total()  # the coordinator's own CPU time is the meter's; the workers' in its laps
    run.setup_s, run.setup_parts, run.total_s = setup_s, setup_parts, total_s
    run.model_choice, run.engine_choice = model_choice, choice.reason
    if resumed is not None:
        run.resumed = (
            f"at round {resumed.round}, from the checkpoints in {checkpoint_dir} (the rounds before "
            "it as the run that took them timed them)"
        )
    run.energy_j, run.cpu_s, run.energy_source = used.energy_j, used.cpu_s, energy.describe()
    hooks.train_end(run)
    return run


def _prepare(
    model: Model | str | None,
    data: Dataset,
    strategy: Strategy | None,
    optimizer: Optimizer | None,
    epochs: int | None,
    max_rounds: int | None,
    tol: float,
    dtype: str | np.dtype | None,
    standardize: bool,
) -> tuple[Model, str, Strategy, Optimizer, int, Any, tuple[Any, Any], Dataset]:
    """A run's model (chosen when not given, and why), strategy, optimizer, epochs, data type
    and data, checked together, with what the model keeps of how the data was read."""
    model, model_choice = model_for(model, data)
    strategy = GradientDescent() if strategy is None else strategy
    check_inputs(model, data, strategy)
    dtype = data.dtype if dtype is None else dtype
    read_as = (data.encoding, data.read_options or None)  # one-hot categories, decimal mark
    data = data.astype(dtype)  # before the optimizer's choice, which depends on the data's type
    optimizer = default_optimizer(model, strategy, data) if optimizer is None else optimizer
    epochs = strategy.default_epochs if epochs is None else epochs
    check_settings(model, strategy, optimizer, epochs, max_rounds, tol)
    if standardize and data.sparse:
        raise ConfigError("standardize=True would make sparse features dense; scale them beforehand instead")
    return model, model_choice, strategy, optimizer, epochs, dtype, read_as, data


def _coordinator_threads(runner: Engine) -> contextlib.AbstractContextManager[Any]:
    """One BLAS and OpenMP thread for the coordinator while workers on this machine run:
    its math between rounds is small, and idle threads that spin after each call (as
    OpenBLAS's and OpenMP's do) take the cores from the workers."""
    if not runner.shares_cores:
        return contextlib.nullcontext()
    from paragrad.core.blas import blas_threads

    return blas_threads(1)


def _setup_parts(
    checks_s: float, started_s: float, setup_s: float, placing_s: float | None
) -> dict[str, float]:
    """Where the set-up went: checking the settings and data, placing the data (where the
    engine measures it apart), starting the workers (what the placement did not hide),
    the set-up pass (classes, moments, standardisation)."""
    parts = {"checks": checks_s}
    if placing_s is not None:
        parts["placing data"] = placing_s
    parts["starting workers"] = started_s - checks_s - (placing_s or 0.0)
    return {**parts, "set-up pass": setup_s - started_s}


def _runner(
    engine: str | Engine, bounds: WorkerBounds, address: str | None, max_restarts: int, threads: int
) -> contextlib.AbstractContextManager[Engine]:
    """The engine object as given (left open); for a fixed worker count, the engine calls
    share (:mod:`paragrad.engines.kept`); else a new one of that name, sized to capacity
    when elastic."""
    if isinstance(engine, Engine):
        return engine.claimed()
    options: dict[str, Any] = {
        "address": address,
        "max_restarts": max_restarts,
        "threads_per_worker": threads,
    }
    if bounds.elastic:
        return make_engine(engine, None, **options)
    return engine_for_call(engine, bounds.min, **options)


def _load_resume_state(
    checkpoint_dir: str | os.PathLike | None, config: RunConfig, model: Model, optimizer: Optimizer
) -> TrainingState | None:
    """The newest checkpoint of this same run, or None (with a warning) when there is none."""
    if checkpoint_dir is None:
        raise ConfigError(in_terms("resume=True needs checkpoint_dir=", "--resume needs --checkpoint DIR"))
    model.setup(config.num_features, None if not model.is_classifier else np.arange(2.0))
    opt_state_type = type(optimizer.init(model.init_params()))
    state = load_latest_checkpoint(checkpoint_dir, HISTORY_KEYS, opt_state_type)
    if state is None:
        warnings.warn(
            f"{checkpoint_dir}: no checkpoint to resume from; starting from the beginning",
            CheckpointWarning,
            stacklevel=caller_stacklevel(),
        )
        return None
    differences = config.differences(state.config)
    if differences:
        hint = ""
        if any(difference.startswith("dtype") for difference in differences):  # the default follows the data
            hint = f" (dtype={state.config.get('dtype')!r} trains as the checkpointed run did)"
        raise ConfigError(
            f"{state.path}: the checkpoint belongs to another run; it differs in "
            + "; ".join(differences)
            + hint
        )
    return state


def _timeouts(round_timeout_s: float | None, start_timeout_s: float | None) -> dict[str, float | None]:
    """The timeouts asked for (None: the default), checked."""
    timeouts = {"round_timeout_s": round_timeout_s, "start_timeout_s": start_timeout_s}
    return {name: None if value is None else check_timeout(name, value) for name, value in timeouts.items()}


def _apply_timeouts(runner: Engine, timeouts: dict[str, float | None], keep_own: bool) -> None:
    """Set the call's timeouts on its engine; an engine object given keeps its own where
    none is asked for, others take the defaults."""
    defaults = {"round_timeout_s": ROUND_TIMEOUT_S, "start_timeout_s": START_TIMEOUT_S}
    for name, value in timeouts.items():
        if value is not None or not keep_own:
            setattr(runner, name, defaults[name] if value is None else value)


def _fingerprints(runner: Engine, resumed: TrainingState | None, sparse: bool) -> tuple[str, ...]:
    """The data's fingerprint as placed (before any set-up changes it), for the checkpoints
    to carry; resuming a checkpoint that carries another, also its other form: of sparse
    rows made dense (checkpoints made before, or on the same rows given dense), or of
    dense rows as stored (a checkpoint made on the same rows given sparse)."""
    fingerprint = data_fingerprint(runner.run(FingerprintShard()))
    if resumed is None or resumed.fingerprint == fingerprint:
        return (fingerprint,)
    return fingerprint, data_fingerprint(runner.run(FingerprintShard(as_stored=not sparse)))


def _check_budget_carries(
    resumed: TrainingState | None, strategy: Strategy, plan: ShardPlan, epochs: int, shuffle: bool, seed: int
) -> None:
    """Refuse to resume on a worker count that changes the run's number of rounds (LocalSGD
    counts them by the largest shard): the rounds done would not be the same share of it."""
    if resumed is None or not resumed.history:
        return
    before = int(resumed.history[0]["workers"])
    saved = plan_shards(plan.num_rows, before, shuffle=shuffle, seed=seed)
    was, now = strategy.total_rounds(saved.sizes, epochs), strategy.total_rounds(plan.sizes, epochs)
    if was != now:
        raise ConfigError(
            f"{resumed.path}: {strategy!r} counts its rounds by the shard sizes: the run has {was} "
            f"rounds on {before} worker(s), {now} on {plan.num_shards}, so the rounds done would not "
            f"carry over; resume with {option('workers', before)}"
        )


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
    described = runner.run(DescribeShard(model.is_classifier, gather, data.unchecked))
    if not all(clean for *_, clean in described):
        data.check()  # names the first bad value, as a check when the data was made would
    data.unchecked = False
    labels = None
    if model.is_classifier:
        parts = [shard_labels for _, shard_labels, *_ in described]  # each distinct and sorted
        labels = parts[0] if len(parts) == 1 else merged_labels(parts)
        if data.classes is not None:  # the shards hold positions among the data's classes
            labels = data.classes[labels.astype(np.intp)]
    if labels is not None:  # before the model's own checks, whose advice assumes classes
        check_class_rows(data.source, data.target_name or "y", len(labels), data.num_rows)
    model.setup(data.num_features, labels, feature_names=data.feature_names, target_name=data.target_name)
    coding = None if data.classes is not None else EncodeLabels.needed_for(model.classes_)
    if coding is not None:  # numeric labels other than 0..k-1 (-1/1, 1/2, ...)
        runner.run(coding)
    model.standardizer_ = None
    stats = combine_moments([part for *_, part, _ in described]) if gather else None
    if standardize:
        model.standardizer_ = standardizer or Standardizer.from_moments(stats)  # type: ignore[arg-type]
        runner.run(StandardizeShard(model.standardizer_))
        stats = Moments(data.num_rows, np.zeros(data.num_features), np.full(data.num_features, data.num_rows))
    return stats if want_moments else None


def merged_labels(parts: list[np.ndarray]) -> np.ndarray:
    """The distinct labels of the shards' (each distinct and sorted), sorted: what
    ``np.unique`` gives, without its first call's import of numpy's masked arrays (30 ms)."""
    merged = np.sort(np.concatenate(parts))
    return merged[np.r_[True, merged[1:] != merged[:-1]]]


def root_mean_square(stats: Moments) -> np.ndarray:
    """Each feature's root mean square: its scale, offset included (1 for a zero column)."""
    rms = np.sqrt(stats.m2 / stats.count + stats.mean**2)
    return np.where(rms > 0, rms, 1.0)
