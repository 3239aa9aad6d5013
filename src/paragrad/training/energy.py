"""The energy a run used: the CPU's own counters where the system exposes them, else an
estimate from CPU time, labelled as one.

Counters: Linux powercap exposes Intel's and AMD's RAPL energy counters as
``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules, one per CPU package, wrapping
at ``max_energy_range_uj``). They count the whole package, so other programs' work is
included. The root is ``PARAGRAD_POWERCAP_ROOT`` when set (a test reads a tree of its own).

Estimate: the CPU seconds of the coordinator process (serial workers included) and of
every worker process (each reports its own, Ray's too) times ``PARAGRAD_WATTS_PER_CORE``
(default :data:`DEFAULT_WATTS_PER_CORE`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from paragrad.errors import ConfigError

# Cloud Carbon Footprint's coefficient for a busy vCPU on AWS, derived from SPECpower
# results: its methodology page, Appendix I, "Average Maximum Watts (100% CPU
# Utilization): 3.5" per vCPU (and 0.74 W at 0%).
DEFAULT_WATTS_PER_CORE = 3.5
WATTS_SOURCE = "Cloud Carbon Footprint's busy-vCPU average for AWS, from SPECpower"
POWERCAP_ROOT = "/sys/class/powercap"
PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")  # a package; intel-rapl:0:0 and so on are parts of it


def powercap_root() -> str:
    return os.environ.get("PARAGRAD_POWERCAP_ROOT") or POWERCAP_ROOT


def watts_per_core() -> float:
    """``PARAGRAD_WATTS_PER_CORE``, or the default; a bad value is an error that names it."""
    text = os.environ.get("PARAGRAD_WATTS_PER_CORE")
    if not text:
        return DEFAULT_WATTS_PER_CORE
    try:
        watts = float(text)
    except ValueError:
        watts = -1.0
    if not watts > 0 or watts == float("inf"):
        raise ConfigError(f"PARAGRAD_WATTS_PER_CORE must be a positive number of watts, got {text!r}")
    return watts


@dataclass(frozen=True)
class Zone:
    """One package's energy counter and the value at which it wraps to zero."""

    counter: Path
    max_uj: int


# The zones found under a powercap root, by the root and its modification time: every run
# makes a meter, and a small run's rounds cost less than listing the folder.
_FOUND: dict[tuple[str, int], list[Zone]] = {}


def package_zones(root: str | os.PathLike[str] | None = None) -> list[Zone]:
    """The readable package counters under the powercap ``root`` (none: no counters)."""
    where = powercap_root() if root is None else os.fspath(root)
    if not os.access(where, os.F_OK):  # no folder, as on most machines: no error to raise and catch
        return []
    try:
        key = (where, os.stat(where).st_mtime_ns)
    except OSError:
        return []
    if key not in _FOUND:
        _FOUND.clear()  # an older listing of any root is stale
        _FOUND[key] = _list_zones(Path(where))
    return list(_FOUND[key])


def _list_zones(root: Path) -> list[Zone]:
    zones = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not PACKAGE_ZONE.fullmatch(entry.name):
            continue
        try:
            int((entry / "energy_uj").read_text())
            max_uj = int((entry / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue  # unreadable without privileges on most systems since 2020
        zones.append(Zone(entry / "energy_uj", max_uj))
    return zones


def counter_change(before: int, after: int, max_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 past ``max_uj``."""
    return after - before if after >= before else after + max_uj - before


class Reading(NamedTuple):  # made every round: a tuple is made fastest
    """Joules over some span, and the CPU seconds (coordinator and workers) in it."""

    energy_j: float
    cpu_s: float


class EnergyMeter:
    """Energy since the meter was made, and since its last lap (a round)."""

    def __init__(self) -> None:
        self.zones = package_zones()
        self.watts = None if self.zones else watts_per_core()
        self._first = self._last = self._state()
        self._worker_cpu_s = 0.0

    @property
    def measured(self) -> bool:
        return bool(self.zones)

    @property
    def worker_cpu_s(self) -> float:
        """The worker processes' CPU seconds given to the laps so far."""
        return self._worker_cpu_s

    def describe(self) -> str:
        """How the joules are obtained, in words."""
        if self.zones:
            count = len(self.zones)
            return f"RAPL counters of {count} CPU package{'s' * (count != 1)}, other programs included"
        default = (
            " (the default: Cloud Carbon Footprint's figure)" if self.watts == DEFAULT_WATTS_PER_CORE else ""
        )
        return f"estimate: CPU seconds x {self.watts:g} W per busy core, PARAGRAD_WATTS_PER_CORE{default}"

    def _state(self) -> tuple[float, list[int]]:
        counters = []
        for zone in self.zones:
            try:
                counters.append(int(zone.counter.read_text()))
            except (OSError, ValueError):
                counters.append(-1)  # a counter that stopped reading adds nothing
        return time.process_time(), counters

    def _between(
        self, start: tuple[float, list[int]], end: tuple[float, list[int]], worker_cpu_s: float
    ) -> Reading:
        cpu_s = end[0] - start[0] + worker_cpu_s
        if self.watts is not None:
            return Reading(cpu_s * self.watts, cpu_s)
        micro = sum(
            counter_change(before, after, zone.max_uj)
            for zone, before, after in zip(self.zones, start[1], end[1], strict=True)
            if before >= 0 and after >= 0
        )
        return Reading(micro / 1e6, cpu_s)

    def mark(self) -> None:
        """Start the next lap now, leaving out what came before it (the total keeps it)."""
        self._last = self._state()

    def lap(self, worker_cpu_s: float = 0.0) -> Reading:
        """The energy since the last lap; ``worker_cpu_s``: the worker processes' CPU
        seconds in that span (in-process workers are in this process's own)."""
        now = self._state()
        reading = self._between(self._last, now, worker_cpu_s)
        self._last = now
        self._worker_cpu_s += worker_cpu_s
        return reading

    def total(self, worker_cpu_s: float = 0.0) -> Reading:
        """The energy since the meter was made, with the laps' worker CPU seconds and
        ``worker_cpu_s`` more."""
        return self._between(self._first, self._state(), self._worker_cpu_s + worker_cpu_s)
