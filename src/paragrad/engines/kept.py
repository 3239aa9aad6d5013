"""The local engine that calls without an engine object share, kept between calls.

Starting worker processes and placing the data cost more than many whole training runs,
and a grid search, cross-validation or scikit-learn's repeated ``fit`` call ``train``
and ``predict`` again and again. So the first such call on the local engine starts an
engine that the next calls with the same settings use again: its workers are already
running, and data placed again goes into the pages of the data placed before, at the
memory's copy speed (see :class:`~paragrad.engines.local.LocalEngine`).

Its lifetime: it stops after ``PARAGRAD_IDLE_S`` seconds unused (default 30; ``0`` stops
it at the end of every call), when the program ends, or on :func:`release_kept_engine`.
Its workers exit with the program whatever ends it, and its memory is anonymous, so
nothing outlives the program. A call made while another thread's call holds it starts
an engine of its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from paragrad.engines.base import ROUND_TIMEOUT_S, START_TIMEOUT_S, Engine
from paragrad.errors import ConfigError

DEFAULT_IDLE_S = 30.0
MAX_IDLE_S = 1e6  # about 11 days: longer than any program needs, within what timers take


class _Kept:
    """The kept engine, its settings, and the timer that stops it once idle."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held by the call using the engine
        self.engine: Engine | None = None
        self.settings: tuple = ()
        self.timer: threading.Timer | None = None


_kept = _Kept()


def _forget_in_child() -> None:
    """A forked child starts without a kept engine: the one it inherited is its parent's
    (its pipes reach the parent's workers), so it is neither used nor stopped here."""
    global _kept
    engine = _kept.engine
    finalizer = getattr(engine, "_finalizer", None)
    if finalizer is not None:
        finalizer.detach()  # the child's exit must not stop the parent's workers
    _kept = _Kept()


os.register_at_fork(after_in_child=_forget_in_child)


def idle_seconds() -> float:
    """How long the kept engine waits for another call (``PARAGRAD_IDLE_S``)."""
    text = os.environ.get("PARAGRAD_IDLE_S", "")
    if not text:
        return DEFAULT_IDLE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < MAX_IDLE_S:
        raise ConfigError(
            f"PARAGRAD_IDLE_S must be a number of seconds from 0 to {MAX_IDLE_S:.0f}, got {text!r}"
        )
    return seconds


@contextmanager
def engine_for_call(
    name: str, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
) -> Iterator[Engine]:
    """The engine for one call: the kept local engine, or one of its own for other
    engines, for an engine busy in another thread, or with ``PARAGRAD_IDLE_S=0``."""
    from paragrad.engines import make_engine

    options: dict[str, Any] = {
        "address": address,
        "max_restarts": max_restarts,
        "threads_per_worker": threads_per_worker,
    }
    idle_s = idle_seconds() if name == "local" else 0.0
    if idle_s == 0 or not _kept.lock.acquire(blocking=False):
        with make_engine(name, workers, **options) as engine:
            yield engine
        return
    try:
        engine = _take(workers, options)
        yield engine
    except BaseException:
        _stop_kept()  # whatever went wrong, the next call starts afresh
        raise
    finally:
        _release_later(idle_s)


def is_running() -> bool:
    """Whether a kept local engine is running now (a call would find its workers started)."""
    return _kept.engine is not None


def _release_later(idle_s: float) -> None:
    """Let go of the kept engine, and start the timer that stops it once idle."""
    _kept.timer = threading.Timer(idle_s, _stop_when_idle)
    _kept.timer.daemon = True
    _kept.timer.start()
    _kept.lock.release()


def start_early(
    name: str, workers: int | None, *, address: str | None, max_restarts: int, threads_per_worker: int
) -> None:
    """Start the kept engine's workers now, without waiting for them, so that their start
    overlaps what the caller does before its call (reading a file, say)."""
    if name != "local" or idle_seconds() == 0 or not _kept.lock.acquire(blocking=False):
        return
    try:
        options = {"address": address, "max_restarts": max_restarts, "threads_per_worker": threads_per_worker}
        engine = _take(workers, options)
        engine.start_workers(engine.num_workers)  # type: ignore[attr-defined]
    finally:
        _release_later(idle_seconds())


def _take(workers: int | None, options: dict[str, Any]) -> Engine:
    """The kept engine for these settings, started when there is none or others are asked."""
    from paragrad.engines import make_engine

    if _kept.timer is not None:
        _kept.timer.cancel()
        _kept.timer = None
    settings = (workers, tuple(sorted(options.items())))
    if _kept.engine is None or _kept.settings != settings:
        _stop_kept()
        _kept.engine = make_engine("local", workers, **options)
        _kept.settings = settings
    # A call's own timeouts (train sets them) do not carry over to the next call.
    _kept.engine.round_timeout_s, _kept.engine.start_timeout_s = ROUND_TIMEOUT_S, START_TIMEOUT_S
    return _kept.engine


def _stop_kept() -> None:
    if _kept.engine is not None:
        engine, _kept.engine = _kept.engine, None
        engine.close()


def _stop_when_idle() -> None:
    """The idle timer's end: stop the engine unless a call has taken it since."""
    if _kept.lock.acquire(blocking=False):
        try:
            if _kept.timer is threading.current_thread():  # no call came since it started
                _kept.timer = None
                _stop_kept()
        finally:
            _kept.lock.release()


def release_kept_engine() -> None:
    """Stop the kept engine now (its workers and memory), waiting for a call using it."""
    with _kept.lock:
        if _kept.timer is not None:
            _kept.timer.cancel()
        _stop_kept()
