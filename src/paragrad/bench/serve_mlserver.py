"""MLServer, Seldon's Open Inference Protocol server, as a baseline of the ``serve`` suite.

MLServer pins versions of FastAPI, Starlette and others that conflict with ours, so it is
installed in an environment of its own and the suite runs its ``mlserver`` executable: the
one named by ``PARAGRAD_MLSERVER``, else the one on PATH. (MLServer 1.7.1's inference
workers do not start with uvloop 0.22 or later, which pip picks: ``python -m venv V &&
V/bin/pip install mlserver numpy 'uvloop<0.22'``.) Without one its figures are left out and the
rows say why; nothing fails.

It serves paragrad's model files through :mod:`paragrad.bench.serve_mlserver_runtime`
(paragrad's source is put on its path), from a model repository written to a temporary
folder: ``settings.json`` binds 127.0.0.1 on free ports (HTTP, gRPC, metrics) and keeps
MLServer's defaults otherwise, the access log (``debug``) and metrics on. A variant (see
``VARIANTS``) keeps or changes two of them: MLServer predicts in one inference worker
process beside the HTTP server by default (``parallel_workers`` 1) or in the server's own
process as paragrad does (0), and batches no requests by default or up to 256 rows,
waiting at most 2 ms, as ``paragrad serve`` does by default (``max_batch_size``,
``max_batch_time`` in each ``model-settings.json``).

The server is ready when every model answers ``GET /v2/models/NAME/ready`` with 200; it is
stopped by its process id (SIGTERM, which also stops its worker), and its process group,
which it leads, is killed if it has not exited a minute later.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from paragrad.bench.serve_servers import child_environment

ENVIRONMENT_VARIABLE = "PARAGRAD_MLSERVER"
RUNTIME = "paragrad.bench.serve_mlserver_runtime.ParagradRuntime"
BATCHING = {"max_batch_size": 256, "max_batch_time": 0.002}  # paragrad serve's defaults
NOT_INSTALLED = f"not installed (set {ENVIRONMENT_VARIABLE} to its mlserver executable)"


@dataclass(frozen=True)
class Variant:
    """MLServer's settings that a variant keeps (None, False) or changes."""

    parallel_workers: int | None = None  # MLServer's default: 1, one worker process
    batching: bool = False  # MLServer's default: no adaptive batching


VARIANTS = {
    "mlserver": Variant(),
    "mlserver_inproc": Variant(parallel_workers=0),
    "mlserver_inproc_batch": Variant(parallel_workers=0, batching=True),
}


def mlserver_executable() -> tuple[str | None, str]:
    """The ``mlserver`` executable to run and where it came from, or None and why not."""
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    if named:
        if os.path.isfile(named) and os.access(named, os.X_OK):
            return named, f"{ENVIRONMENT_VARIABLE}={named}"
        return None, f"not installed: {ENVIRONMENT_VARIABLE}={named} is not an executable file"
    found = shutil.which("mlserver")
    if found:
        return found, found
    return None, NOT_INSTALLED


def mlserver_version(executable: str) -> str | None:
    """What ``mlserver --version`` says (``mlserver, version 1.7.1``), or None if it fails."""
    try:
        said = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if said.returncode != 0:
        return None
    return said.stdout.strip().rpartition(" ")[2] or None


def free_ports(count: int) -> list[int]:
    """``count`` different ports on 127.0.0.1 that nothing listens on now."""
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):  # all held open at once, so that no two are the same
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def write_repository(folder: Path, models: dict[str, Path], variant: Variant) -> dict[str, object]:
    """MLServer's settings and one model folder per model under ``folder``; the settings."""
    http, grpc, metrics = free_ports(3)
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "metrics_dir": str(folder / "metrics"),
        "environments_dir": str(folder / "environments"),
        "load_models_at_startup": True,
    }
    if variant.parallel_workers is not None:
        settings["parallel_workers"] = variant.parallel_workers
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in models.items():
        (folder / name).mkdir()
        model = {"name": name, "implementation": RUNTIME, "parameters": {"uri": str(Path(path).resolve())}}
        (folder / name / "model-settings.json").write_text(
            json.dumps(model | (BATCHING if variant.batching else {}))
        )
    return settings


@contextlib.contextmanager
def mlserver_running(
    executable: str,
    models: dict[str, Path],
    folder: Path,
    variant: Variant = VARIANTS["mlserver"],
    timeout_s: float = 120.0,
) -> Iterator[int]:
    """Start MLServer on ``models`` from a repository in ``folder`` (new, empty), yield its
    HTTP port once every model is ready, then stop it by its process id."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = write_repository(folder, models, variant)
    port = int(str(settings["http_port"]))
    with open(folder / "mlserver.log", "wb") as log:
        process = subprocess.Popen(
            [executable, "start", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=child_environment(),
            start_new_session=True,  # its group is its own: the worker goes with it
        )
        try:
            _wait_until_ready(process, port, list(models), timeout_s, folder / "mlserver.log")
            yield port
        finally:
            _stop(process)


def _wait_until_ready(
    process: subprocess.Popen, port: int, names: list[str], timeout_s: float, log: Path
) -> None:
    """Return once every model answers its readiness probe; raise if MLServer exits or
    the deadline passes first, with the end of its log."""
    deadline = time.monotonic() + timeout_s
    waiting = list(names)
    while waiting:
        if process.poll() is not None:
            said = log.read_bytes().decode(errors="replace")[-2000:]
            raise RuntimeError(f"mlserver exited with status {process.returncode} before ready:\n{said}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlserver was not ready in {timeout_s:.0f} s: {waiting} still loading")
        try:
            url = f"http://127.0.0.1:{port}/v2/models/{waiting[0]}/ready"
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    waiting.pop(0)
                    continue
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to MLServer's process, then SIGKILL to its group after a minute."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a worker left behind, or MLServer itself
    process.wait()
