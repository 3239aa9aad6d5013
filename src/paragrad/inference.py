"""Distributed inference and evaluation.

The trained model goes to every worker once; each predicts its slice of the input and
the slices come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from paragrad.core.shards import Shard, ShardPlan, default_workers, plan_shards
from paragrad.data import PARQUET_SUFFIXES, Dataset, load, open_npy
from paragrad.data.columns import ColumnName, arrow_array
from paragrad.data.frames import is_frame
from paragrad.engines import AUTO, Engine, engine_class, reads_own_rows
from paragrad.engines.kept import engine_for_call
from paragrad.errors import ROWS_FROM_ONE, ConfigError, DataError, check_positive_int, option, setting
from paragrad.models.base import Model, features_of
from paragrad.training.checkpoint import load_model
from paragrad.training.settings import check_engine_takes
from paragrad.training.tasks import PredictShard


def _gather_predictions(
    results: list[tuple[np.ndarray, int]], plan: ShardPlan, first_row: int, source: str
) -> np.ndarray:
    """Concatenate the shards' predictions; name the first row that could not be predicted."""
    for (start, _), (_, bad) in zip(plan.bounds, results, strict=True):
        if bad >= 0:
            raise DataError(
                f"{source}: row {first_row + start + bad + 1} has NaN or infinite features or prediction; "
                + ROWS_FROM_ONE
            )
    return np.concatenate([values for values, _ in results])


def as_model(model: Model | str | os.PathLike) -> Model:
    """A trained model, or the one stored at a path."""
    if isinstance(model, Model):
        model._check_trained()
        return model
    return load_model(model)


def read_features(
    model: Model,
    data: Any,
    target: str | int | None = None,
    check_finite: bool = True,
    lazy: bool = False,
    delimiter: str | None = None,
    dropna: bool | None = None,
    target_file: str | os.PathLike | None = None,
    **reading: Any,
) -> Dataset:
    """The features (and, with ``target``, labels) of ``data`` in the model's column order.

    ``data`` is an array, a data frame, a Dataset or a path. Whenever both the model and
    the data know their column names, columns are matched by name: reordered columns
    work, a missing one is an error naming it, and others are left out (said in
    ``dataset.notes``); so a table's target column is ignored unless asked for. ``lazy``
    opens a Parquet file without reading it (see :func:`paragrad.load`). A model trained
    on one-hot encoded columns (``model.encoding_``) encodes a table's the same way, and
    one trained on a file with a decimal comma or another encoding reads files so
    (``model.read_options_``; ``reading`` overrides: ``decimal=``, ``encoding=``, ...).
    """
    if isinstance(data, (str, os.PathLike)) or is_frame(data):
        suffix = Path(data).suffix.lower() if isinstance(data, (str, os.PathLike)) else ""
        options: dict[str, Any] = dict(  # with the reading options below, for load()
            features=model.feature_names_,
            num_features=model.num_features_,
            one_hot=model.encoding_ or (),
            delimiter=delimiter,
            dropna=dropna if suffix != ".npy" else False,
            target_file=target_file,
            dtype=None,
            check_finite=check_finite,
            lazy=lazy and suffix in PARQUET_SUFFIXES,
        )
        if suffix in TABLE_FILE_SUFFIXES:
            options.update({**(model.read_options_ or {}), **_given(reading)})
        dataset = load(data if is_frame(data) else Path(data), target, **options)
        extra = _extra_target(model, dataset)
        if extra is not None:  # the model knows no names: drop the column named like its target
            dataset = load(Path(data), target, **{**options, "drop": [extra]})
    elif isinstance(data, Dataset):
        dataset = _by_name(model, data)
    else:
        dataset = Dataset(data, dtype=None, check_finite=check_finite)
        dataset = _by_name(model, dataset)
    num_features = features_of(model)
    if dataset.num_features != num_features:
        names = dataset.feature_names or ()
        hint = f": is {names[-1]!r} the target? drop it ({option('drop', [names[-1]])})" if names else ""
        raise DataError(
            f"{dataset.source}: has {dataset.num_features} features, but the model was trained "
            f"with {num_features}{hint if dataset.num_features == num_features + 1 else ''}"
        )
    return dataset


# Suffixes of table files whose reading options a model remembers (text, compressed text).
TABLE_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".gz", ".bz2", ".xz", ".zst", ".zstd")


def _given(reading: dict[str, Any]) -> dict[str, Any]:
    """The reading options the caller set (None and empty ones are not set)."""
    return {key: value for key, value in reading.items() if value not in (None, (), [])}


def _by_name(model: Model, dataset: Dataset) -> Dataset:
    """A named data set's columns in the order of the model's names; unnamed data as it is."""
    wanted, names = model.feature_names_, dataset.feature_names
    if wanted is None or names is None or tuple(names) == tuple(wanted):
        return dataset
    missing = [name for name in wanted if name not in names]
    if missing:
        shown = ", ".join(map(repr, missing[:10]))
        raise DataError(
            f"{dataset.source}: missing feature column(s) {shown} that the model was trained with"
        )
    order = [names.index(name) for name in wanted]
    picked = Dataset._trusted(
        np.ascontiguousarray(dataset.X[:, order]),
        dataset.y,
        tuple(wanted),
        dataset.target_name,
        dataset.source,
        dataset.classes,
    )
    unused = [name for name in names if name not in wanted]
    picked.notes = (
        *dataset.notes,
        *([f"columns the model does not use, left out: {', '.join(unused)}"] if unused else []),
    )
    return picked


def _extra_target(model: Model, dataset: Dataset) -> str | None:
    """The column of a table read for a model that knows no feature names which, named like
    its target (``y`` when it knows none), is one column too many; else None."""
    if model.feature_names_ is not None or dataset.num_features != features_of(model) + 1:
        return None
    target = model.target_name_ or "y"
    return target if target in (dataset.feature_names or ()) else None


def predict(
    model: Model | str | os.PathLike,
    data: Any,
    *,
    engine: str | Engine = "auto",
    workers: int | None = None,
    proba: bool = False,
    address: str | None = None,
    threads_per_worker: int = 1,
) -> np.ndarray:
    """Predict every row of ``data`` on the workers; results in input order.

    Parameters
    ----------
    model : Model or path
        A trained model or a model file.
    data : array, Dataset or path
        Rows to predict (a table's target column, if present, is ignored).
    engine, workers, address, threads_per_worker
        As for :func:`paragrad.train`, with a count of workers (``(min, max)`` and ``"auto"``
        are for training). Fewer rows than workers use fewer workers. On Ray,
        the workers read their own rows of a ``.npy`` or Parquet file. On the local
        engine (no engine object), rows in this process's own memory (an array) are
        predicted here, ``workers`` threads each on a part: worker processes would first
        need a copy, which costs more than predicting a linear model; files and loaded
        tables, which workers map, go to the workers.
    proba : bool
        Class probabilities (rows x classes) instead of labels; classifiers only.
    """
    model = as_model(model)
    if proba and not model.is_classifier:
        raise ConfigError("proba=True needs a classifier")
    engine = _predicting_engine(engine)
    dataset = read_features(model, data, check_finite=False, lazy=reads_own_rows(engine))
    if isinstance(engine, Engine):
        with engine.claimed():
            return _predict_on(engine, model, dataset, proba)
    # Worker processes on this machine would need a copy of rows in this process's memory;
    # threads here read them where they lie (a model that threads may share).
    if engine_class(engine).shares_cores and _in_own_memory(dataset) and model.thread_safe:
        check_positive_int("workers", workers, allow_none=True, what="a positive integer here (not a range)")
        return _predict_here(model, dataset, proba, workers or default_workers())
    with engine_for_call(
        engine, workers, address=address, max_restarts=0, threads_per_worker=threads_per_worker
    ) as runner:
        return _predict_on(runner, model, dataset, proba)


def _predicting_engine(engine: str | Engine) -> str | Engine:
    """The engine that ``engine="auto"`` predicts on: the local one, which predicts rows in
    this process's memory here, with a thread per worker, and files on the workers that
    map them."""
    return "local" if isinstance(engine, str) and engine == AUTO else engine


def _in_own_memory(dataset: Dataset) -> bool:
    """Whether the rows lie in this process's own memory (an array, not a mapped file or
    shared memory that workers could map)."""
    return dataset.table is None and not dataset.sparse and dataset.storage is None


def _predict_here(model: Model, dataset: Dataset, proba: bool, threads: int) -> np.ndarray:
    """Predict rows held in this process's own memory here, a part per thread (numpy lets
    go of Python's lock): worker processes would first need a copy of the rows, which
    costs more than predicting them (a linear model reads each value once)."""
    from concurrent.futures import ThreadPoolExecutor

    from paragrad.core.blas import blas_threads

    plan = plan_shards(dataset.num_rows, max(1, min(threads, dataset.num_rows)))
    task = PredictShard(model, proba)

    def part(worker: int) -> tuple[np.ndarray, int]:
        start, stop = plan.bounds[worker]
        return task(Shard(dataset.X[start:stop], None, worker, plan.num_shards))

    with blas_threads(1), ThreadPoolExecutor(plan.num_shards) as pool:
        results = list(pool.map(part, range(plan.num_shards)))
    return _gather_predictions(results, plan, 0, dataset.source)


def _predict_on(runner: Engine, model: Model, dataset: Dataset, proba: bool) -> np.ndarray:
    check_engine_takes(model, runner)
    plan = plan_shards(dataset.num_rows, min(runner.num_workers, dataset.num_rows))
    runner.start(dataset.features_only(), plan)
    return _gather_predictions(runner.run(PredictShard(model, proba)), plan, 0, dataset.source)


def evaluate(
    model: Model | str | os.PathLike,
    data: Any,
    target: str | int | None = None,
    *,
    delimiter: str | None = None,
    dropna: bool = False,
    target_file: str | os.PathLike | None = None,
    **reading: Any,
) -> dict[str, Any]:
    """Metrics of a trained model on labelled data.

    Classifiers: mean log-loss and accuracy, against labels of the kind the model was
    trained on (text, booleans or numbers). Regression: mean loss ``1/2 (pred - y)^2``,
    RMSE and R^2. ``target`` names the label column of a table (default: the column the
    model was trained on); ``delimiter`` overrides the one read from a text table, and
    ``reading`` (``decimal=``, ``encoding=``, ``na_values=``, ``comment=``, ``sheet=``) what
    the model remembers of its training file, as for :func:`paragrad.load`.
    """
    model = as_model(model)
    # A table names its label column; a .npz holds y, and target_file gives the labels.
    table = isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() not in (".npz", ".npy")
    if table and target is None and target_file is None:
        if model.target_name_ is None:
            raise ConfigError(f"{data}: name the label column with {setting('target')}")
        target = ColumnName(model.target_name_)  # the model's column, by name only
    dataset = read_features(
        model, data, target, delimiter=delimiter, dropna=dropna, target_file=target_file, **reading
    )
    y = dataset.labels  # as in the file: text, booleans or numbers
    if y is None:
        hint = ""
        if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() == ".npy":
            hint = f" (a .npy holds features only: give the labels with {option('target_file', 'y.npy')})"
        raise DataError(f"{dataset.source}: no target values to evaluate against{hint}")
    dataset.check()
    metrics: dict[str, Any] = {"rows": dataset.num_rows, "loss": model.loss(dataset.X, y)}
    predictions = model.predict(dataset.X)
    if model.is_classifier:
        metrics["accuracy"] = float(np.mean(model.codes_of(predictions) == model.codes_of(y)))
    else:
        y = y.astype(np.float64)
        residual = predictions - y
        metrics["rmse"] = float(np.sqrt(np.mean(residual**2)))
        spread = float(np.sum((y - y.mean()) ** 2))
        metrics["r2"] = 1.0 - float(residual @ residual) / spread if spread > 0 else float("nan")
    return metrics


# -- streaming prediction to a file ---------------------------------------------------------

CHUNK_BYTES = 256 << 20


class PredictionWriter:
    """Writes predictions chunk by chunk to ``.npy``, ``.csv`` or ``.parquet``, atomically."""

    def __init__(self, handle: IO[bytes], path: Path, num_rows: int, classes: np.ndarray | None) -> None:
        self.handle, self.path, self.num_rows, self.classes = handle, path, num_rows, classes
        self.suffix = path.suffix.lower()
        self.started = False  # a .npy's header is written
        self.writer: Any = None  # pyarrow's writer of a table file, once started

    def write(self, values: np.ndarray) -> None:
        if self.suffix == ".npy":
            if not self.started:
                header = {
                    "descr": np.lib.format.dtype_to_descr(values.dtype),
                    "fortran_order": False,
                    "shape": (self.num_rows, *values.shape[1:]),
                }
                np.lib.format.write_array_header_2_0(self.handle, header)
                self.started = True
            self.handle.write(np.ascontiguousarray(values).data.cast("B"))  # no copy
            return
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if self.classes is None:
            table = pa.Table.from_arrays([arrow_array(values)], names=["prediction"])
        else:
            columns = [arrow_array(values[:, j]) for j in range(len(self.classes))]
            table = pa.Table.from_arrays(columns, names=[f"proba_{label}" for label in self.classes])
        if self.writer is None:
            kind = pq.ParquetWriter if self.suffix == ".parquet" else pacsv.CSVWriter
            self.writer = kind(self.handle, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def predict_to_file(
    model: Model | str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str | Engine = "auto",
    workers: int | None = None,
    proba: bool = False,
    chunk_rows: int | None = None,
    progress: bool | None = None,
    address: str | None = None,
    threads_per_worker: int = 1,
    delimiter: str | None = None,
    **reading: Any,
) -> int:
    """Predict a data file chunk by chunk on the workers, writing each chunk as it comes.

    A ``.npy`` input is memory-mapped and the workers map their rows of each chunk from
    the file; on Ray, each actor also reads its rows of each chunk of a Parquet file. Other
    inputs are read whole first. The output (``.npy``, ``.csv`` or ``.parquet``) appears
    only when complete; ``delimiter`` overrides the one read from a text table. Returns the
    number of rows predicted.
    """
    import sys

    from tqdm.auto import tqdm

    from paragrad.core.atomic import atomic_write

    model = as_model(model)
    if proba and not model.is_classifier:
        raise ConfigError("proba=True needs a classifier")
    engine = _predicting_engine(engine)
    chunk_of, num_rows, source = _chunks_of(model, data, reads_own_rows(engine), delimiter, reading)
    out = Path(out)
    # A chunk read here holds its rows; a mapped .npy's stay in the file, so only the
    # chunk's predictions (a value, or a probability a class, per row) count.
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() == ".npy":
        row_bytes = 8 * (len(model.classes_) if proba and model.classes_ is not None else 1)
    else:
        row_bytes = 8 * features_of(model)
    step = chunk_rows or max(1, CHUNK_BYTES // row_bytes)
    task = PredictShard(model, proba)
    show = sys.stderr.isatty() if progress is None else progress
    runs = (
        engine.claimed()
        if isinstance(engine, Engine)
        else engine_for_call(
            engine, workers, address=address, max_restarts=0, threads_per_worker=threads_per_worker
        )
    )
    with (
        runs as runner,
        atomic_write(out) as handle,
        tqdm(total=num_rows, unit="row", unit_scale=True, disable=not show, leave=False) as bar,
    ):
        writer = PredictionWriter(handle, out, num_rows, model.classes_ if proba else None)
        try:
            for start in range(0, num_rows, step):
                chunk = chunk_of(start, min(start + step, num_rows))
                plan = plan_shards(chunk.num_rows, min(runner.num_workers, chunk.num_rows))
                runner.start(chunk, plan)
                writer.write(_gather_predictions(runner.run(task), plan, start, source))
                bar.update(chunk.num_rows)
        finally:
            writer.close()
    return num_rows


def _chunks_of(
    model: Model, data: Any, lazy: bool, delimiter: str | None, reading: dict[str, Any]
) -> tuple[Callable[[int, int], Dataset], int, str]:
    """Rows to predict, taken chunk by chunk: a ``.npy`` stays memory-mapped in its own
    type (each chunk is converted on its own); with ``lazy``, the workers read their rows of
    each chunk of a Parquet file; anything else is read as for ``predict``."""
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() == ".npy":
        rows = open_npy(Path(data))
        if rows.shape[1] != features_of(model):
            raise DataError(
                f"{data}: has {rows.shape[1]} features, but the model was trained with {features_of(model)}"
            )
        return (
            lambda start, stop: Dataset(rows[start:stop], dtype=None, source=str(data), check_finite=False),
            rows.shape[0],
            str(data),
        )
    dataset = read_features(model, data, check_finite=False, lazy=lazy, delimiter=delimiter, **reading)
    return (
        lambda start, stop: dataset.take(slice(start, stop)).features_only(),
        dataset.num_rows,
        dataset.source,
    )
