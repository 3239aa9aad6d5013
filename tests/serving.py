"""A real `paragrad serve` for tests: a child process on 127.0.0.1, stopped by its process id,
and a small HTTP client for it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def running(*args: str, env: dict | None = None) -> Iterator[Server]:
    """``paragrad serve ARGS --port 0`` in a child process, stopped by its process id."""
    command = [sys.executable, "-m", "paragrad", "serve", *args, "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    try:
        yield Server(process, port_from(process))
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Kill the process if it still runs, and wait for it and its pipes to end."""
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def port_from(process: subprocess.Popen) -> int:
    """The HTTP port from the start-up lines; the lines before it are kept on the process."""
    process.early_stdout = []
    for line in process.stdout:
        process.early_stdout.append(line)
        if "listening on" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError(f"the server did not start: {process.stderr.read()}")


class Server:
    """A running server; what it writes is read as it comes (a full pipe would stall it)."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.stdout: list[str] = list(getattr(process, "early_stdout", []))
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=lambda s=stream, out=lines: out.extend(s), daemon=True)
            for stream, lines in ((process.stdout, self.stdout), (process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def stdout_lines(self, timeout: float = 10) -> list[str]:
        """What the server has written on stdout so far (its start-up lines)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stdout:
            time.sleep(0.02)
        return list(self.stdout)

    def wait(self, timeout: float = 30) -> int:
        """The exit status, once the process has ended and everything it wrote was read."""
        status = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def call(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict, object]:
        """One request on a new connection: status, headers and the JSON answer (or text)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            kind = response.getheader("content-type", "")
            payload = json.loads(raw) if "json" in kind else raw.decode()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        finally:
            connection.close()

    def infer(self, model: str, X: np.ndarray, datatype: str = "FP64", **extra) -> dict:
        status, _, answer = self.call("POST", f"/v2/models/{model}/infer", v2_body(X, datatype, **extra))
        assert status == 200, answer
        return answer


def v2_body(X: np.ndarray, datatype: str = "FP64", **extra) -> dict:
    tensor = {"name": "input-0", "shape": list(X.shape), "datatype": datatype, "data": X.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
