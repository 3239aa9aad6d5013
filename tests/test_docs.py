"""The README's and the guides' examples run as written, on small generated files.

Each page runs in a folder of its own holding the files its examples read; its ``sh`` and
``python`` blocks run in the order they appear (``sh``: every command, with ``paragrad`` the
command installed beside this Python; ``python``: in one namespace for the page, as a reader
pasting them would). Blocks that need what is not here (a cluster, a server left running,
a package to install) are marked ``console`` and shown only; the README's set-up commands
(``make ...``) are left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paragrad as pg

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUN = ("sh", "python")


def blocks(page: Path) -> list[tuple[str, str]]:
    """The page's runnable blocks, in order."""
    found = [(kind, body) for kind, body in BLOCK.findall(page.read_text()) if kind in RUN]
    return [(kind, body) for kind, body in found if not (kind == "sh" and body.lstrip().startswith("make "))]


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [
        line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Where a page's examples run: the files they read beside them, ``paragrad`` on the PATH."""
    pg.save_dataset(pg.make_classification(600, 5, seed=1), tmp_path / "data.csv")
    pg.save_dataset(pg.make_classification(3000, 20, seed=2), tmp_path / "train.csv")
    pg.save_dataset(pg.make_classification(1000, 20, seed=3), tmp_path / "test.csv")
    np.save(tmp_path / "big.npy", np.random.default_rng(2).standard_normal((3000, 20)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_the_pages_that_teach_by_example_have_runnable_examples():
    runnable = {page.relative_to(ROOT).as_posix() for page in PAGES if blocks(page)}
    for page in ("README.md", "docs/index.md", "docs/architecture.md", "docs/guides/training.md"):
        assert page in runnable, f"{page} has no sh or python block to run"


@pytest.mark.parametrize(
    "page", [page for page in PAGES if blocks(page)], ids=lambda page: page.relative_to(ROOT).as_posix()
)
def test_the_examples_run_as_written(page, folder):
    namespace: dict = {"__name__": "__docs__"}
    for kind, body in blocks(page):
        if kind == "python":
            exec(compile(body, str(page), "exec"), namespace)
            continue
        for command in commands(body):
            assert command.startswith("paragrad "), command
            result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            assert "Traceback" not in result.stderr, command


def test_the_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 300
    first = BLOCK.search(text)
    assert first is not None and first.start() < text.index("\n## ")  # before any section
    assert [line.split()[:2] for line in first.group(2).splitlines()] == [["make", "demo"], ["make", "test"]]
