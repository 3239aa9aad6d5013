"""Compressed bodies: requests inflated (gzip, deflate) and answers compressed when asked.

A compressed request is inflated never past the server's body limit (a small gzip body
can hold gigabytes of blanks). Answers of ``MIN_COMPRESSED`` bytes or more are compressed
when ``Accept-Encoding`` takes gzip or deflate, at zlib's fastest level (1), so that
compressing costs the server little; a large one in a thread, since zlib lets go of the
interpreter lock while it works.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Mapping

from starlette.responses import Response

from paragrad.serving.tensors import RequestError

ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
MIN_COMPRESSED = 1024  # answers shorter than this go uncompressed: the saving is not worth it
LARGE_ANSWER = 1024 * 1024  # answers compressed in a thread from this size


def content_encoding(headers: Mapping[str, str]) -> str | None:
    """The body's compression (gzip or deflate), None for none; 415 for another."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in ENCODINGS:
        raise RequestError(415, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    return encoding


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed (gzip, or deflate zlib-wrapped or raw), refused past ``limit`` bytes."""
    # some clients send deflate without zlib's wrapping: then it is read raw
    tries = (ENCODINGS[encoding], -zlib.MAX_WBITS) if encoding == "deflate" else (ENCODINGS[encoding],)
    for wbits in tries:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit or inflater.unconsumed_tail:
            raise RequestError(
                413, f"the request body inflates past {limit} bytes, the most this server takes"
            )
        if not inflater.eof:
            raise RequestError(400, f"the request body is cut short ({encoding} data ends early)")
        return data
    raise RequestError(400, f"the request body is not valid {encoding} data (Content-Encoding: {encoding})")


async def compressed(response: Response, accepted: str) -> Response:
    """``response`` gzip- or deflate-compressed when the client accepts either (a large one
    in a thread: zlib lets go of the interpreter lock)."""
    encoding = chosen_encoding(accepted)
    if encoding is None or "content-encoding" in response.headers:
        return response
    body = bytes(response.body)
    if len(body) < LARGE_ANSWER:
        packed = pack(body, encoding)
    else:
        packed = await asyncio.to_thread(pack, body, encoding)
    response.body = packed
    response.headers["content-length"] = str(len(packed))
    response.headers["content-encoding"] = encoding
    response.headers["vary"] = "Accept-Encoding"
    return response


def chosen_encoding(accepted: str) -> str | None:
    """gzip or deflate, whichever ``Accept-Encoding`` takes (gzip first); None for neither."""
    weights: dict[str, float] = {}
    for item in accepted.lower().split(","):
        name, _, params = item.strip().partition(";")
        q = params.strip().removeprefix("q=")
        try:
            weights[name.strip()] = float(q) if q else 1.0
        except ValueError:
            continue
    for encoding in ("gzip", "deflate"):
        if weights.get(encoding, weights.get("*", 0.0)) > 0:
            return encoding
    return None


def pack(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    return zlib.compress(body, 1)  # deflate means zlib-wrapped (RFC 9110)
