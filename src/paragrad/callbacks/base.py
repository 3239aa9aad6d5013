"""What :func:`paragrad.train` tells callbacks, and when.

A callback sees a run through four calls: ``on_train_start(info)`` once the workers are
set up, ``on_round_end(record)`` after every round is recorded (returning True stops the
run after that round), then ``on_train_end(run)`` or, if training raised,
``on_train_error(error)``. A plain function ``f(record)`` stands for ``on_round_end``.
Callbacks only watch: a run's parameters, checkpoints and resume do not depend on them,
except where one asks to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paragrad.errors import ConfigError

if TYPE_CHECKING:
    from paragrad.training.run import Run

# The per-round values the built-in trackers log, by their history keys.
TRACKED = ("loss", "wall_s", "bytes_sent", "bytes_received", "samples")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class TrainInfo:
    """What a run is, as ``on_train_start`` sees it.

    ``config`` is the run's configuration as JSON values (model and its settings, data
    shape, strategy, optimizer, seed, dtype, standardisation, shuffle): what a checkpoint
    stores. A resumed run starts at ``first_round``, the rounds before it already done.
    """

    config: dict[str, Any]
    engine: str
    num_workers: int
    total_rounds: int
    first_round: int = 0

    def params(self) -> dict[str, Scalar]:
        """The configuration flattened to one level (``optimizer.lr.lr``), engine and workers
        added, lists and None written as text: what trackers log as parameters."""
        flat: dict[str, Scalar] = {}
        _flatten("", self.config, flat)
        flat.update(engine=self.engine, workers=self.num_workers)
        return flat


def _flatten(prefix: str, value: Any, into: dict[str, Scalar]) -> None:
    """Nested mappings to dotted keys; lists and None become their text."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, into)
    else:
        into[prefix] = value if isinstance(value, (str, int, float, bool)) else str(value)


class Callback:
    """Base class of training callbacks: override the calls you need; the others do nothing.

    ``record`` is the round's history record (the keys of ``paragrad.training.run.HISTORY_KEYS``:
    round, epoch, loss, wall_s, compute_s, comm_s, bytes_sent, bytes_received, samples,
    wait_s), a copy, so changing it changes nothing. A resumed run calls ``on_round_end``
    for its new rounds only.
    """

    def on_train_start(self, info: TrainInfo) -> None:
        """The workers are set up and the first round is next."""

    def on_round_end(self, record: dict[str, Any]) -> bool | None:
        """A round was recorded; return True to stop training after it."""
        return None

    def on_train_end(self, run: Run) -> None:
        """Training finished (converged, out of rounds or stopped) with this run."""

    def on_train_error(self, error: BaseException) -> None:
        """Training raised ``error`` (diverged, a worker lost, interrupted); it is raised on."""


RoundFunction = Callable[[dict[str, Any]], bool | None]


class _RoundEnd(Callback):
    """A plain function called as ``on_round_end``."""

    def __init__(self, function: RoundFunction) -> None:
        self.function = function

    def on_round_end(self, record: dict[str, Any]) -> bool | None:
        return self.function(record)


@dataclass(frozen=True)
class CallbackList:
    """The callbacks of one run, called in the order given."""

    callbacks: tuple[Callback, ...] = ()

    @classmethod
    def of(cls, callbacks: Iterable[Callback | RoundFunction] | None) -> CallbackList:
        """Check what ``train(callbacks=...)`` was given: Callbacks or functions of a record."""
        if callbacks is None:
            return cls()
        if isinstance(callbacks, Callback) or callable(callbacks):
            raise ConfigError("callbacks must be a list, e.g. callbacks=[TensorBoard('runs/a')]")
        checked: list[Callback] = []
        for callback in callbacks:
            if isinstance(callback, Callback):
                checked.append(callback)
            elif callable(callback):
                checked.append(_RoundEnd(callback))
            else:
                raise ConfigError(
                    f"callbacks: {callback!r} is neither a paragrad.callbacks.Callback "
                    "nor a function of a round's record"
                )
        return cls(tuple(checked))

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def train_start(self, info: TrainInfo) -> None:
        for callback in self.callbacks:
            callback.on_train_start(info)

    @contextmanager
    def reporting_errors(self) -> Iterator[None]:
        """Tell every callback of an error raised inside, then raise it on. (A context
        manager adds no frame to the stack, so warnings still point at the caller.)"""
        try:
            yield
        except BaseException as error:
            for callback in self.callbacks:
                callback.on_train_error(error)
            raise

    def round_end(self, record: dict[str, Any]) -> bool:
        """Whether a callback asked to stop; every callback sees the record either way."""
        answers = [callback.on_round_end(dict(record)) for callback in self.callbacks]
        return any(answers)

    def train_end(self, run: Run) -> None:
        for callback in self.callbacks:
            callback.on_train_end(run)
