"""What a training run is set up with: its settings checked, and the default optimizer chosen."""

from __future__ import annotations

import itertools
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from paragrad.core.shards import default_workers
from paragrad.core.shm import is_region
from paragrad.data import Dataset
from paragrad.engines import AUTO
from paragrad.errors import ConfigError, DataError, check_positive_int, in_terms, model_term, option, setting
from paragrad.models import LinearRegression, LogisticRegression, SoftmaxRegression
from paragrad.models.base import MAX_CLASSES, Model
from paragrad.models.linear_layout import LinearLayout
from paragrad.optim import LBFGS, Adam, LeastSquares, Newton, Optimizer
from paragrad.training.elastic import WorkerBounds, Workers
from paragrad.training.strategies import SGD, GradientDescent, LocalSGD, Strategy

if TYPE_CHECKING:
    from paragrad.engines import Engine

# The rule that reads a numeric target as classes (README, "The model a target calls
# for"): whole numbers, at most MAX_GUESSED_CLASSES distinct values, each seen in at least
# MIN_CLASS_ROWS rows. Counts, kilograms and bills passed have many values seen once or
# twice; ratings, digits and category codes have few, each seen often.
MAX_GUESSED_CLASSES = 20
MIN_CLASS_ROWS = 5
# A classifier needs rows to learn each class from: fewer than this many rows per class
# on average (a target of mostly distinct values) is refused, whoever chose the model.
MIN_ROWS_PER_CLASS = 2


def choose_model(data: Dataset) -> tuple[str, str]:
    """The model the target calls for, and why in words: a classifier (logistic for two
    classes, else softmax) for text or boolean labels, for 0/1, and for whole numbers that
    look like classes (at most ``MAX_GUESSED_CLASSES`` values, each in at least
    ``MIN_CLASS_ROWS`` rows); else linear regression."""
    y = data.labels
    if y is None:
        raise DataError(f"{data.source}: no target values to train on (name the label column)")
    distinct, counts = np.unique(y, return_counts=True)
    target = data.target_name or "y"
    numeric = data.classes is None
    if len(distinct) < 2:
        raise DataError(f"{data.source}: every value of target {target} is {distinct[0]}: nothing to learn")
    shown = [f"{value:g}" if numeric else str(value) for value in distinct[:10].tolist()]
    listed = ", ".join(shown) + (", ..." if len(distinct) > 10 else "")
    whole = numeric and np.array_equal(distinct, np.round(distinct))
    rows = len(y)
    if not numeric or (len(distinct) == 2 and set(distinct.tolist()) <= {0.0, 1.0}):
        check_class_rows(data.source, target, len(distinct), rows)
        name = "logistic" if len(distinct) == 2 else "softmax"
        kind = "labels" if not numeric else "values"
        return name, f"target {target}: {len(distinct)} distinct {kind}, treated as classes: {listed}"
    if whole and len(distinct) <= MAX_GUESSED_CLASSES and counts.min() >= MIN_CLASS_ROWS:
        name = "logistic" if len(distinct) == 2 else "softmax"
        return name, (
            f"target {target}: {len(distinct)} whole numbers, each in at least {MIN_CLASS_ROWS} of "
            f"{rows} rows, treated as classes: {listed}; "
            f"{option('model', 'linear')} to treat them as a quantity"
        )
    values = "whole numbers" if whole else "values"
    reason = f"target {target}: {len(distinct)} distinct {values} in {rows} rows, treated as a quantity"
    if whole:
        reason += f"; {option('model', 'softmax')} to treat them as classes"
    return "linear", reason


def check_class_rows(source: str, target: str, num_classes: int, num_rows: int) -> None:
    """Refuse a classifier with fewer than ``MIN_ROWS_PER_CLASS`` rows per class on average."""
    if num_classes * MIN_ROWS_PER_CLASS > num_rows:
        raise DataError(
            f"{source}: target {target} has {num_classes} classes in {num_rows} rows, fewer than "
            f"{MIN_ROWS_PER_CLASS} rows per class: a classifier cannot learn them; if the target is a "
            f"quantity, use {option('model', 'linear')}"
        )


# Where a run goes by default (engine="auto"): this process while the work, rows x
# parameters, costs less than worker processes would. `paragrad bench --suite engine`
# measures it (README, "Where a run goes"): on 2 cores, logistic regression in this process
# takes about 0.05 us per unit of work, on the local workers 0.026 us plus the call's fixed
# cost: about 6 ms of round trips when a kept local engine runs (break-even near 3e5),
# about 0.18 s of starting the workers and placing the data when none does (near 8e6).
IN_PROCESS_WORK_WARM = 3e5
IN_PROCESS_WORK_COLD = 8e6
# Full-batch training of the linear models on data in memory goes to threads of this
# process above THREADS_WORK when no kept local engine runs: nothing to start and nothing to
# copy, each pass a few large products that release Python's lock. Running workers are
# faster still (their rounds do not share Python's lock): 10-20% at 1e5-1e6 rows x 11.
THREADS_WORK = 3e5
# Above FORKED_WORK dense data goes to worker processes forked from this one (on Linux,
# several workers, see forks): nothing copied either, and no lock shared, so every pass runs
# on every core; a fork and its first rounds cost about 50 ms more than threads. Measured
# on 2 cores (logistic regression, a whole call): at 1e7 threads 0.32 s, forked 0.35; at
# 2e7 0.55 against 0.48; at 3e7 0.68 against 0.52; at 1e8 1.55 against 1.04.
FORKED_WORK = 2e7


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run goes to, its worker count, and why (empty when the caller chose)."""

    name: str | Engine
    workers: Workers
    reason: str = ""


def default_engine(
    engine: str | Engine,
    workers: Workers,
    model: Model,
    data: Dataset,
    strategy: Strategy,
    warm: bool,
    address: str | None = None,
) -> EngineChoice:
    """The engine for ``engine="auto"``: this process (the serial engine) for small work;
    threads of this process, or above ``FORKED_WORK`` processes forked from it, for larger
    full-batch training of the linear models on data in memory, unless a kept local engine
    is running (``warm``); the local workers otherwise, for data they map from its file,
    and for elastic runs. Any other engine is obeyed."""
    if not (isinstance(engine, str) and engine == AUTO):
        return EngineChoice(engine, workers)
    if address is not None:
        raise ConfigError(f"{setting('address')} joins a Ray cluster: add {option('engine', 'ray')}")
    if WorkerBounds.parse(workers).elastic:
        return EngineChoice("local", workers, "local workers (an elastic worker count)")
    if data.table is not None or (data.storage is not None and not is_region(data.storage.path)):
        return EngineChoice("local", workers, "local workers (they read the file where it lies)")
    if not model.thread_safe:  # a Torch module: torch spreads each batch over the cores itself
        return EngineChoice(
            "serial",
            _in_process_workers(workers, strategy),
            "in process (a Torch module: torch runs each batch on every core, with no worker to start "
            "and no copy)",
        )
    params = estimated_params(model, data)
    work, limit = data.num_rows * params, IN_PROCESS_WORK_WARM if warm else IN_PROCESS_WORK_COLD
    size = f"{data.num_rows} rows x {params} parameters = {work:.2g}"
    full_batch = isinstance(strategy, GradientDescent) and strategy.compress is None
    in_memory_passes = not warm and full_batch and isinstance(model, LinearLayout)
    several = default_workers() > 1 if workers is None else isinstance(workers, int) and workers > 1
    if in_memory_passes and work > FORKED_WORK and not data.sparse and several and forks():
        return EngineChoice(
            "forked",
            workers,
            f"worker processes forked from this one ({size}, above {FORKED_WORK:.0e}: full-batch passes "
            "on every core over the arrays where they lie, nothing to copy)",
        )
    if in_memory_passes and work > THREADS_WORK:
        return EngineChoice(
            "threads",
            workers,
            f"threads of this process ({size}, above {THREADS_WORK:.0e}: full-batch passes over the "
            "arrays where they lie, nothing to start or copy)",
        )
    if work > limit:
        return EngineChoice("local", workers, f"local workers ({size}, above {limit:.0e})")
    cost = "using the running workers" if warm else "starting workers"
    reason = f"in process ({size}: below the cost of {cost}, {limit:.0e})"
    return EngineChoice("serial", _in_process_workers(workers, strategy), reason)


def forks() -> bool:
    """Whether the engine the work calls for may fork workers: on Linux (macOS's system
    libraries are not safe to use after a fork), from a program running one thread
    (OpenBLAS's fork handler waits for its threads: a product running in another thread of
    the program can make the fork wait for good)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def _in_process_workers(workers: Workers, strategy: Strategy) -> Workers:
    """One worker in this process unless told, but for LocalSGD, whose answer depends on the
    worker count: the local engine's."""
    if workers is None:
        return default_workers() if isinstance(strategy, LocalSGD) else 1
    return workers


def estimated_params(model: Model, data: Dataset) -> int:
    """A model's parameter count before it is set up (the classes not yet known)."""
    if isinstance(model, LinearLayout):
        return (data.num_features + int(model.fit_intercept)) * num_outputs_before_setup(model, data)
    hidden = getattr(model, "hidden", None)
    if hidden is not None:  # an MLP: its layers, with one output per class at least two
        sizes = [data.num_features, *hidden, 2]
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))
    try:
        return int(model.num_params)  # a Torch module knows its own
    except (TypeError, AttributeError):
        return data.num_features + 1


def check_inputs(model: Model, data: Dataset, strategy: Strategy) -> None:
    """Refuse what is not a model, labelled data or a strategy, naming the keyword."""
    if not isinstance(model, Model):
        raise ConfigError(f"model must be a paragrad model, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ConfigError(
            "data must be a paragrad.Dataset: build one with pg.Dataset(X, y) or pg.load(path, target=...)"
        )
    if not data.has_labels:
        raise DataError(
            f"{data.source}: no target values to train on (name the label column with {setting('target')})"
        )
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy must be a paragrad strategy, got {type(strategy).__name__}")
    if data.classes is not None and not model.is_classifier:
        shown = ", ".join(map(str, data.classes[:5].tolist()))
        raise DataError(
            f"{data.source}: {model_term(model)} needs a numeric target, but it holds labels "
            f"({shown}): "
            + in_terms("use LogisticRegression or SoftmaxRegression", "use --model logistic or softmax")
        )


def check_settings(
    model: Model,
    strategy: Strategy,
    optimizer: Optimizer,
    epochs: int,
    max_rounds: int | None,
    tol: float,
) -> None:
    """Refuse settings that cannot work together, naming the keyword to change."""
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(f"optimizer must be a paragrad optimizer, got {type(optimizer).__name__}")
    if optimizer.line_search and not isinstance(strategy, GradientDescent):
        raise ConfigError(
            f"{optimizer.name} needs full-batch training: "
            + in_terms("use strategy=pg.GradientDescent()", "use --strategy gd")
        )
    if optimizer.line_search and strategy.compress is not None:
        raise ConfigError(f"{optimizer.name}'s line search needs exact gradients: compress with sgd or adam")
    if optimizer.needs == "hessian" and not isinstance(model, LinearLayout):
        raise ConfigError(f"newton needs the Hessian of a linear model, not of {model_term(model)}")
    if optimizer.needs == "factor" and not isinstance(model, LinearRegression):
        raise ConfigError(
            f"qr solves least squares: {in_terms('LinearRegression', 'the linear model')} only, "
            f"not {model_term(model)}"
        )
    check_positive_int("epochs", epochs)
    check_positive_int("max_rounds", max_rounds, allow_none=True)
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise ConfigError(f"tol must be a non-negative number, got {tol!r}")


def check_engine_takes(model: Model, runner: Engine) -> None:
    """Refuse a model whose object threads cannot share on an engine whose workers do."""
    if runner.shares_objects and not model.thread_safe:
        raise ConfigError(
            f"{model_term(model)} keeps its parameters in its module, which workers on threads "
            f"cannot share: use {option('engine', 'local')} or {option('engine', 'serial')}"
        )


def resource_warnings(runner: Engine, strategy: Strategy, shard_sizes: tuple[int, ...]) -> list[str]:
    """What works but wastes the machine or does less than asked: more worker threads
    than this process's cores, or batches larger than they can be (clipped): SGD's global
    batch beyond the data, LocalSGD's local batch beyond a shard."""
    messages = []
    threads = runner.num_workers * runner.threads_per_worker
    if runner.shares_cores and threads > (cores := default_workers()):
        messages.append(
            f"{runner.num_workers} workers x {runner.threads_per_worker} thread(s) each = {threads} threads "
            f"on {cores} cores: they slow each other down; lower {setting('workers')} or "
            f"{setting('threads_per_worker')}"
        )
    num_rows = sum(shard_sizes)
    if isinstance(strategy, SGD) and strategy.batch_size > num_rows:
        messages.append(
            f"{option('batch_size', strategy.batch_size)} is larger than the data ({num_rows} rows): "
            "every batch is the whole data"
        )
    batch = strategy.batch_size if isinstance(strategy, LocalSGD) else None
    if batch is not None and batch > min(shard_sizes):
        messages.append(
            f"{option('batch_size', batch)} is larger than the smallest shard ({min(shard_sizes)} rows): "
            "its batches are the whole shard"
        )
    return messages


MAX_FACTOR_FEATURES = 4096  # least squares by QR: a (d+2)^2 factor per worker
# QR's pass costs about 2 rows x d^2 operations (1e10: a second on two cores); beyond this,
# L-BFGS's passes of rows x d win on time.
MAX_FACTOR_PRODUCTS = 1e11
MAX_NEWTON_PARAMS = 1024  # Newton: a Hessian of params^2 entries, sent by every worker
# Newton's pass sums rows x params^2 products, L-BFGS's rows x params: beyond this many (a
# few tenths of a second per pass), L-BFGS's cheaper passes win on time.
MAX_NEWTON_PRODUCTS = 1e9
# Beyond that, on dense data, Newton with the Hessian summed in float32 over a sample of
# this many rows per parameter (its error about 1/sqrt(800): 3.5%), when the sample's
# products (half a float64 product's cost each) fit the same budget: its passes cost about
# L-BFGS's, and it needs fewer of them and no pass for the features' scales. The run starts
# with rounds on START_ROWS_PER_PARAM rows a parameter alone (`Newton(start_sample=)`): the
# passes over all the rows start near the optimum. 1e6 x 100 logistic regression: 5 passes
# over all the rows after 5 rounds of 2% of a pass each, where 400 rows in float64 from
# zero took 8 passes (L-BFGS: 13). 400 rows with the same start took 6 passes, 800 in
# float64 5 dearer ones; a start on 400 or 800 rows as many passes as on 200.
SAMPLE_ROWS_PER_PARAM = 800
START_ROWS_PER_PARAM = 200
# From this many products a pass (about 10 ms of a core), on dense data, Newton's Hessian
# is an estimate until near the optimum: summed in float32 over a sample of this many rows
# per parameter (its error about 1/sqrt(100): 10%), exact once a step's measure is at most
# ESTIMATE_UNTIL. The same optimum, the rounds about as many: 4e4 x 100 logistic
# regression a third faster, 2e5 x 20 nearly half (`Newton(exact_below=)`).
ESTIMATED_HESSIAN_PRODUCTS = 5e7
ESTIMATE_ROWS_PER_PARAM = 100
ESTIMATE_UNTIL = 1e-2


def default_optimizer(model: Model, strategy: Strategy, data: Dataset) -> Optimizer:
    """The exact solver where it fits, for uncompressed full-batch training of the linear
    models: QR least squares for linear regression, Newton for logistic and softmax
    regression where its Hessian is cheap (``MAX_NEWTON_PARAMS``, ``MAX_NEWTON_PRODUCTS``)
    or a sample's Hessian is (``SAMPLE_ROWS_PER_PARAM``, dense data; started on a smaller
    sample, ``START_ROWS_PER_PARAM``), else L-BFGS
    (preconditioned by the features' scales); Adam(lr=0.01) for the stochastic strategies
    and the other models."""
    if not isinstance(strategy, GradientDescent) or strategy.compress is not None:
        return Adam(lr=0.01)
    if isinstance(model, LinearRegression):
        width = data.num_features + 2
        cheap = width <= MAX_FACTOR_FEATURES and data.num_rows * width**2 <= MAX_FACTOR_PRODUCTS
        return LeastSquares() if cheap else LBFGS()
    if isinstance(model, LinearLayout):
        params = (data.num_features + int(model.fit_intercept)) * num_outputs_before_setup(model, data)
        if params > MAX_NEWTON_PARAMS:
            return LBFGS()
        products = data.num_rows * params**2
        if products <= MAX_NEWTON_PRODUCTS:
            if data.sparse or products < ESTIMATED_HESSIAN_PRODUCTS:
                return Newton()
            return Newton(
                hessian_sample=min(1.0, ESTIMATE_ROWS_PER_PARAM * params / data.num_rows),
                hessian_float32=data.dtype == np.float64,
                exact_below=ESTIMATE_UNTIL,
            )
        sample = SAMPLE_ROWS_PER_PARAM * params
        if not data.sparse and sample * params**2 <= 2 * MAX_NEWTON_PRODUCTS:
            return Newton(
                hessian_sample=min(1.0, sample / data.num_rows),
                hessian_float32=data.dtype == np.float64,
                start_sample=min(0.5, START_ROWS_PER_PARAM * params / data.num_rows),
            )
        return LBFGS()
    return Adam(lr=0.01)


def num_outputs_before_setup(model: Model, data: Dataset) -> int:
    """A linear model's outputs before it is set up: one for linear and logistic regression;
    for softmax the class count given, else the labels' (MAX_CLASSES when they are not read)."""
    if isinstance(model, LogisticRegression) or not model.is_classifier:
        return 1
    if isinstance(model, SoftmaxRegression) and model.num_classes_hint is not None:
        return model.num_classes_hint
    if data.table is not None or data.y is None:
        return MAX_CLASSES
    return len(np.unique(data.y)[: MAX_CLASSES + 1])
