"""Faults a run must survive or refuse plainly: another run's checkpoints, killed writes,
lost and stopped workers, engines shared between threads, full disks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad import checkpoint


def fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


def rewrite_meta(path, **changes):
    """Change a checkpoint's metadata and seal it with a valid checksum again."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "checksum"}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, **changes}))
    arrays["checksum"] = np.array(checkpoint._checksum(arrays))
    np.savez(path, **arrays)


# -- a checkpoint belongs to its run ----------------------------------------------------------


def test_a_fresh_run_in_a_directory_of_another_run_says_so_and_deletes_nothing(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(pg.ConfigError, match=r"holds the checkpoints of another run .*resume=True"):
        fit(binary_data, checkpoint_dir=tmp_path, max_rounds=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resume_refuses_a_checkpoint_made_on_other_data_of_the_same_shape(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    other = pg.Dataset(binary_data.X[::-1].copy(), binary_data.y[::-1].copy())
    with pytest.raises(pg.ConfigError, match=r"checkpoint-000000005.npz: .*a run on other data"):
        fit(other, checkpoint_dir=tmp_path, resume=True)


def test_the_fingerprint_does_not_depend_on_the_worker_count(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True, workers=3)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12


def test_pruning_removes_the_runs_own_oldest_and_leaves_other_runs_files(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=8, checkpoint_every=4)
    foreign = tmp_path / "checkpoint-000000002.npz"
    foreign.write_bytes((tmp_path / "checkpoint-000000004.npz").read_bytes())
    rewrite_meta(foreign, run="another run", round=2)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=1, keep_checkpoints=2)
    assert relative_error(resumed.params, fit(binary_data).params) <= 1e-12
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.npz"))
    assert names == ["checkpoint-000000002.npz", "checkpoint-000000029.npz", "checkpoint-000000030.npz"]


@pytest.mark.parametrize("version", [5, "5"])
def test_a_newer_checkpoint_is_refused_by_name_and_never_pruned(tmp_path, binary_data, version):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    rewrite_meta(path, version=version)
    with pytest.raises(pg.ConfigError, match=r"checkpoint-000000005.npz: a checkpoint of a newer paragrad"):
        fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert path.exists()


def test_the_same_version_written_as_text_is_this_version(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    rewrite_meta(path, version=str(checkpoint.CHECKPOINT_VERSION))
    assert len(fit(binary_data, checkpoint_dir=tmp_path, resume=True).history) == 30


def test_temporaries_of_killed_writes_are_removed_at_the_next_start(tmp_path, binary_data):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(gone.stdout)
    stale = [
        tmp_path / f".checkpoint-000000005.npz.{dead_pid}.abc123.tmp",
        tmp_path / ".checkpoint-000000005.npz.x1y2z3.tmp",  # written before temporaries named a pid
    ]
    live = tmp_path / f".checkpoint-000000005.npz.{os.getpid()}.def456.tmp"
    for path in [*stale, live]:
        path.write_bytes(b"partial")
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=3)
    assert not any(path.exists() for path in stale) and live.exists()


def test_the_command_line_removes_the_temporaries_of_a_killed_out(tmp_path, binary_data):
    from conftest import run_cli

    pg.save_dataset(binary_data, tmp_path / "d.npz")
    stale = tmp_path / ".m.npz.999999999.abc.tmp"
    stale.write_bytes(b"partial")
    result = run_cli("train", str(tmp_path / "d.npz"), "--engine", "serial", "--out", str(tmp_path / "m.npz"))
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and (tmp_path / "m.npz").exists()
