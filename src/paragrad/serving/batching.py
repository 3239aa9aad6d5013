"""Dynamic batching: the rows of concurrent requests to one model version, predicted at once.

A batch starts with the oldest waiting request and takes the next ones while they fit in
``max_batch`` rows. It waits for more only while requests to this version whose bodies
have arrived are still being parsed (``expect``/``submit``), and never longer than
``max_wait`` after its first request arrived: a lone request goes at once, a burst goes
together. A body still on the network is not waited for, so a client that sends one byte
a second delays nobody but itself. The wait sleeps until a request arrives or the time is
up (no polling). While a batch is predicted the next one gathers. Each request gets its
own rows back, in its order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Outputs = dict[str, np.ndarray]  # output name -> one row per input row
Predict = Callable[[np.ndarray], Outputs]

# Batches of at most this many multiply-adds are predicted on the event loop: a thread hop
# costs more than they do. Larger ones go to a thread, so that the loop keeps reading requests.
INLINE_WORK = 2_000_000


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests: the client should retry later."""


@dataclass
class Waiting:
    """A request in the queue: its rows, where its answer goes, and when it arrived."""

    X: np.ndarray
    answer: asyncio.Future
    since: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchRecord:
    """What one batch did, for the metrics: its rows and each request's wait in the queue."""

    rows: int
    waits: list[float]


class Batcher:
    """Gathers the requests to one model version into batches and predicts them."""

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        work_per_row: int,
        on_batch: Callable[[BatchRecord], None] = lambda record: None,
        offload: Callable[[np.ndarray], Predict | None] = lambda X: None,
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._work_per_row = work_per_row
        self._on_batch = on_batch
        self._offload = offload  # a predictor for rows too many for this process, if any
        self._queue: deque[Waiting] = deque()
        self._coming = 0  # requests being read that will be submitted here
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def expect(self) -> None:
        """A request for this version has arrived and is being parsed; call :meth:`submit`
        or :meth:`forget` next."""
        self._coming += 1

    def forget(self) -> None:
        """An expected request will not come (it was malformed, or the client left)."""
        self._coming -= 1
        self._wake.set()

    def submit(self, X: np.ndarray) -> asyncio.Future:
        """Queue rows ``X``; the future gets their outputs. :class:`QueueFull` when full."""
        self._coming -= 1
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the model's queue is full ({len(self._queue)} waiting)")
        waiting = Waiting(X, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._wake.set()
        return waiting.answer

    async def close(self) -> None:
        """Answer every queued request and every expected one, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing and self._coming <= 0:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._gather()
            await self._answer(batch)

    async def _gather(self) -> list[Waiting]:
        deadline = self._queue[0].since + self.max_wait_s
        batch: list[Waiting] = []
        rows = 0
        while True:
            while self._queue and (not batch or rows + len(self._queue[0].X) <= self.max_batch):
                waiting = self._queue.popleft()
                batch.append(waiting)
                rows += len(waiting.X)
            full = rows >= self.max_batch or bool(self._queue)
            left = deadline - time.perf_counter()
            if full or self._coming <= 0 or self._closing or left <= 0:
                return batch
            self._wake.clear()  # set again by the next submit or forget
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _answer(self, batch: list[Waiting]) -> None:
        started = time.perf_counter()
        X = batch[0].X if len(batch) == 1 else np.concatenate([waiting.X for waiting in batch])
        try:
            predict = self._offload(X) or self._predict
            if predict is self._predict and len(X) * self._work_per_row <= INLINE_WORK:
                outputs = predict(X)
            else:
                outputs = await asyncio.to_thread(predict, X)
        except Exception as exc:  # every waiting request learns of it
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            return
        self._on_batch(BatchRecord(len(X), [started - waiting.since for waiting in batch]))
        start = 0
        for waiting in batch:
            stop = start + len(waiting.X)
            if not waiting.answer.done():  # the client may have gone
                waiting.answer.set_result({name: values[start:stop] for name, values in outputs.items()})
            start = stop
