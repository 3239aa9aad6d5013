"""A finished training run: the trained model, its history and a summary of where time went."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.core.shards import MembershipChange
from paragrad.data import Dataset
from paragrad.models.base import Model
from paragrad.optim import Optimizer
from paragrad.training.strategies import Strategy

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
    "workers",
    "cpu_s",  # CPU seconds of the coordinator and the worker processes
    "energy_j",  # joules: counted by the CPU, or estimated from cpu_s (see run.energy_source)
)
SUMMED = tuple(key for key in HISTORY_KEYS[3:] if key != "workers")


@dataclass
class Run:
    """A finished training run: the trained model and one history record per round."""

    model: Model
    history: list[dict[str, Any]]
    converged: bool
    strategy: Strategy
    engine: str
    num_workers: int
    wall_s: float  # the rounds
    # or "solved", "round limit", "line search stalled", "no finite optimum", "stopped by a callback"
    stopped: str = "converged"
    setup_s: float = 0.0  # starting the workers, placing the data, the set-up pass
    setup_parts: dict[str, float] = dataclasses.field(default_factory=dict)  # setup_s, split
    total_s: float = 0.0  # the whole call to train
    optimizer: str = ""  # the optimizer's name (a default chosen for the model, say)
    changes: list[MembershipChange] = dataclasses.field(default_factory=list)  # of the workers
    scaling: str = ""  # what workers="auto" chose, and why
    model_choice: str = ""  # with model=None or "auto": the model chosen, and why
    engine_choice: str = ""  # with engine="auto": where the run went, and why
    resumed: str = ""  # with resume=True: the round it went on from, and where
    energy_j: float = math.nan  # the whole call's joules (see paragrad.training.energy)
    cpu_s: float = math.nan  # the whole call's CPU seconds, coordinator and workers
    energy_source: str = ""  # how energy_j was obtained: counters, or an estimate
    # The rounds' time spent on checkpoints: taking snapshots, appending records to a log,
    # and waiting for a file's write still in flight (files are written in the background).
    checkpoint_s: float = 0.0
    checkpoints_written: int = 0

    @property
    def worker_seconds(self) -> float:
        """Workers x seconds held, from the membership of every round: the set-up and any
        time outside the rounds at the first and last rounds' worker counts."""
        counts = [record.get("workers", self.num_workers) for record in self.history] or [self.num_workers]
        rounds = sum(record["wall_s"] * count for record, count in zip(self.history, counts, strict=False))
        outside = max(self.total_s - self.setup_s - sum(record["wall_s"] for record in self.history), 0.0)
        return self.setup_s * counts[0] + rounds + outside * counts[-1]

    @property
    def outcome(self) -> str:
        """How the run ended, in words: converged, or why not."""
        return {
            "converged": "converged",
            "solved": "converged: solved exactly",
            "round limit": "not converged: stopped at the round limit",
            "line search stalled": "not converged: the line search stalled",
            "no finite optimum": "not converged: no finite optimum (separable classes)",
            "stopped by a callback": "not converged: stopped by a callback",
        }[self.stopped]

    @property
    def params(self) -> np.ndarray:
        """The trained flat parameter vector."""
        return self.model.params

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan

    def _setup_text(self) -> str:
        if not self.setup_parts:
            return "starting workers, placing data, set-up pass"
        return ", ".join(f"{name} {seconds:.3f} s" for name, seconds in self.setup_parts.items())

    def summary(self) -> str:
        """A table of the run: rounds, training loss, speed, where the time went, traffic, cost.

        The whole call splits into set-up (starting the workers, placing the data, the
        set-up pass) and the rounds; each round's wall time splits into computing (the
        workers' mean), waiting for the slowest worker, communication (moving data
        between processes) and the coordinator's own work. Speed counts the rows the
        workers computed on per second of rounds. Worker-seconds are the workers held x
        time, round by round (see :attr:`worker_seconds`): what a pay-per-use cloud bills.
        Changes of the workers are listed with their round, cause and cost.
        """
        total = {key: sum(record.get(key, 0.0) for record in self.history) for key in SUMMED}
        wait, slowest = total["wait_s"], total["compute_s"]
        compute = slowest - wait
        coordinator = max(total["wall_s"] - slowest - total["comm_s"], 0.0)
        wall = max(total["wall_s"], 1e-12)
        whole = max(self.total_s, self.setup_s + total["wall_s"])
        lines = [
            f"model         {self.model!r}"
            + (f"\nchosen        {self.model_choice}" if self.model_choice else ""),
            f"strategy      {self.strategy!r}{f' with {self.optimizer}' if self.optimizer else ''} on "
            f"{self.engine} engine, {self.num_workers} worker{'s' if self.num_workers != 1 else ''}"
            + (" at the end" if self.changes else "")
            + (f"\nengine        {self.engine_choice}" if self.engine_choice else ""),
            f"rounds        {len(self.history)} ({self.outcome})"
            + (f"\nresumed       {self.resumed}" if self.resumed else ""),
            f"training loss {self.final_loss:.6g}",
            f"speed         {total['samples'] / wall:,.0f} samples/s ({total['samples']:,} rows processed)",
            f"time          {whole:.3f} s in all: set-up {self.setup_s:.3f} s ({self._setup_text()}), "
            f"rounds {total['wall_s']:.3f} s"
            + (
                f", changes of the workers {sum(c.seconds for c in self.changes):.3f} s"
                if self.changes
                else ""
            )
            + (
                f", checkpoints {self.checkpoint_s:.3f} s ({self.checkpoints_written} written)"
                if self.checkpoints_written
                else ""
            ),
            f"rounds time   computing {compute:.3f} s, waiting for the slowest {wait:.3f} s, "
            f"communication {total['comm_s']:.3f} s, coordinator {coordinator:.3f} s",
            f"traffic       {total['bytes_sent'] / 1e6:.3f} MB sent, "
            f"{total['bytes_received'] / 1e6:.3f} MB received",
            f"cost          {self.worker_seconds:.3f} worker-seconds",
            f"energy        {self.energy_j:.3g} J, {self.cpu_s:.3f} CPU-seconds ({self.energy_source})",
            f"stragglers    {slowest / compute if compute > 0 else 1.0:.2f} "
            "(slowest worker's compute / mean)",
        ]
        lines += [
            f"workers       {change.before} -> {change.after} before round {change.round} "
            f"({change.cause}; {change.seconds:.3f} s)"
            for change in self.changes
        ]
        if self.scaling:
            lines.append(f"scaling       {self.scaling}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trained model to a ``.npz`` model file (see :func:`paragrad.load_model`)."""
        self.model.save(path)


@dataclass(frozen=True)
class RunConfig:
    """What identifies a run: a checkpoint resumes only a run with the same values.

    Strategies and optimizers are described by their declared settings (``config()``),
    so an attribute added to a class later does not make old checkpoints foreign.
    """

    model: str
    model_config: dict[str, Any]
    num_rows: int
    num_features: int
    strategy: dict[str, Any]
    optimizer: dict[str, Any]
    seed: int
    dtype: str
    standardize: bool
    shuffle: bool
    classes: list[Any] | None = None

    @classmethod
    def of(
        cls,
        model: Model,
        data: Dataset,
        strategy: Strategy,
        optimizer: Optimizer,
        seed: int,
        dtype: Any,
        standardize: bool,
        shuffle: bool,
    ) -> RunConfig:
        return cls(
            model.name,
            model.get_config(),
            data.num_rows,
            data.num_features,
            strategy.config(),
            optimizer.config(),
            seed,
            str(np.dtype(dtype)),
            standardize,
            shuffle,
        )

    def with_classes(self, classes: np.ndarray | None) -> RunConfig:
        return dataclasses.replace(self, classes=None if classes is None else classes.tolist())

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON values (as a checkpoint stores it)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """How a stored configuration differs from this one (the classes, known only once
        the data is read, are compared later)."""
        current = self.to_json()
        return [
            f"{key} {stored.get(key)!r} (now {value!r})"
            for key, value in current.items()
            if key != "classes" and stored.get(key) != value
        ]
