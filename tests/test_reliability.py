"""Checkpoints, exact and elastic resume, atomic outputs and clear answers to bad input."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from conftest import is_running, newest_checkpointed_round, relative_error, run_cli, shared_memory_of

import paragrad as pg
from paragrad.core.shm import remove_orphans
from paragrad.training import checkpoint
from paragrad.training.checkpoint import CheckpointWarning


def fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


# -- checkpoints through the API ------------------------------------------------------------


def test_checkpoints_are_written_every_k_rounds_and_the_newest_are_kept(
    tmp_path, binary_data, a_file_per_checkpoint
):
    run = fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=4, keep_checkpoints=2)
    # 301 rows on 2 workers, batches of 16: 10 rounds an epoch, 30 rounds; the last is final.
    assert len(run.history) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000028.npz",
        "checkpoint-000000030.npz",
    ]


def test_checkpoints_written_in_the_background_hold_their_own_round(
    tmp_path, binary_data, a_file_per_checkpoint
):
    """Each file is the snapshot of its round, though later rounds ran while it was written:
    every kept checkpoint resumes to the uninterrupted run's parameters, and its history
    ends at its own round. The summary's time line counts the checkpoints."""
    whole = fit(binary_data)
    run = fit(binary_data, checkpoint_dir=tmp_path / "all", checkpoint_every=1, keep_checkpoints=30)
    assert run.checkpoints_written == 31 and run.checkpoint_s > 0  # every round, and the final one
    assert f"checkpoints {run.checkpoint_s:.3f} s (31 written)" in run.summary()
    files = sorted((tmp_path / "all").iterdir())
    assert [p.name for p in files] == [f"checkpoint-{k:09d}.npz" for k in range(1, 31)]
    for path in files[::7]:
        with np.load(path) as archive:
            assert archive["history"].shape[0] == int(path.stem.split("-")[1])
        alone = tmp_path / path.stem
        alone.mkdir()
        (alone / path.name).write_bytes(path.read_bytes())
        resumed = fit(binary_data, checkpoint_dir=alone, resume=True)
        assert relative_error(resumed.params, whole.params) <= 1e-12


def test_resume_from_a_stopped_run_ends_exactly_like_an_uninterrupted_one(tmp_path, binary_data):
    whole = fit(binary_data)
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=1, max_rounds=13)
    resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert [r["round"] for r in resumed.history] == list(range(30))
    assert relative_error(resumed.params, whole.params) <= 1e-12
    np.testing.assert_array_equal([r["loss"] for r in resumed.history], [r["loss"] for r in whole.history])


def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(
    tmp_path, binary_data, a_file_per_checkpoint
):
    whole = fit(binary_data)
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=5, max_rounds=20)
    newest = tmp_path / "checkpoint-000000020.npz"
    newest.write_bytes(newest.read_bytes()[:-300])
    with pytest.warns(
        CheckpointWarning, match="checkpoint-000000020.npz: skipped a damaged checkpoint"
    ) as seen:
        resumed = fit(binary_data, checkpoint_dir=tmp_path, resume=True)
    assert str(seen[0].message).count("checkpoint-000000020.npz") == 1  # the file named once
    assert relative_error(resumed.params, whole.params) <= 1e-12


def test_a_flipped_byte_fails_the_checksum(tmp_path, binary_data):
    fit(binary_data, checkpoint_dir=tmp_path, checkpoint_every=10)
    newest = max(tmp_path.iterdir())
    with np.load(newest) as archive:
        arrays = dict(archive)
    arrays["params"] = arrays["params"].copy()
    arrays["params"][0] += 1e-9
    np.savez(newest, **arrays)
    with pytest.warns(CheckpointWarning, match="checksum mismatch"):
        fit(binary_data, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": pg.models.LogisticRegression(l2=0.5)}, "model_config"),
        ({"data": pg.make_classification(300, 5, seed=2)}, "num_rows 301 .now 300."),
        ({"strategy": pg.SGD(batch_size=8)}, "strategy"),
        ({"seed": 7}, "seed 1 .now 7."),
    ],
)
def test_resuming_a_different_run_is_refused(tmp_path, binary_data, change, message):
    fit(binary_data, checkpoint_dir=tmp_path, max_rounds=5)
    data = change.pop("data", binary_data)
    model = change.pop("model", pg.models.LogisticRegression(l2=0.01))
    options = {**dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, seed=1), **change}
    with pytest.raises(pg.ConfigError, match=f"belongs to another run; it differs in .*{message}"):
        pg.train(model, data, **options, checkpoint_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_starts_afresh_with_a_warning(tmp_path, binary_data):
    with pytest.warns(CheckpointWarning, match="no checkpoint to resume from"):
        run = fit(binary_data, checkpoint_dir=tmp_path / "empty", resume=True)
    assert relative_error(run.params, fit(binary_data).params) <= 1e-12


def test_a_checkpoint_of_an_earlier_format_is_refused_by_name_and_kept(tmp_path, binary_data):
    options = dict(engine="serial", workers=2, epochs=3, tol=0, checkpoint_dir=tmp_path)
    pg.train(pg.models.LogisticRegression(), binary_data, **options)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "checksum"}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "version": 1}))
    arrays["checksum"] = np.array(checkpoint._checksum(arrays))
    np.savez(path, **arrays)
    with pytest.raises(pg.ConfigError, match="a checkpoint of an earlier paragrad .format 1."):
        pg.train(pg.models.LogisticRegression(), binary_data, resume=True, **options)
    assert path.exists()


def test_elastic_resume_of_gradient_descent_follows_the_same_path(tmp_path, regression_data):
    options = dict(
        strategy=pg.GradientDescent(), optimizer=pg.optim.SGD(lr=0.2), engine="serial", epochs=60, tol=0
    )
    whole = pg.train(pg.models.LinearRegression(), regression_data, workers=2, **options)
    pg.train(
        pg.models.LinearRegression(),
        regression_data,
        workers=2,
        max_rounds=25,
        checkpoint_dir=tmp_path,
        **options,
    )
    resumed = pg.train(
        pg.models.LinearRegression(),
        regression_data,
        workers=5,
        checkpoint_dir=tmp_path,
        resume=True,
        **options,
    )
    assert resumed.num_workers == 5 and len(resumed.history) == 60
    assert relative_error(resumed.params, whole.params) <= 1e-12


def test_elastic_resume_of_sgd_goes_on_converging_to_the_same_optimum(tmp_path):
    data = pg.make_regression(3000, 5, noise=0.5, seed=3)
    design = np.column_stack([data.X, np.ones(len(data.X))])
    exact = np.linalg.lstsq(design, data.y, rcond=None)[0]
    optimum = 0.5 * np.mean((design @ exact - data.y) ** 2)
    options = dict(strategy=pg.SGD(batch_size=32), optimizer=pg.optim.SGD(lr=0.05), engine="serial", tol=0)
    pg.train(pg.models.LinearRegression(), data, workers=2, epochs=1, checkpoint_dir=tmp_path, **options)
    resumed = pg.train(
        pg.models.LinearRegression(),
        data,
        workers=3,
        epochs=4,
        checkpoint_dir=tmp_path,
        resume=True,
        **options,
    )
    final = 0.5 * np.mean((design @ resumed.params - data.y) ** 2)
    assert resumed.history[0]["round"] == 0 and resumed.num_workers == 3
    assert optimum <= final <= 1.01 * optimum


# -- killed and resumed through the command line --------------------------------------------

STRATEGY_FLAGS = {
    "gd": ["--strategy", "gd", "--epochs", "1500", "--optimizer", "sgd", "--lr", "0.05"],
    "sgd": ["--strategy", "sgd", "--batch-size", "8", "--epochs", "4"],
    "local-sgd": ["--strategy", "local-sgd", "--local-steps", "2", "--batch-size", "8", "--epochs", "4"],
}


@pytest.fixture(scope="module")
def training_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("kill") / "train.csv"
    pg.save_dataset(pg.make_classification(4000, 8, seed=5), path)
    return path


@pytest.mark.parametrize("strategy", STRATEGY_FLAGS)
def test_a_run_killed_at_a_random_round_and_resumed_ends_as_if_never_interrupted(
    tmp_path, training_csv, strategy
):
    base = ["train", training_csv, "--target", "y", "--model", "logistic", "--tol", "0", "--workers", "2"]
    base += STRATEGY_FLAGS[strategy]
    whole = run_cli(*base, "--out", tmp_path / "whole.npz")
    assert whole.returncode == 0, whole.stderr

    folder = tmp_path / "checkpoints"
    command = [
        sys.executable,
        "-m",
        "paragrad",
        *map(str, base),
        "--checkpoint",
        str(folder),
        "--checkpoint-every",
        "7",
    ]
    process = subprocess.Popen([*command, "--out", str(tmp_path / "never.npz")], stderr=subprocess.DEVNULL)
    # Strike at a random round: after a random checkpoint, somewhere between two.
    strike_after = 7 * random.randint(1, 30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        newest = newest_checkpointed_round(folder)
        if newest is not None and newest >= strike_after:
            break
        time.sleep(0.001)
    time.sleep(random.uniform(0.0, 0.005))
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "never.npz").exists()

    resumed = subprocess.run(
        [*command, "--resume", "--out", str(tmp_path / "resumed.npz")], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    expected = pg.load_model(tmp_path / "whole.npz").params
    assert relative_error(pg.load_model(tmp_path / "resumed.npz").params, expected) <= 1e-12
    time.sleep(0.5)  # the workers notice their coordinator is gone
    assert not shared_memory_of(process.pid)


def test_a_killed_writer_never_leaves_a_partial_file(tmp_path):
    out = tmp_path / "big.csv"
    for _ in range(3):
        command = ["make-data", "regression", "--rows", "300000", "--features", "20", "--out", str(out)]
        process = subprocess.Popen([sys.executable, "-m", "paragrad", *command], stdout=subprocess.DEVNULL)
        time.sleep(random.uniform(0.3, 1.5))
        process.kill()
        process.wait()
        if out.exists():
            assert pg.load(out, target="y").num_rows == 300_000
    # The temporaries the killed writes left are removed by the next command writing there.
    assert run_cli("make-data", "regression", "--rows", "10", "--features", "2", "--out", out).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["big.csv"]


# -- bad input through the command line -----------------------------------------------------


def expect_one_line(result, phrase: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "flags", "phrase"),
    [
        ("", [], "the file is empty"),
        ("a,b,y\n", [], "no data rows (only a header)"),
        ("a,b,y\n1,2,1\n3,4,1\n", [], "at least two classes; every label is 1"),
        ("a,b,y\n1,2,0\n3,4,inf\n", [], "in the target; first at row 2, 'y' (infinite)"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--workers", "0"], "argument --workers: must be a positive integer"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--lr", "-1"], "learning rate must be a positive number, got -1.0"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--resume"], "--resume needs --checkpoint DIR"),
        (
            "a,b,y\n1,2,0\n3,4,1\n",
            ["--checkpoint", "ck", "--checkpoint-every", "soon"],
            "checkpoint_every must be",
        ),
    ],
)
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, content, flags, phrase):
    data = tmp_path / "data.csv"
    data.write_text(content)
    out = tmp_path / "model.npz"
    result = run_cli(
        "train", data, "--target", "y", "--model", "logistic", "--engine", "serial", "--out", out, *flags
    )
    expect_one_line(result, phrase)
    assert not out.exists()


def test_a_pickled_npz_is_refused_as_data_and_as_model(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    expect_one_line(run_cli("train", evil, "--model", "linear"), "pickled Python objects, which are refused")
    np.savez(evil, params=np.zeros(1), meta=np.array([{"a": 1}], dtype=object))
    expect_one_line(run_cli("evaluate", evil, evil), "pickled Python objects, which are refused")


def test_divergence_names_the_setting_and_saves_the_last_finite_parameters(tmp_path):
    data = tmp_path / "r.csv"
    pg.save_dataset(pg.make_regression(200, 3, seed=0), data)
    out = tmp_path / "model.npz"
    flags = ["--model", "linear", "--optimizer", "sgd", "--lr", "50", "--engine", "serial"]
    result = run_cli("train", data, "--target", "y", *flags, "--out", out)
    expect_one_line(result, "lower the learning rate (now lr=50)")
    assert "last finite parameters are saved in" in result.stderr
    assert np.isfinite(pg.load_model(out).params).all()


def test_lbfgs_resumes_exactly(tmp_path, regression_data):
    options = dict(optimizer=pg.optim.LBFGS(memory=4), engine="serial", workers=2, epochs=40, tol=0)
    whole = pg.train(pg.models.LinearRegression(l2=0.1), regression_data, **options)
    pg.train(
        pg.models.LinearRegression(l2=0.1), regression_data, max_rounds=6, checkpoint_dir=tmp_path, **options
    )
    resumed = pg.train(
        pg.models.LinearRegression(l2=0.1), regression_data, checkpoint_dir=tmp_path, resume=True, **options
    )
    np.testing.assert_array_equal(resumed.params, whole.params)


KILLED_MID_RUN = """
import numpy as np, paragrad as pg
from paragrad.core.shards import plan_shards
from paragrad.engines.local import LocalEngine
data = pg.make_classification(100_000, 50, seed=0)
with LocalEngine(2) as engine:
    engine.start(data, plan_shards(100_000, 2))
    print(*engine.pids, flush=True)
    pg.train(pg.models.MLP(hidden=(256,)), data, engine=engine, strategy=pg.SGD(4096), epochs=10_000, tol=0)
"""


def test_a_run_killed_with_its_whole_process_group_leaves_no_memory_and_no_worker():
    """kill -9 of the process group (as timeout -s KILL, a closed terminal or a service
    manager's stop do) takes the resource tracker too: nothing may depend on cleaning up."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_RUN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    workers = [int(pid) for pid in process.stdout.readline().split()]
    time.sleep(1.0)  # mid-run: the data and the rounds' regions are shared
    assert len(workers) == 2 and shared_memory_of(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (shared_memory_of(process.pid) or any(map(is_running, workers))):
        time.sleep(0.05)
    assert not any(map(is_running, workers)), "a worker outlived its coordinator"
    assert not shared_memory_of(process.pid)


def test_a_start_without_anonymous_memory_removes_the_files_of_processes_that_are_gone(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = Path(f"/dev/shm/paragrad-{int(gone.stdout)}-abcd_123")
    alive = Path(f"/dev/shm/paragrad-{os.getpid()}-abcd_123")
    users = Path(f"/dev/shm/paragrad-{int(gone.stdout)}-q3-report.csv")  # not a region's name
    for path in (dead, alive, users):
        path.write_bytes(b"data")
    try:
        remove_orphans()
        assert not dead.exists() and alive.exists() and users.exists()
    finally:
        for path in (dead, alive, users):
            path.unlink(missing_ok=True)


def test_a_copied_data_set_claims_no_file_and_trains_on_its_own_rows(tmp_path):
    """A copy's arrays lie in no file; the original's region may be gone and its
    descriptor number name another data set's region."""
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, seed in ((first, 0), (second, 1)):
        data = pg.make_regression(400, 3, seed=seed)
        np.savetxt(path, np.column_stack([data.X, data.y]), delimiter=",", header="a,b,c,y", comments="")
    original = pg.load(first, target="y")
    assert original.storage is not None
    copy = deepcopy(original)
    assert copy.storage is None
    del original
    gc.collect()
    other = pg.load(second, target="y")  # may take the released descriptor number
    on_workers = pg.train(pg.models.LinearRegression(), copy, engine="local", workers=2)
    in_process = pg.train(pg.models.LinearRegression(), copy, engine="serial", workers=2)
    assert relative_error(on_workers.params, in_process.params) <= 1e-10
    assert other.num_rows == 400
