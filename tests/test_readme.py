"""The README's examples run as written, on small generated files.

Every ``sh`` block (but the set-up commands, ``make ...``) runs in one folder, in order,
with ``paragrad`` the command installed beside this Python; then every ``python`` block
runs in order in one namespace, as a reader pasting them would. Blocks that need what is
not here (a cluster, a package to install) are marked ``console`` in the README and shown
only.
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

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [body for info, body in BLOCK.findall(README.read_text()) if info == kind]


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [
        line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Where the examples run: the files they read beside them, ``paragrad`` on the PATH."""
    pg.save_dataset(pg.make_classification(600, 5, seed=1), tmp_path / "data.csv")
    np.save(tmp_path / "big.npy", np.random.default_rng(2).standard_normal((3000, 20)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_the_readme_examples_run_as_written(folder):
    shell = [block for block in blocks("sh") if not block.lstrip().startswith("make ")]
    assert len(shell) >= 3 and len(blocks("python")) >= 4
    for block in shell:
        for command in commands(block):
            assert command.startswith("paragrad "), command
            result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            assert "Traceback" not in result.stderr, command
    namespace: dict = {}
    for block in blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)
    assert (folder / "model.npz").exists() and (folder / "predictions.npy").exists()
    assert len(namespace["yhat"]) == 10_000  # test.csv, predicted in input order
