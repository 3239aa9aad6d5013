"""Engines: where the workers run (``serial``, ``local``, ``ray``)."""

from __future__ import annotations

from paragrad.engines.base import Engine
from paragrad.errors import ConfigError
from paragrad.shards import FunctionTask, Shard, Task, default_workers

ENGINES = ("serial", "local", "ray")


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
    if address is not None and name != "ray":
        raise ConfigError(f"address= joins a Ray cluster: use engine='ray', not {name!r}")
    if name == "serial":
        from paragrad.engines.serial import SerialEngine

        return SerialEngine(workers)
    if name == "local":
        from paragrad.engines.local import LocalEngine

        return LocalEngine(workers, max_restarts=max_restarts, threads_per_worker=threads_per_worker)
    if name == "ray":
        from paragrad.engines.ray import RayEngine

        return RayEngine(
            workers, address=address, max_restarts=max_restarts, cpus_per_worker=threads_per_worker
        )
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "FunctionTask", "Shard", "Task", "default_workers", "make_engine"]
