"""Request bodies to rows without holding up the event loop.

Parsing JSON holds the interpreter lock for the whole call (orjson and numpy's list
conversion both do), so a 60 MB body parsed on the event loop, or in a thread beside it,
freezes every other client for seconds. Small bodies are parsed on the loop, where a hop
would cost more than the parse; bodies of ``LARGE_BODY`` bytes or more go to a process of
their own, one at a time, so that at most one such body is being parsed at once and the
loop keeps answering the others meanwhile. Compressed bodies are inflated first
(:mod:`.encodings`), a large one in a thread (zlib lets go of the lock).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from paragrad.serving.encodings import inflate
from paragrad.serving.tensors import InferRequest, RequestError, Signature

LARGE_BODY = 4 * 1024 * 1024  # bytes from which a body is parsed in the parsing process
SMALL_COMPRESSED = 64 * 1024  # compressed bodies below this are inflated on the loop
Parse = Callable[[bytes, Signature, int, int | None], InferRequest]


@dataclass(frozen=True)
class Described:
    """What the parsing process needs of a model version: its inputs and outputs."""

    num_features: int
    feature_names: tuple[str, ...] | None
    output_names: tuple[str, ...]

    @classmethod
    def of(cls, version: Signature) -> Described:
        return cls(version.num_features, version.feature_names, version.output_names)


def _detach(parent: int) -> None:
    """In the parsing process: leave the server's stdout and stderr (a test or supervisor waits
    for them to close), and end as soon as the server has ended, however it ended."""
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class BodyParser:
    """Parses request bodies: small ones at once, large ones in the parsing process."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._turn = asyncio.Lock()  # one large body parsed at a time

    async def parse(
        self,
        parse: Parse,
        body: bytes,
        encoding: str | None,
        version: Signature,
        max_rows: int,
        header_length: int | None = None,
    ) -> InferRequest:
        """``body`` (compressed as ``encoding`` says) parsed by ``parse`` for ``version``
        (``header_length``: the JSON's length when binary tensor data follows it)."""
        if encoding is not None:
            if len(body) < SMALL_COMPRESSED:
                body = inflate(body, encoding, self._max_body)
            else:
                body = await asyncio.to_thread(inflate, body, encoding, self._max_body)
        if len(body) < LARGE_BODY:
            return parse(body, version, max_rows, header_length)
        async with self._turn:
            pool = self._started()
            try:
                future = pool.submit(parse, body, Described.of(version), max_rows, header_length)
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:  # the process died (out of memory, say): a new one next time
                self._pool = None
                raise RequestError(503, "the server could not parse this large body; retry") from None

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded server
            self._pool = ProcessPoolExecutor(
                1, mp_context=context, initializer=_detach, initargs=(os.getpid(),)
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
