"""Writes done on a thread of their own, one at a time, off the rounds' critical path.

A checkpoint is a snapshot written to disk: the run takes the snapshot (a copy of a few
vectors) and goes on with its rounds while the file is written, flushed and synced. At
most one write is in flight; the next waits for it, so the files still appear in order and
a failure (a full disk) is raised in the run at the next write or at its end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BackgroundWriter:
    """Runs one write at a time on a thread; ``waited_s`` is what the caller waited for them."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.waited_s = 0.0  # the caller's time spent waiting for a write to finish
        self.written = 0  # writes finished

    def submit(self, write: Callable[[], object]) -> None:
        """Start ``write`` once the one before has finished (raising its error, if any)."""
        self.wait()

        def run() -> None:
            try:
                write()
                self.written += 1
            except BaseException as exc:  # handed to the caller at the next wait
                self._error = exc

        self._thread = threading.Thread(target=run, name="paragrad-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise what it raised."""
        if self._thread is not None:
            started = time.perf_counter()
            self._thread.join()
            self.waited_s += time.perf_counter() - started
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
