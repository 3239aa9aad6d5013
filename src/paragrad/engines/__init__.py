"""Engines: where the workers run (``serial``, ``threads``, ``forked``, ``local``, ``ray``)."""

from __future__ import annotations

from paragrad.core.shards import FunctionTask, Shard, Task, default_workers
from paragrad.engines.base import Engine
from paragrad.errors import ConfigError, check_positive_int

ENGINES = ("serial", "threads", "forked", "local", "ray")
AUTO = "auto"  # the default: the engine the work calls for (paragrad.training.settings.default_engine)


def engine_class(name: str) -> type[Engine]:
    """The engine class for a name, imported only when asked for."""
    if name == "serial":
        from paragrad.engines.serial import SerialEngine

        return SerialEngine
    if name == "threads":
        from paragrad.engines.threads import ThreadEngine

        return ThreadEngine
    if name == "forked":
        from paragrad.engines.forked import ForkedEngine

        return ForkedEngine
    if name == "local":
        from paragrad.engines.local import LocalEngine

        return LocalEngine
    if name == "ray":
        from paragrad.engines.ray import RayEngine

        return RayEngine
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


def reads_own_rows(engine: str | Engine) -> bool:
    """Whether an engine's workers read their own rows of a file (see ``Engine``)."""
    if isinstance(engine, Engine):
        return engine.reads_own_rows
    return engine != AUTO and engine_class(engine).reads_own_rows


def make_engine(
    name: str,
    workers: int | None = None,
    *,
    address: str | None = None,
    max_restarts: int = 0,
    threads_per_worker: int = 1,
) -> Engine:
    """A new engine by name, with the options that apply to it.

    ``threads_per_worker`` is each local worker's BLAS threads, or the CPUs each Ray actor
    reserves (and its BLAS threads); ``address`` joins a Ray cluster.
    """
    check_positive_int("workers", workers, allow_none=True, what="a positive integer here (not a range)")
    options = {"max_restarts": max_restarts, "threads_per_worker": threads_per_worker}
    return engine_class(name).from_options(workers, address=address, **options)


__all__ = [
    "AUTO",
    "ENGINES",
    "Engine",
    "FunctionTask",
    "Shard",
    "Task",
    "default_workers",
    "engine_class",
    "make_engine",
    "reads_own_rows",
]
