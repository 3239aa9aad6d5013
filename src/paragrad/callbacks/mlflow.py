"""An MLflow run for a training run: parameters, per-round metrics and the model file.

Where runs go is MLflow's own choice unless ``tracking_uri`` says otherwise:
``MLFLOW_TRACKING_URI`` if set, else (MLflow 3) a SQLite file ``mlflow.db`` in the current
folder with artifacts under ``mlruns/``, which needs no server or network and is what
``mlflow ui`` run in the same folder reads. (MLflow 3 refuses plain ``file:`` stores
unless ``MLFLOW_ALLOW_FILE_STORE=true``; that is left to the user.) ``mlflow`` is imported
only when an MLflow callback is made, so ``import paragrad`` stays light.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paragrad.callbacks.base import TRACKED, Callback, TrainInfo
from paragrad.errors import ConfigError

if TYPE_CHECKING:
    from paragrad.training.run import Run

DEFAULT_EXPERIMENT = "paragrad"
FLUSH_SECONDS = 5.0  # send metrics at most this stale: a call per round would slow fast rounds
FLUSH_METRICS = 1000  # MLflow's limit on metrics in one batch
PARAMS_PER_BATCH = 100  # MLflow's limit on parameters in one batch


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "MLflow tracking needs the mlflow package: pip install 'paragrad[mlflow]'"
        ) from None
    return mlflow


@dataclass
class _OpenRun:
    """The MLflow run being logged to, and the metrics not yet sent."""

    client: Any
    run_id: str
    owned: bool  # made for this training run, so ended by it (not a run the caller opened)
    pending: list[Any] = field(default_factory=list)
    flushed_at: float = field(default_factory=time.monotonic)

    def log(self, metrics: list[Any]) -> None:
        self.pending.extend(metrics)
        if len(self.pending) >= FLUSH_METRICS or time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), FLUSH_METRICS):
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + FLUSH_METRICS])
        self.pending.clear()
        self.flushed_at = time.monotonic()

    def end(self, status: str) -> None:
        self.flush()
        if self.owned:
            self.client.set_terminated(self.run_id, status)


class MLflow(Callback):
    """Log a run to MLflow.

    Parameters (model and its settings, strategy, optimizer, engine, workers, seed, dtype,
    data shape) go in at the start; the metrics loss, wall_s, bytes_sent, bytes_received and
    samples every round, at step = round; at the end the tags ``paragrad.outcome`` and
    ``paragrad.training.rounds`` and the saved model as the artifact ``model/model.npz`` (load it
    with :func:`paragrad.load_model`). A failed or interrupted run is marked FAILED or
    KILLED. Inside ``with mlflow.start_run():`` (and with neither ``tracking_uri`` nor
    ``experiment`` given) it logs into that run and leaves it open.

    Parameters
    ----------
    tracking_uri : str, optional
        Where to log (``http://host:5000``, ``sqlite:///runs.db``, ``databricks``).
        Default: ``MLFLOW_TRACKING_URI``, else MLflow's local default (see the module).
    experiment : str, optional
        Experiment name, made if missing. Default: ``MLFLOW_EXPERIMENT_NAME``, else
        ``"paragrad"``.
    run_name : str, optional
        The MLflow run's name; MLflow makes one up by default.
    """

    def __init__(
        self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None
    ) -> None:
        _import_mlflow()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self._run: _OpenRun | None = None

    def on_train_start(self, info: TrainInfo) -> None:
        mlflow = _import_mlflow()
        from mlflow.entities import Param

        client = mlflow.tracking.MlflowClient(self.tracking_uri)
        active = mlflow.active_run()
        if active is not None and self.tracking_uri is None and self.experiment is None:
            self._run = _OpenRun(client, active.info.run_id, owned=False)
        else:
            name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
            made = client.create_run(experiment_id, run_name=self.run_name)
            self._run = _OpenRun(client, made.info.run_id, owned=True)
        params = [Param(key, str(value)) for key, value in info.params().items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self._run.run_id, params=params[start : start + PARAMS_PER_BATCH])

    def on_round_end(self, record: dict[str, Any]) -> bool | None:
        from mlflow.entities import Metric

        assert self._run is not None, "on_round_end before on_train_start"
        now = int(time.time() * 1000)
        self._run.log([Metric(key, float(record[key]), now, record["round"]) for key in TRACKED])
        return None

    def on_train_end(self, run: Run) -> None:
        from mlflow.entities import RunTag

        assert self._run is not None, "on_train_end before on_train_start"
        open_run, self._run = self._run, None
        open_run.flush()
        tags = [RunTag("paragrad.outcome", run.outcome), RunTag("paragrad.rounds", str(len(run.history)))]
        open_run.client.log_batch(open_run.run_id, tags=tags)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.npz"
            run.save(path)
            open_run.client.log_artifact(open_run.run_id, str(path), "model")
        open_run.end("FINISHED")

    def on_train_error(self, error: BaseException) -> None:
        if self._run is not None:
            open_run, self._run = self._run, None
            open_run.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
