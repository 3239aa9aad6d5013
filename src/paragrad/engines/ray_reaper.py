"""Stops the Ray instance a coordinator started when the coordinator is killed.

``python ray_reaper.py PID`` (run as a file: it needs nothing but the standard library)
watches coordinator ``PID`` through its
standard input, a pipe the coordinator holds: end of file without a last ``done`` line
means the coordinator died without shutting Ray down (SIGKILL, say). Ray's servers then
exit on their own, but its dashboard and runtime-env agents linger for minutes; so every
process descended from the coordinator (looked up once a second while it lives) that is
still running is killed. A process is recognised by its id and start time, so a reused
id is never hit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

LOOK_EVERY_S = 1.0

Process = tuple[int, str]  # id and start time (clock ticks since boot)


def _started(pid: int) -> str | None:
    """A process's start time, or None when it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _is_ray(pid: int) -> bool:
    """Whether a process is one of Ray's (its servers, agents and workers), not another
    child of the coordinator's."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ray::" in command or b"/ray/" in command


def descendants(root: int) -> set[Process]:
    """Ray's processes descended from ``root``, now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int(entry.joinpath("stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: set[Process] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _started(pid)
        if started is not None and pid != os.getpid() and _is_ray(pid):
            found.add((pid, started))
        todo.extend(children.get(pid, []))
    return found


def watch(coordinator: int) -> None:
    """Until the coordinator closes the pipe: note its descendants; if it closed it
    without saying ``done``, kill those still running."""
    seen = descendants(coordinator)
    said = b""
    while True:
        readable, _, _ = select.select([sys.stdin.buffer], [], [], LOOK_EVERY_S)
        if readable:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                break
            said += chunk
            continue
        seen |= descendants(coordinator)
    if b"done" in said:
        return
    for pid, started in seen:
        if _started(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def start() -> subprocess.Popen[bytes]:
    """Start a reaper for this process's Ray instance; tell it :func:`done` at shutdown."""
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C to the coordinator's group does not reach it
    )


def done(reaper: subprocess.Popen[bytes]) -> None:
    """Ray was shut down as it should: the reaper leaves, killing nothing."""
    with contextlib.suppress(OSError, ValueError):
        assert reaper.stdin is not None
        reaper.stdin.write(b"done")
        reaper.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=5)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
