"""Callbacks and run tracking: the protocol, stopping early, TensorBoard and MLflow read back."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
from conftest import run_cli

import paragrad as pg
from paragrad.callbacks import Callback, TrainInfo
from paragrad.training.run import HISTORY_KEYS


def _sgd(data: pg.Dataset, **options) -> pg.Run:
    """Eight rounds of SGD on two serial workers: 301 rows, batches of 100, 2 epochs."""
    return pg.train(
        pg.models.LogisticRegression(),
        data,
        strategy=pg.SGD(batch_size=100),
        engine="serial",
        workers=2,
        epochs=2,
        tol=0,
        **options,
    )


class Recorder(Callback):
    """Everything a run tells its callbacks, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_train_start(self, info: TrainInfo) -> None:
        self.calls.append(("start", info))

    def on_round_end(self, record: dict) -> bool | None:
        self.calls.append(("round", record))
        return None

    def on_train_end(self, run: pg.Run) -> None:
        self.calls.append(("end", run))

    def on_train_error(self, error: BaseException) -> None:
        self.calls.append(("error", error))


def test_a_callback_hears_the_start_every_round_in_order_and_the_end(binary_data):
    recorder = Recorder()

    run = _sgd(binary_data, callbacks=[recorder])

    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["start"] + ["round"] * 8 + ["end"]
    info = recorder.calls[0][1]
    assert (info.engine, info.num_workers, info.total_rounds, info.first_round) == ("serial", 2, 8, 0)
    assert info.params()["model"] == "logistic" and info.params()["strategy.batch_size"] == 100
    records = [record for kind, record in recorder.calls if kind == "round"]
    assert records == run.history
    assert all(tuple(record) == HISTORY_KEYS for record in records)
    assert recorder.calls[-1][1] is run


def test_a_function_that_returns_true_stops_the_run_after_that_round(binary_data):
    seen: list[int] = []

    def stop_at_three(record: dict) -> bool:
        seen.append(record["round"])
        return record["round"] == 3

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a requested stop is no convergence failure to warn of
        run = _sgd(binary_data, callbacks=[stop_at_three])

    assert seen == [0, 1, 2, 3]
    assert len(run.history) == 4
    assert run.stopped == "stopped by a callback" and not run.converged
    assert run.outcome == "not converged: stopped by a callback"
    assert "stopped by a callback" in run.summary()


def test_a_function_runs_in_the_callers_numpy_error_state_not_the_rounds(binary_data):
    """The rounds ignore overflow and invalid values (a diverging run raises its own
    error); the caller's functions see the error state the caller set."""
    seen: list[dict] = []

    with np.errstate(over="raise", invalid="warn"):
        run = _sgd(binary_data, callbacks=[lambda record: seen.append(np.geterr())])
        after = np.geterr()

    assert len(seen) == len(run.history) == 8
    assert all(state["over"] == "raise" and state["invalid"] == "warn" for state in seen)
    assert after["over"] == "raise"


def test_a_run_stopped_by_a_callback_resumes_to_the_uninterrupted_result(regression_data, tmp_path):
    def fit(**options) -> pg.Run:
        return pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=0.1),
            engine="serial",
            workers=2,
            epochs=12,
            tol=0,
            **options,
        )

    whole = fit()
    stopped = fit(checkpoint_dir=tmp_path, callbacks=[lambda record: record["round"] == 4])
    resumed = fit(checkpoint_dir=tmp_path, resume=True)

    assert len(stopped.history) == 5
    assert [record["loss"] for record in resumed.history] == [record["loss"] for record in whole.history]
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_callbacks_hear_of_a_run_that_raises(regression_data):
    recorder = Recorder()

    with pytest.raises(pg.TrainingDiverged):
        pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=1e9),
            engine="serial",
            workers=1,
            callbacks=[recorder],
        )

    assert recorder.calls[0][0] == "start"
    assert recorder.calls[-1][0] == "error" and isinstance(recorder.calls[-1][1], pg.TrainingDiverged)


@pytest.mark.parametrize("callbacks", [[3], Recorder(), print], ids=["number", "bare", "function"])
def test_callbacks_must_be_a_list_of_callbacks_or_functions(regression_data, callbacks):
    with pytest.raises(pg.ConfigError, match="callbacks"):
        pg.train(pg.models.LinearRegression(), regression_data, engine="serial", callbacks=callbacks)


def test_tensorboard_event_files_hold_each_rounds_scalars(binary_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _sgd(binary_data, callbacks=[pg.callbacks.TensorBoard(tmp_path / "tb")])

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [event.step for event in losses] == [record["round"] for record in run.history]
    # Event files store scalars as float32.
    assert [event.value for event in losses] == pytest.approx(
        [record["loss"] for record in run.history], rel=1e-6
    )
    assert [event.value for event in events.Scalars("samples")] == [r["samples"] for r in run.history]
    assert {"parameters", "summary"} <= set(events.Tags()["tensors"])
    table = events.Tensors("parameters")[0].tensor_proto.string_val[0].decode()
    assert "| model | logistic |" in table and "| workers | 2 |" in table


@pytest.fixture
def mlflow_home(tmp_path, monkeypatch):
    """A fresh folder as the current one, with no MLflow settings from the environment."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return mlflow


def test_mlflow_logs_params_metrics_and_the_model_offline_by_default(binary_data, mlflow_home, tmp_path):
    run = _sgd(binary_data, callbacks=[pg.callbacks.MLflow()])

    assert (tmp_path / "mlflow.db").exists()  # MLflow's local default: no server, no network
    client = mlflow_home.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("paragrad")
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["model"] == "logistic" and params["strategy.name"] == "sgd"
    assert params["optimizer.name"] == "adam" and params["seed"] == "0"
    assert (params["engine"], params["workers"]) == ("serial", "2")
    history = sorted(client.get_metric_history(logged.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(r["round"], r["loss"]) for r in run.history]
    assert logged.data.tags["paragrad.outcome"] == run.outcome
    model_file = client.download_artifacts(logged.info.run_id, "model/model.npz", str(tmp_path))
    np.testing.assert_array_equal(pg.load_model(model_file).params, run.params)


def test_mlflow_logs_into_an_open_run_and_marks_failures(regression_data, mlflow_home, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with mlflow_home.start_run() as opened:
        pg.train(
            pg.models.LinearRegression(), regression_data, engine="serial", callbacks=[pg.callbacks.MLflow()]
        )
        assert mlflow_home.active_run().info.run_id == opened.info.run_id  # left open
    with pytest.raises(pg.TrainingDiverged):
        pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=1e9),
            engine="serial",
            callbacks=[pg.callbacks.MLflow(experiment="diverged")],
        )

    client = mlflow_home.tracking.MlflowClient(uri)
    assert client.get_run(opened.info.run_id).data.params["model"] == "linear"
    assert client.get_metric_history(opened.info.run_id, "loss")
    failed = client.get_experiment_by_name("diverged")
    [logged] = client.search_runs([failed.experiment_id])
    assert logged.info.status == "FAILED"


def test_the_command_line_logs_to_tensorboard_and_mlflow(binary_data, mlflow_home, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pg.save_dataset(binary_data, tmp_path / "train.csv")
    done = run_cli(
        "train", "train.csv", "--target", "y", "--model", "logistic", "--engine", "serial",
        "--workers", "2", "--log-dir", "tb", "--mlflow", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    rounds = len(events.Scalars("loss"))
    assert rounds > 0 and re.search(rf"rounds +{rounds} ", done.stdout)
    client = mlflow_home.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [logged] = client.search_runs([client.get_experiment_by_name("paragrad").experiment_id])
    assert len(client.get_metric_history(logged.info.run_id, "loss")) == rounds
    assert [item.path for item in client.list_artifacts(logged.info.run_id, "model")] == ["model/model.npz"]


@pytest.mark.parametrize("package", ["tensorboard", "mlflow"])
def test_the_command_line_names_the_extra_to_install_when_a_tracker_is_missing(
    binary_data, tmp_path, package
):
    hidden = tmp_path / "hidden" / package
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed')\n")
    pg.save_dataset(binary_data, tmp_path / "train.csv")
    path = os.pathsep.join(filter(None, [str(tmp_path / "hidden"), os.environ.get("PYTHONPATH")]))
    flag = ["--log-dir", "tb"] if package == "tensorboard" else ["--mlflow"]

    done = run_cli(
        "train", "train.csv", "--target", "y", "--model", "logistic", "--engine", "serial", *flag,
        cwd=tmp_path, env={"PYTHONPATH": path},
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"paragrad: error: {'TensorBoard' if package == 'tensorboard' else 'MLflow'} tracking needs "
        f"the {package} package: pip install 'paragrad[{package}]'"
    ]
