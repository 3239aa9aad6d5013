"""The server's Prometheus metrics, in a registry of its own (two servers in one process
do not share counts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from paragrad.serving.batching import BatchRecord
from paragrad.training.energy import EnergyMeter

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
NO_MODEL = "-"  # the model label of requests that name no served model
INFERENCE = ("infer", "predict_v1")  # the endpoints whose latency is measured


class Metrics:
    """Requests by model and status code, latency, batch sizes, queue time, model versions."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._batches: dict[str, tuple[Any, Any]] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "paragrad_requests",
            "Requests answered, by model, endpoint and HTTP status code",
            ["model", "endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "paragrad_request_seconds",
            "Time from an inference request's arrival to its answer (200s only)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "paragrad_batch_rows",
            "Rows predicted together in one batch",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "paragrad_queue_seconds",
            "Time a request waited for its batch to start",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.version = Gauge(
            "paragrad_model_version",
            "1 for the version of each model now served",
            ["model", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "paragrad_model_reloads",
            "Model files read again after they changed, by outcome",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "paragrad_log_lines_dropped",
            "Log lines dropped because stderr took no more (a pipe nobody reads)",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "paragrad_queue_depth", "Requests waiting for a batch", ["model"], registry=self.registry
        )
        self.registry.register(EnergyCollector(EnergyMeter()))

    def answered(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        """Count a request; time it when it is an inference answered 200."""
        key = (model, endpoint, code)
        if key not in self._answers:  # looking labels up costs more than counting
            timed = code == 200 and endpoint in INFERENCE
            latency = self.latency.labels(model) if timed else None
            self._answers[key] = (self.requests.labels(model, endpoint, str(code)), latency)
        count, latency = self._answers[key]
        count.inc()
        if latency is not None:
            latency.observe(seconds)

    def model_added(self, model: str) -> None:
        """Make a model's reload counts visible (at 0) before its first reload."""
        for outcome in ("loaded", "failed"):
            self.reloads.labels(model, outcome)

    def batched(self, model: str, record: BatchRecord) -> None:
        if model not in self._batches:
            self._batches[model] = (self.batch_rows.labels(model), self.queue_seconds.labels(model))
        rows, queue = self._batches[model]
        rows.observe(record.rows)
        for wait in record.waits:
            queue.observe(wait)

    def serving(self, model: str, version: str, previous: str | None) -> None:
        if previous is not None:
            self.version.remove(model, previous)
        self.version.labels(model, version).set(1)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class EnergyCollector:
    """``paragrad_energy_joules``: the joules the server has used since it started, read
    when scraped: the CPU's counters where readable, else the server process's CPU time
    times the watts per core (label ``source``; see :mod:`paragrad.training.energy`)."""

    def __init__(self, meter: EnergyMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[CounterMetricFamily]:
        source = "rapl" if self.meter.measured else "estimate"
        family = CounterMetricFamily(
            "paragrad_energy_joules", f"Energy used since the server started ({source})", labels=["source"]
        )
        family.add_metric([source], self.meter.total().energy_j)
        yield family
