"""Limits on the threads of the BLAS and OpenMP libraries loaded, through threadpoolctl."""

from __future__ import annotations

import sys
from typing import Any

# threadpoolctl's controller, and how many modules were loaded when it was made.
_controller: tuple[int, Any] | None = None


def blas_threads(limit: int) -> Any:
    """threadpoolctl's limit of ``limit`` threads on every BLAS and OpenMP library loaded:
    a context manager, or undone by its ``restore_original_limits()``.

    The libraries are looked for again only once more modules have been imported (they
    come with the modules that load them): looking walks every library of the process,
    about 3 ms, where a limit with the libraries known costs about 10 us (the threads engine
    sets one for every call of its workers).
    """
    return blas_libraries().limit(limits=limit)


def blas_libraries() -> Any:
    """threadpoolctl's controller of the libraries loaded, found again only once more modules
    have been imported (a process about to fork finds them for its children)."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None or _controller[0] != len(sys.modules):
        _controller = (len(sys.modules), ThreadpoolController())
    return _controller[1]
