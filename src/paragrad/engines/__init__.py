"""Engines: where the workers run (``serial``, ``local``, ``ray``)."""

from __future__ import annotations

from typing import Any

from paragrad.engines.base import Engine, Shard, default_workers
from paragrad.errors import ConfigError

ENGINES = ("serial", "local", "ray")


def make_engine(name: str, workers: int | None = None, **options: Any) -> Engine:
    """A new engine by name; ``options`` go to its constructor."""
    if name == "serial":
        from paragrad.engines.serial import SerialEngine

        return SerialEngine(workers, **options)
    if name == "local":
        from paragrad.engines.local import LocalEngine

        return LocalEngine(workers, **options)
    if name == "ray":
        raise ConfigError("the ray engine is not available yet; use engine='local' or 'serial'")
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "Shard", "default_workers", "make_engine"]
