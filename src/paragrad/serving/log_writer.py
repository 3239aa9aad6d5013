"""Everything the server writes while serving goes through one thread, never the event loop.

A write to a pipe that nobody reads blocks once the pipe is full (64 KiB on Linux): a
server writing its log on the event loop then stops answering anyone, health probes
included. Here the loop only hands bytes to a bounded buffer; a thread writes them to the
file descriptor. When the buffer is full (the reader is gone or slow) lines are dropped
and counted (``paragrad_log_lines_dropped`` in the metrics), and serving goes on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import IO

MAX_PENDING_BYTES = 4 * 1024 * 1024  # written lines waiting for the reader before new ones are dropped


class BackgroundWriter:
    """A stream whose ``write`` never blocks: bytes go to a thread that writes them to ``fd``."""

    def __init__(self, fd: int, max_pending: int = MAX_PENDING_BYTES) -> None:
        self._fd = fd
        self._max_pending = max_pending
        self._chunks: deque[bytes] = deque()
        self._pending = 0
        self._ready = threading.Condition()
        self._closed = False
        self.dropped = 0  # lines not written: the buffer was full or the descriptor refused them
        self._thread = threading.Thread(target=self._run, name="paragrad-log-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        with self._ready:
            if self._closed or self._pending + len(data) > self._max_pending:
                self.dropped += max(1, data.count(b"\n"))
                return 0
            self._chunks.append(data)
            self._pending += len(data)
            self._ready.notify()
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can."""

    def close(self, timeout: float = 1.0) -> None:
        """Write what is pending within ``timeout`` seconds (a reader that is gone gets nothing)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._chunks and not self._closed:
                    self._ready.wait()
                if not self._chunks:
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                with self._ready:
                    self.dropped += max(1, data.count(b"\n"))
            with self._ready:
                self._pending -= len(data)


class WriterHandler(logging.Handler):
    """A logging handler that formats a record and hands it to a :class:`BackgroundWriter`."""

    def __init__(self, writer: BackgroundWriter | IO[bytes]) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record).encode("utf-8", "replace") + b"\n")
        except Exception:  # a record that cannot be formatted must not stop a request
            self.handleError(record)
