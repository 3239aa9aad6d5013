"""Elastic runs: how many workers a run may have, and ``workers="auto"``.

``workers=(min, max)`` lets the engine shrink when a worker is lost for good (down to
``min``) and grow when capacity appears (up to ``max``); ``workers="auto"`` measures
the rounds' throughput on a growing number of workers during the first rounds and
settles on the fastest. Membership changes at round boundaries only, and the sample
stream does not depend on the workers (see :mod:`paragrad.training.sampling`), so GradientDescent
and SGD end where a fixed-size run ends.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paragrad.core.shards import NUM_VIRTUAL
from paragrad.errors import ConfigError, setting

Workers = int | tuple[int, int] | list[int] | str | None


@dataclass(frozen=True)
class WorkerBounds:
    """What a run asked for: the workers to start with, and how far it may go either way."""

    min: int | None  # None: as many as there are (the engine's default), fixed
    max: int | None
    auto: bool = False

    @property
    def elastic(self) -> bool:
        return self.auto or self.min != self.max

    @classmethod
    def parse(cls, workers: Workers) -> WorkerBounds:
        """``None``, ``N``, ``(min, max)`` (or a list), ``"MIN:MAX"`` or ``"auto"``; anything
        else is refused, naming the setting."""
        if workers is None:
            return cls(None, None)
        if isinstance(workers, str):
            text = workers.strip().lower()
            if text == "auto":
                return cls(1, None, auto=True)
            first, sep, last = text.partition(":")
            if sep and first.strip().isdigit() and last.strip().isdigit():
                if 1 <= int(first) <= int(last):
                    return cls(int(first), int(last))
                raise ConfigError(f"{setting('workers')} MIN:MAX needs 1 <= MIN <= MAX, got {workers!r}")
            if text.isdigit() and int(text) >= 1:
                return cls(int(text), int(text))
            raise ConfigError(
                f"{setting('workers')} must be a positive integer, MIN:MAX or auto, got {workers!r}"
            )
        if isinstance(workers, (tuple, list)) and len(workers) == 2:
            low, high = workers
            if _whole(low) and _whole(high) and 1 <= low <= high:
                return cls(int(low), int(high))
            raise ConfigError(
                f"{setting('workers')} (min, max) needs whole numbers 1 <= min <= max, got {workers!r}"
            )
        if isinstance(workers, numbers.Integral) and not isinstance(workers, bool) and workers >= 1:
            return cls(int(workers), int(workers))
        raise ConfigError(
            f"{setting('workers')} must be a positive integer, (min, max) or 'auto', got {workers!r}"
        )

    def resolve(self, capacity: int, num_rows: int) -> tuple[int, int, int]:
        """``(start, min, max)`` for an engine with room for ``capacity`` workers, never
        more workers than rows: a fixed run starts with its count; an elastic one with
        what is available within its bounds; ``auto`` with one. An elastic run never
        has more workers than rows, or than its virtual shards."""
        if not self.elastic:  # a fixed count: more workers than rows is refused by the plan
            count = capacity if self.min is None else self.min
            return count, count, count
        most = min(num_rows, NUM_VIRTUAL)
        low, high = self.min or 1, min(capacity if self.max is None else self.max, most)
        if low > high:
            raise ConfigError(f"{setting('workers')} asks for at least {low} workers, but only {high} fit")
        return (low if self.auto else max(low, min(high, capacity))), low, high


def _whole(value: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


PROBE_ROUNDS = 4  # rounds measured at each worker count, after one to settle in
WORSE = 0.9  # a count this much slower than the best so far ends the search


@dataclass
class AutoScaler:
    """``workers="auto"``: try 1, 2, 4, ... workers (up to ``max_workers``) for a few
    rounds each, growing by resizing so no round is wasted, and keep the fastest.

    Throughput is rows computed per second of round wall time (the median of the
    measured rounds); the search stops at the first count clearly slower than the best.
    """

    max_workers: int
    rates: dict[int, float] = field(default_factory=dict)
    chosen: int | None = None
    _rounds: list[float] = field(default_factory=list)
    _asked: int | None = None  # the count asked for and not yet reached

    def next_count(self, record: dict[str, Any]) -> int | None:
        """After a round (its record): the count to resize to, or None to stay."""
        workers = record["workers"]
        if self.chosen is not None or (self._asked is not None and workers != self._asked):
            return None  # settled, or the workers asked for are still starting
        self._asked = None
        self._rounds.append(record["samples"] / max(record["wall_s"], 1e-9))
        if len(self._rounds) <= PROBE_ROUNDS:
            return None
        self.rates[workers] = float(np.median(self._rounds[1:]))
        self._rounds = []
        best = max(self.rates, key=self.rates.__getitem__)
        bigger = min(workers * 2, self.max_workers)
        if bigger > workers and self.rates[workers] >= WORSE * self.rates[best]:
            self._asked = bigger
            return bigger
        self.chosen = best
        return best if best != workers else None

    def describe(self) -> str:
        """What it chose and why, for the run's summary."""
        rates = ", ".join(f"{count}: {rate:,.0f}" for count, rate in sorted(self.rates.items()))
        if self.chosen is None:
            if not rates:
                return "workers=auto: the run ended before a worker count was measured (too few rounds)"
            return f"workers=auto still measuring when the run ended (rows/s by workers: {rates})"
        return f"workers=auto chose {self.chosen}, the fastest measured (rows/s by workers: {rates})"
