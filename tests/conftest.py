"""Shared fixtures: small data sets, a reusable local engine, and a CLI runner."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import paragrad as pg
from paragrad.engines.local import LocalEngine
from paragrad.training import checkpoint, checkpoint_log

# Ray, in every process the tests start: listen on 127.0.0.1 only (without this Ray moves
# to the host's address), and authenticate with a token of this test session's own.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
# Calls without an engine object stop their workers at once, so that every test can check
# that a call leaves nothing behind; tests of the engine kept between calls set it back.
os.environ["PARAGRAD_IDLE_S"] = "0"
# The property tests draw new examples every run, to explore; CI sets
# PARAGRAD_HYPOTHESIS_PROFILE=ci, which draws the same ones every run (its verdict then
# depends on the change alone, not on the draw).
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("PARAGRAD_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def local_engine():
    """Two real worker processes, kept for the whole session (start-up is paid once)."""
    with LocalEngine(workers=2) as engine:
        yield engine


@pytest.fixture
def regression_data() -> pg.Dataset:
    return pg.make_regression(301, 6, noise=0.5, seed=1)


@pytest.fixture
def binary_data() -> pg.Dataset:
    return pg.make_classification(301, 5, seed=2)


@pytest.fixture
def multiclass_data() -> pg.Dataset:
    return pg.make_classification(301, 5, num_classes=4, seed=3)


def rewrite_meta(path: Path, **changes: object) -> None:
    """Change a checkpoint's metadata and seal it with a valid checksum again."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "checksum"}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, **changes}))
    arrays["checksum"] = np.array(checkpoint._checksum(arrays))
    np.savez(path, **arrays)


@pytest.fixture
def a_file_per_checkpoint(monkeypatch):
    """Every checkpoint in a file of its own, as checkpoints a minute apart or more are
    (quicker ones go in the newest file's log)."""
    monkeypatch.setattr(checkpoint_log, "NEW_FILE_EVERY_S", 0.0)


def newest_checkpointed_round(folder: Path) -> int | None:
    """The round of the newest checkpoint in ``folder``: a file's, or its log's last whole record's."""
    rounds = []
    for path in folder.glob("checkpoint-*.npz"):
        records, _ = checkpoint_log.read_log(checkpoint_log.log_of(path))
        rounds.append(records[-1].round if records else int(path.stem.split("-")[1]))
    return max(rounds, default=None)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|b|), the measure the engine-invariance promise is stated in."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m paragrad ARGS`` in a real subprocess, as a user would."""
    env = dict(os.environ, PYTHONWARNINGS="default", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "paragrad", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def shared_memory_of(pid: int | None = None) -> set[str]:
    """What is left of the shared memory process ``pid`` (default: this one) created: its
    region files, and its anonymous regions (by inode) that any process still holds open
    or maps. The kernel frees an anonymous region once this set no longer names it."""
    name = f"paragrad-{os.getpid() if pid is None else pid}"
    found = {f"file:{entry}" for entry in os.listdir("/dev/shm") if entry.startswith(name + "-")}
    for process in Path("/proc").glob("[0-9]*"):
        try:
            for fd in (process / "fd").iterdir():
                if os.readlink(fd).startswith(f"/memfd:{name} "):
                    found.add(f"memfd:{os.stat(fd).st_ino}")
            for line in (process / "maps").read_text().splitlines():
                if f"/memfd:{name} " in line:
                    found.add(f"memfd:{line.split()[4]}")
        except OSError:  # a process that ended meanwhile, or one not ours to read
            continue
    return found


def is_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, reaped or not, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except FileNotFoundError:
        return False
