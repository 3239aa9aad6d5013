"""The access log: one JSON line per request, written in batches (by the server's log
writer thread, so that a reader that stops reading stops nothing).

A write (and flush) per request through :mod:`logging` took a fifth of the server's time
on one-row requests, as much as predicting them; lines are gathered here and written
together every ``interval`` seconds, and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

log = logging.getLogger("paragrad.serving")


class Stream(Protocol):
    """Where lines go: a binary file, or the server's :class:`~.log_writer.BackgroundWriter`."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


MAX_WAITING_LINES = 100_000  # beyond this between two flushes, lines are not kept


class AccessLog:
    """Requests as JSON lines on ``stream`` (time, client, method, path, status, ms, model,
    version, rows)."""

    def __init__(self, stream: Stream, interval: float = 0.2) -> None:
        self._stream = stream
        self._interval = interval
        self._lines: list[bytes] = []
        self.dropped = 0  # lines that could not be written
        self._second = -1
        self._stamp = ""

    def record(self, scope: Mapping[str, Any], status: int, seconds: float, fields: dict[str, Any]) -> None:
        now = int(time.time())
        if now != self._second:  # formatting the time costs more than the rest of the line
            self._second, self._stamp = now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        client = scope.get("client")
        line = {
            "time": self._stamp,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "ms": round(seconds * 1000, 3),
            **fields,
        }
        if len(self._lines) < MAX_WAITING_LINES:
            self._lines.append(orjson.dumps(line))
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Write the gathered lines; lines that cannot be written (a closed pipe, a full
        disk) are dropped and counted, and writing is tried again at the next flush."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if not self.dropped:
                log.warning("the access log cannot be written (%s); its lines are dropped until it can", exc)
            self.dropped += len(lines)

    async def run(self) -> None:
        """Write what has gathered every ``interval`` seconds, until cancelled (then the rest)."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.flush()
        finally:
            self.flush()
