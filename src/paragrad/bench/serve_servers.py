"""The ``serve`` suite's servers: started as child processes, probed over HTTP, stopped by id.

A server is ready when it prints its ``listening on http://HOST:PORT`` line (all of them
listen on port 0, a free port, and say which). It is stopped by its process id alone:
SIGTERM, then SIGKILL if it has not exited a minute later.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import paragrad
from paragrad.bench.serve_load import infer_body

LISTENING = re.compile(r"listening on http://\S*:(\d+)")


def paragrad_command(models: dict[str, Path], *options: str) -> list[str]:
    """``paragrad serve`` of ``models`` on a free port, with its defaults (the access log on)."""
    named = [f"{name}={path}" for name, path in models.items()]
    return [sys.executable, "-m", "paragrad", "serve", *named, "--port", "0", *options]


def baseline_command(kind: str, models: dict[str, Path]) -> list[str]:
    """A baseline server of :mod:`paragrad.bench.serve_baselines` on a free port."""
    named = [f"{name}={path}" for name, path in models.items()]
    return [sys.executable, "-m", "paragrad.bench.serve_baselines", kind, *named]


def child_environment() -> dict[str, str]:
    """This environment, with this paragrad first on the children's import path."""
    source = str(Path(paragrad.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def running(command: list[str], timeout_s: float = 120.0) -> Iterator[int]:
    """Start a server, yield its port once it listens, then stop it by its process id."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=child_environment()
        )
        try:
            yield _port_when_ready(process, " ".join(command[1:4]), timeout_s, errors)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _port_when_ready(process: subprocess.Popen, name: str, timeout_s: float, errors: IO[bytes]) -> int:
    """The port in the server's 'listening on' line; a thread reads its stdout to the end."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"{name} did not start listening in {timeout_s:.0f} s") from None
        found = None if line is None else LISTENING.search(line)
        if found:
            return int(found.group(1))
        if line is None:
            process.wait()
            errors.seek(0)
            said = errors.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with status {process.returncode} before listening:\n{said}")


def batch_totals(port: int, model: str) -> tuple[float, float]:
    """Rows predicted and batches run so far for ``model``, from paragrad's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    totals = []
    for suffix in ("sum", "count"):
        found = re.search(rf'^paragrad_batch_rows_{suffix}\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
        totals.append(float(found.group(1)) if found else 0.0)
    return totals[0], totals[1]


def predicted(port: int, model: str, rows: int, features: int) -> dict[str, list[Any]]:
    """Each output a server answers for ``rows`` rows of the load generator's request body,
    by name, as a flat list."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=infer_body(rows, features),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        outputs = json.loads(answer.read())["outputs"]
    return {output["name"]: output["data"] for output in outputs}


def predicted_labels(port: int, model: str, rows: int, features: int) -> list[Any]:
    """The labels a server answers for ``rows`` rows of the load generator's request body."""
    return predicted(port, model, rows, features)["predict"]
