"""The access log's lines, and what happens when they cannot be written; pg.serve's refusal
to start inside a running event loop."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

import paragrad as pg
from paragrad.serving.access_log import AccessLog

SCOPE = {"method": "POST", "path": "/v2/models/m/infer", "client": ("127.0.0.1", 5000)}


class Flaky(io.BytesIO):
    """A stream whose writes fail while ``broken`` is set (a reader that went away)."""

    broken = False

    def write(self, data) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


def test_lines_are_json_and_written_only_at_a_flush():
    stream = Flaky()
    log = AccessLog(stream)
    log.record(SCOPE, 200, 0.0012345, {"model": "m", "version": "abc", "rows": 3})
    assert stream.getvalue() == b""
    log.flush()
    line = json.loads(stream.getvalue())
    assert line | {"time": None} == {
        "time": None,
        "client": "127.0.0.1:5000",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "status": 200,
        "ms": 1.234,
        "model": "m",
        "version": "abc",
        "rows": 3,
    }


def test_lines_that_cannot_be_written_are_dropped_and_writing_resumes():
    stream = Flaky()
    log = AccessLog(stream)
    stream.broken = True
    for _ in range(3):
        log.record(SCOPE, 200, 0.001, {})
    log.flush()
    assert log.dropped == 3 and stream.getvalue() == b""
    stream.broken = False
    log.record(SCOPE, 404, 0.001, {})
    log.flush()
    assert [json.loads(line)["status"] for line in stream.getvalue().splitlines()] == [404]


def test_the_writer_flushes_what_is_left_when_it_stops():
    stream = Flaky()
    log = AccessLog(stream, interval=60)

    async def scenario():
        writer = asyncio.get_running_loop().create_task(log.run())
        await asyncio.sleep(0)
        log.record(SCOPE, 200, 0.001, {})
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)

    asyncio.run(scenario())
    assert len(stream.getvalue().splitlines()) == 1


def test_pg_serve_refuses_to_start_inside_a_running_event_loop(tmp_path):
    async def in_a_notebook():
        pg.serve(tmp_path / "model.npz")

    with pytest.raises(pg.ConfigError, match="cannot start inside a running one"):
        asyncio.run(in_a_notebook())


def test_a_full_pipe_drops_and_counts_lines_without_blocking_the_writer():
    import os

    from paragrad.serving.log_writer import BackgroundWriter

    read_end, write_end = os.pipe()
    writer = BackgroundWriter(write_end, max_pending=10_000)
    try:
        for _ in range(10_000):  # 1 MB into a 64 KiB pipe nobody reads: returns at once
            writer.write(b"x" * 99 + b"\n")
        assert writer.dropped > 8_000
        os.read(read_end, 100)
    finally:
        os.close(read_end)  # the blocked write fails: the thread ends
        writer.close()
        os.close(write_end)
