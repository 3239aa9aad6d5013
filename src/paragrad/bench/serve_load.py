"""The ``serve`` suite's load generator: a closed loop of HTTP/1.1 clients in a process of its own.

Each of ``concurrency`` clients holds one keep-alive connection to 127.0.0.1 and sends its
next request (the same pre-built bytes) as soon as the answer to the previous one has
arrived. Answers are read by their ``Content-Length`` with no HTTP library in the way:
an asyncio protocol on uvloop when it is installed, so that the client costs a few tens of
microseconds a request and the server, not the client, sets the pace.

A warm-up comes first; the measured phase then ends at ``max_requests`` answers or after
``measure_s`` seconds, whichever comes first. Requests/s counts the answers in that
window; the latencies are those of the requests sent in it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import numpy as np

HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Load:
    """One measurement: where to send what, how many clients, and for how long."""

    port: int
    model: str
    rows: int
    features: int
    concurrency: int
    warmup_s: float
    measure_s: float
    max_requests: int
    warmup_requests: int = 1  # answers before measuring, at least
    stall_s: float = 60.0  # a server silent this long fails the measurement
    binary: bool = False  # Triton's binary tensor extension both ways, instead of JSON


def infer_body(rows: int, features: int, seed: int = 0) -> bytes:
    """A V2 infer request body of ``rows`` standard normal rows, as ``json.dumps`` writes them."""
    X = np.random.default_rng(seed).standard_normal((rows, features))
    tensor = {"name": "input-0", "shape": [rows, features], "datatype": "FP64", "data": X.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(rows: int, features: int, seed: int = 0) -> tuple[bytes, int]:
    """The same rows as :func:`infer_body` as Triton's clients send them by default: a JSON
    header, then the raw float64 data; every output asked back as raw data too. Returns the
    body and the header's length."""
    X = np.random.default_rng(seed).standard_normal((rows, features))
    tensor = {
        "name": "input-0",
        "shape": [rows, features],
        "datatype": "FP64",
        "parameters": {"binary_data_size": X.nbytes},
    }
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + X.astype("<f8").tobytes(), len(header)


def request_bytes(port: int, model: str, body: bytes, header_length: int | None = None) -> bytes:
    kind = "application/json" if header_length is None else "application/octet-stream"
    extra = "" if header_length is None else f"Inference-Header-Content-Length: {header_length}\r\n"
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {kind}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Run:
    """The shared state of one measurement: its phase, the latencies, the errors."""

    def __init__(self, load: Load, request: bytes, done: asyncio.Future) -> None:
        self.load, self.request, self.done = load, request, done
        self.started = time.perf_counter()
        self.t0: float | None = None  # measuring from
        self.t1: float | None = None  # measured until
        self.warm = 0
        self.completed = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.active = load.concurrency
        self.last_answer = self.started

    def answered(self, client: _Client, status: int, sent: float) -> None:
        now = time.perf_counter()
        self.last_answer = now
        if status != 200:
            self.errors += 1
        if self.t0 is None:
            self.warm += 1
            if self.warm >= self.load.warmup_requests and now - self.started >= self.load.warmup_s:
                self.t0 = now
        elif self.t1 is None:
            self.completed += 1
            if sent >= self.t0:
                self.latencies.append(now - sent)
            if len(self.latencies) >= self.load.max_requests or now - self.t0 >= self.load.measure_s:
                self.t1 = now
        if self.t1 is None:
            client.send()
        else:
            self.finished(client)

    def finished(self, client: _Client) -> None:
        if client.transport is not None:
            client.transport.close()
            client.transport = None
            self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    """One connection: send, read the answer by its Content-Length, report, repeat."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected = -1  # bytes of the answer being read, head included; -1: head not yet read
        self.status = 0
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected < 0:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            length = [
                line.partition(":")[2] for line in lines[1:] if line.lower().startswith("content-length:")
            ]
            if not length:  # not an answer this client can read: count it and stop
                self.run.errors += 1
                self.run.finished(self)
                return
            self.expected = end + len(HEAD_END) + int(length[0])
        if len(self.buffer) >= self.expected:
            del self.buffer[: self.expected]
            self.expected = -1
            self.run.answered(self, self.status, self.sent)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # the server closed it mid-measurement
            self.run.errors += 1
            self.run.finished(self)


async def _measure(load: Load, request: bytes) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = _Run(load, request, loop.create_future())
    clients = []
    for _ in range(load.concurrency):
        _, client = await loop.create_connection(lambda: _Client(run), "127.0.0.1", load.port)
        clients.append(client)
    run.started = run.last_answer = time.perf_counter()
    for client in clients:
        client.send()
    while not run.done.done():
        await asyncio.wait([run.done], timeout=1.0)
        if time.perf_counter() - run.last_answer > load.stall_s:
            run.errors += sum(1 for client in clients if client.transport is not None)
            for client in clients:
                run.finished(client)
    return _summary(run)


def _summary(run: _Run) -> dict[str, Any]:
    latencies = np.asarray(run.latencies)
    wall = (run.t1 or time.perf_counter()) - (run.t0 or run.started)
    measured = len(latencies) > 0
    return {
        "requests": len(latencies),
        "requests_per_s": run.completed / wall if measured else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) * 1e3 if measured else None,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3 if measured else None,
        "errors": run.errors,
    }


def measure(load: Load, body: bytes, header_length: int | None = None) -> dict[str, Any]:
    """Run ``load`` in this process (on uvloop when installed) and summarise it."""
    request = request_bytes(load.port, load.model, body, header_length)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_measure(load, request))
    finally:
        loop.close()


def _serve_loads(conn: Connection) -> None:
    """The load process: measure each :class:`Load` received, answer its summary (or the
    failure, as text); None ends it."""
    bodies: dict[tuple[int, int, bool], tuple[bytes, int | None]] = {}
    while True:
        load = conn.recv()
        if load is None:
            return
        try:
            key = (load.rows, load.features, load.binary)
            if key not in bodies:
                made = binary_body(load.rows, load.features) if load.binary else None
                bodies[key] = made or (infer_body(load.rows, load.features), None)
            conn.send(measure(load, *bodies[key]))
        except Exception:  # a server gone or refusing connections: the suite says which
            conn.send({"failure": traceback.format_exc()})


class LoadGenerator:
    """A spawned process that runs loads one at a time: ``with LoadGenerator() as g: g.run(load)``."""

    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_loads, args=(child,), daemon=True)

    def __enter__(self) -> LoadGenerator:
        self._process.start()
        return self

    def run(self, load: Load) -> dict[str, Any]:
        self._conn.send(load)
        budget = load.warmup_s + load.measure_s + 4 * load.stall_s + 120
        if not self._conn.poll(budget):
            raise TimeoutError(f"the load generator gave no result in {budget:.0f} s")
        result: dict[str, Any] = self._conn.recv()
        if "failure" in result:
            raise RuntimeError(f"load on port {load.port} failed:\n{result['failure']}")
        return result

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
