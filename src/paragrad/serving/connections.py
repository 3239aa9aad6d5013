"""uvicorn's HTTP connection with the limits it lacks: deadlines for a request's headers
and for its body, and a cap on open connections.

Without them a client can hold the server's resources for nothing: a connection that
never sends its headers (or sends them a byte at a time) stays open forever, and enough
of them exhaust the process's file descriptors. A connection that has not sent a whole
request head ``header_timeout`` seconds after it opened (or after the next request's first
byte) is
answered 408 and closed; one opened while ``max_connections`` are open is answered 503
with ``Retry-After`` and closed. Both answers are the server's usual ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: b"Request Timeout", 503: b"Service Unavailable"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what uvicorn writes to a client that waits for it


def refusal(status: int, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP answer ``{"error": message}`` that closes the connection."""
    body = orjson.dumps({"error": message})
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n" % (status, REASONS[status], len(body), extra)
    )
    return head + body


class LimitedConnection(HttpToolsProtocol):
    """One client connection, with the header and body deadlines and the connection cap.

    The deadlines share one timer per connection that is moved only when it goes off: a
    request just sets the deadline of the part awaited (its head, then its body). Starting
    and cancelling two timers per request cost more than the deadlines' checks themselves.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaited: str | None = None  # "headers" or "body": what must arrive by the deadline
        self._deadline = 0.0  # in the loop's time
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            message = f"the server holds its most connections ({self.max_connections}); retry shortly"
            self._refused = True
            transport.write(refusal(503, message, b"retry-after: 1\r\n"))
            transport.close()
            return
        super().connection_made(transport)
        self._await("headers", self.header_timeout)

    def on_message_begin(self) -> None:  # the first byte of a request (an idle one is keep-alive's)
        super().on_message_begin()
        self._await("headers", self.header_timeout)

    def on_headers_complete(self) -> None:
        self._awaited = None
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and self.cycle is not None:  # a new request's answer
            self.cycle.transport = OneWrite(self.transport)  # type: ignore[assignment]
        self._await("body", self.body_timeout)

    def on_response_complete(self) -> None:
        if self.cycle is not None and isinstance(self.cycle.transport, OneWrite):
            self.cycle.transport.flush()  # a head without a body (HEAD), held until now
        super().on_response_complete()

    def on_message_complete(self) -> None:
        self._awaited = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._awaited = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._refused:
            super().connection_lost(exc)

    def _await(self, part: str, timeout: float) -> None:
        """``part`` must arrive within ``timeout`` seconds; the timer goes off by then."""
        self._awaited, self._deadline = part, self.loop.time() + timeout
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._went_off)

    def _went_off(self) -> None:
        self._timer = None
        if self._awaited is None:
            return  # nothing is awaited: the next request's first byte sets a deadline again
        if self._deadline - self.loop.time() > 0.001:  # moved since it was set (timers keep milliseconds)
            self._timer = self.loop.call_at(self._deadline, self._went_off)
        elif self._awaited == "headers":
            self._headers_too_late()
        else:
            self._body_too_late()

    def _body_too_late(self) -> None:
        if self.cycle is None or self.cycle.response_started:
            return  # answered already (refused before its body, say): nothing to cut short
        message = f"the request's body did not arrive within {self.body_timeout:g} s"
        self.transport.write(refusal(408, message))
        self.transport.close()

    def _headers_too_late(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its head arrived
        message = f"the request's headers did not arrive within {self.header_timeout:g} s"
        self.transport.write(refusal(408, message))
        self.transport.close()


class OneWrite:
    """What a request's answer is written to: the connection, with the answer's head held
    back until its body comes, so that both leave in one write. uvicorn writes them apart:
    two system calls and two packets for every answer, and a client woken twice. (It knows
    the head as the first write but a 100 Continue: holding the request's cycle to ask would
    make a reference cycle per request, left to the garbage collector.)"""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._held = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif not self._held and data != CONTINUE:  # the answer's head
            self._head, self._held = data, True
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def connection_class(
    header_timeout: float, body_timeout: float, max_connections: int
) -> type[LimitedConnection]:
    """:class:`LimitedConnection` with these limits, for ``uvicorn.Config(http=...)``."""
    limits = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("LimitedConnection", (LimitedConnection,), {**limits, "max_connections": max_connections})
