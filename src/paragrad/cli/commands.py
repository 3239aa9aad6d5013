"""The ``paragrad`` command line, thin over the Python API.

Every user mistake ends as one line on stderr (``paragrad: error: ...``) and a non-zero
exit status, never a traceback; output files are written atomically, so a failed command
leaves none behind.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from paragrad.callbacks import Callback, MLflow, TensorBoard
from paragrad.cli.parser import (
    BENCH_SUITES,
    DATA_SUFFIXES,
    DEFAULT_BATCH,
    DEFAULT_LR,
    EXPORT_SUFFIXES,
    MODEL_SUFFIXES,
    NOT_CONVERGED,
    PREDICTION_SUFFIXES,
    SERVE_OPTIONS,
    build_parser,
)
from paragrad.core.atomic import remove_stale_temporaries
from paragrad.data import (
    PARQUET_SUFFIXES,
    Dataset,
    load,
    make_classification,
    make_regression,
    save_dataset,
)
from paragrad.engines import AUTO, reads_own_rows
from paragrad.engines.kept import start_early
from paragrad.errors import ConfigError, ParagradError, TrainingDiverged, flag_names
from paragrad.inference import evaluate, predict_to_file
from paragrad.models import get_model
from paragrad.onnx_export import export_onnx, import_onnx
from paragrad.optim import get_optimizer
from paragrad.optim.base import positive
from paragrad.training.checkpoint import TorchModelFileError, load_model, save_model
from paragrad.training.settings import choose_model, default_optimizer
from paragrad.training.strategies import get_strategy
from paragrad.training.trainer import train

if TYPE_CHECKING:
    from paragrad.models.base import Model
    from paragrad.training.run import Run


def _check_out(path: Path, suffixes: tuple[str, ...] | None = None) -> None:
    """Fail before any work when the output could not be written."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ConfigError(f"{path}: output directory {directory} does not exist")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: unsupported output type; use {', '.join(suffixes)}")
    remove_stale_temporaries(directory, glob.escape(path.name))  # of a write killed midway


def _load_training_data(args: argparse.Namespace, lazy: bool) -> Dataset:
    """The training data, read with the file options of ``paragrad train``."""
    if args.data.suffix.lower() == ".npy" and args.target_file is None:
        raise ConfigError(
            f"{args.data}: a .npy holds features only: give the targets with --target-file y.npy"
        )
    dataset = load(
        args.data,
        args.target,
        features=args.features,
        drop=args.drop or (),
        one_hot=args.one_hot or (),
        dropna=args.dropna,
        target_file=args.target_file,
        dtype=args.dtype,
        lazy=lazy,
        **_reading(args),
    )
    _print_notes(dataset)
    if dataset.rows_dropped:
        print(f"dropped {dataset.rows_dropped} rows with missing values")
    return dataset


def _reading(args: argparse.Namespace) -> dict[str, Any]:
    """How the data file writes its cells, as the command line gives it."""
    keys = ("delimiter", "decimal", "na_values", "encoding", "comment", "sheet")
    return {key: getattr(args, key) for key in keys}


def _print_notes(dataset: Dataset) -> None:
    """What reading the data chose that the user should know, a line each."""
    for note in dataset.notes:
        print(f"note: {note}")


# With --engine auto, a file this large is work for the local workers (see the README,
# "Where a run goes"): they start while it is read.
EARLY_START_BYTES = 64 << 20


def _start_workers_early(args: argparse.Namespace) -> None:
    """Start the workers of a fixed count now: their start overlaps reading the file."""
    engine = args.engine
    if engine == AUTO:
        engine = "local" if args.data.is_file() and args.data.stat().st_size >= EARLY_START_BYTES else None
    if engine is not None and (args.workers is None or isinstance(args.workers, int)):
        options = {"max_restarts": args.max_restarts, "threads_per_worker": args.threads_per_worker}
        start_early(engine, args.workers, address=args.address, **options)


def cmd_train(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_out(args.out, MODEL_SUFFIXES)
    # Workers that read their own rows of a Parquet file (Ray's) spare reading it here;
    # choosing the model reads the target, so it needs the file read.
    lazy = reads_own_rows(args.engine) and args.data.suffix.lower() in PARQUET_SUFFIXES and bool(args.model)
    _start_workers_early(args)
    dataset = _load_training_data(args, lazy)
    model_class = get_model(args.model or _chosen_model(dataset))
    model_options = {"l2": args.l2}
    if model_class.name == "mlp":
        model_options.update(hidden=args.hidden, activation=args.activation, task=args.task)
    model = model_class(**model_options)
    strategy_options = {"compress": args.compress}
    if args.strategy in DEFAULT_BATCH:
        strategy_options["batch_size"] = args.batch_size or DEFAULT_BATCH[args.strategy]
    if args.strategy == "local-sgd":
        strategy_options.update(local_steps=args.local_steps, server_lr=args.server_lr)
    strategy = get_strategy(args.strategy, **strategy_options)
    optimizer = _optimizer(args, model, strategy, dataset)
    options = dict(
        strategy=strategy,
        optimizer=optimizer,
        engine=args.engine,
        workers=args.workers,
        epochs=args.epochs,
        max_rounds=args.max_rounds,
        tol=args.tol,
        seed=args.seed,
        standardize=args.standardize,
        shuffle=args.shuffle,
        progress=args.progress,
        dtype=args.dtype,
        **_fault_options(args),
        threads_per_worker=args.threads_per_worker,
        address=args.address,
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        callbacks=_trackers(args),
    )
    try:
        run = train(model, dataset, init=args.init, **options)
    except TrainingDiverged as exc:
        if args.out is not None:
            model.params_ = exc.params
            save_model(model, args.out)
            raise TrainingDiverged(
                f"{exc}; the last finite parameters are saved in {args.out}", exc.params, exc.round_index
            ) from None
        raise
    print(run.summary())
    if args.strict and not run.converged:
        fix = (
            "add a penalty with --l2 (0.01, say)"
            if run.stopped == "no finite optimum"
            else "raise --epochs or --tol"
        )
        print(f"paragrad: error: {run.outcome}; {fix} (no model saved)", file=sys.stderr)
        return NOT_CONVERGED
    _save(run, args.out)
    if not run.converged:
        print(
            f"{run.outcome} after {len(run.history)} rounds (tol {args.tol:g}): the model is not the optimum"
        )
    return 0


def _optimizer(args: argparse.Namespace, model: Any, strategy: Any, dataset: Dataset) -> Any:
    """The optimizer that --optimizer, --lr, --momentum and --nesterov ask for (default: the
    one the model and strategy call for), refusing options that do not apply to it."""
    default = None if args.optimizer else default_optimizer(model, strategy, dataset)
    optimizer_name = args.optimizer if default is None else default.name
    if optimizer_name != "sgd" and (args.momentum or args.nesterov):
        raise ConfigError("--momentum and --nesterov apply to --optimizer sgd only")
    if args.lr is not None:
        positive("learning rate", args.lr)
    if optimizer_name not in DEFAULT_LR and args.lr is not None:
        chosen = (
            f"--optimizer {optimizer_name}"
            if args.optimizer
            else f"{optimizer_name}, the default solver here,"
        )
        raise ConfigError(
            f"--lr does not apply: {chosen} takes no learning rate (--optimizer lbfgs, adam or sgd do)"
        )
    if default is not None and optimizer_name not in DEFAULT_LR:
        return default  # the solver the data calls for, as chosen (a sampled Hessian, say)
    optimizer_options = {}
    if optimizer_name in DEFAULT_LR:
        optimizer_options["lr"] = args.lr if args.lr is not None else DEFAULT_LR[optimizer_name]
    if optimizer_name == "sgd":
        optimizer_options.update(momentum=args.momentum, nesterov=args.nesterov)
    return get_optimizer(optimizer_name, **optimizer_options)


def _fault_options(args: argparse.Namespace) -> dict[str, float | int | None]:
    """What train does about lost and silent workers, from the command line."""
    return {
        "max_restarts": args.max_restarts,
        "round_timeout_s": args.round_timeout,
        "start_timeout_s": args.start_timeout,
    }


def _save(run: Run, out: Path | None) -> None:
    """Save the model to ``out``, or say that it was not saved."""
    if out is None:
        print("not saved: give --out FILE to keep the model")
        return
    run.save(out)
    print(f"saved         {out}")


def _chosen_model(dataset: Dataset) -> str:
    """The model the target calls for, said in one line (``--model`` overrides it)."""
    if not dataset.has_labels:
        raise ConfigError(f"{dataset.source}: name the label column with --target")
    name, reason = choose_model(dataset)
    print(f"model: {name} ({reason})")
    return name


def _trackers(args: argparse.Namespace) -> list[Callback]:
    """The run trackers that --log-dir and --mlflow ask for."""
    trackers: list[Callback] = []
    if args.log_dir is not None:
        trackers.append(TensorBoard(args.log_dir))
    if args.mlflow:
        trackers.append(MLflow())
    return trackers


def cmd_predict(args: argparse.Namespace) -> int:
    _check_out(args.out, PREDICTION_SUFFIXES)
    rows = predict_to_file(
        args.model,
        args.data,
        args.out,
        engine=args.engine,
        workers=args.workers,
        proba=args.proba,
        address=args.address,
        threads_per_worker=args.threads_per_worker,
        **_reading(args),
    )
    print(f"wrote {rows} predictions to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    options = dict(dropna=args.dropna, target_file=args.target_file, **_reading(args))
    metrics = evaluate(args.model, args.data, args.target, **options)
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(f"{name:<9} {value:.6g}" if isinstance(value, float) else f"{name:<9} {value}")
    return 0


def cmd_make_data(args: argparse.Namespace) -> int:
    _check_out(args.out, DATA_SUFFIXES)
    if (args.test_rows is None) != (args.test_out is None):
        raise ConfigError("--test-rows and --test-out go together")
    if args.test_out is not None:
        _check_out(args.test_out, DATA_SUFFIXES)
    total = args.rows + (args.test_rows or 0)
    if args.kind == "regression":
        dataset = make_regression(total, args.features, noise=args.noise, seed=args.seed)
    else:
        dataset = make_classification(total, args.features, num_classes=args.classes, seed=args.seed)
    save_dataset(dataset.take(slice(0, args.rows)), args.out)
    message = f"wrote {args.rows} rows x {args.features} features to {args.out}"
    if args.test_rows:
        save_dataset(dataset.take(slice(args.rows, total)), args.test_out)
        message += f" and {args.test_rows} rows to {args.test_out}"
    print(message)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _check_out(args.out, EXPORT_SUFFIXES)
    import_onnx()  # a missing package is said before any work
    try:
        model = load_model(args.model)
    except TorchModelFileError:
        raise ConfigError(
            f"{args.model}: a Torch model's parameters without its graph: save it again with "
            "the onnx package installed (pip install 'paragrad[onnx]'), then export"
        ) from None
    export_onnx(model, args.out, dtype=args.dtype)
    outputs = "predict, proba" if model.is_classifier else "predict"
    print(f"wrote {args.out} ({args.format}, {args.dtype}): input X, outputs {outputs}")
    return 0


def _labelled(path: Path, target: str | None, model: Model) -> Dataset:
    """Labelled rows for a model: the target named, else the column it was trained on."""
    if path.suffix.lower() != ".npz" and target is None:
        if model.target_name_ is None:
            raise ConfigError(f"{path}: name the label column with --target")
        target = model.target_name_
    return load(path, target)


def cmd_compress(args: argparse.Namespace) -> int:
    from paragrad.training.model_compression import compress, measure, side_by_side

    _check_out(args.out, MODEL_SUFFIXES)
    model = load_model(args.model)
    if args.data is None and (args.method == "prune" or args.max_drop is not None):
        raise ConfigError(
            f"--method {args.method}{' --max-drop' * (args.max_drop is not None)} needs --data FILE"
        )
    data = None if args.data is None else _labelled(args.data, args.target, model)
    compressed = compress(model, args.method, sparsity=args.sparsity, data=data, max_drop=args.max_drop)
    save_model(compressed, args.out)
    if data is None:
        before, after = args.model.stat().st_size, args.out.stat().st_size
        print(f"file size     {before / 1024:.1f} KiB -> {after / 1024:.1f} KiB ({after / before:.2f}x)")
    else:
        before_footprint, after_footprint = measure([model, compressed], data)
        print(side_by_side(before_footprint, after_footprint, args.method))
    print(f"saved         {args.out}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from paragrad.training.distillation import distill, student_model, teacher_model

    _check_out(args.out, MODEL_SUFFIXES)
    teacher = teacher_model(args.teacher)
    data = _labelled(args.data, args.target, teacher)
    test = None if args.test is None else _labelled(args.test, args.target, teacher)
    name, hidden = args.student
    strategy_options: dict[str, Any] = {}
    if args.strategy in DEFAULT_BATCH:
        strategy_options["batch_size"] = args.batch_size
    run = distill(
        teacher,
        student_model(name, hidden, teacher),
        data,
        temperature=args.temperature,
        alpha=args.alpha,
        test=test,
        strategy=get_strategy(args.strategy, **strategy_options),
        optimizer=get_optimizer("adam", lr=args.lr),
        epochs=args.epochs,
        seed=args.seed,
        engine=args.engine,
        workers=args.workers,
        tol=0.0,
    )
    print(run.summary())
    _save(run, args.out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from paragrad.serving import serve

    keys = [flag[2:].replace("-", "_") for flag, _, _ in SERVE_OPTIONS]
    keys += ["token", "insecure", "allow_host", "cors", "grpc_port"]
    serve(args.models, access_log=not args.no_access_log, **{key: getattr(args, key) for key in keys})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from paragrad.bench import run_suites  # the suites load only when benchmarks run

    run_suites(args.suite or list(BENCH_SUITES), args.quick, args.out)
    if args.out is not None:
        print(f"wrote {args.out / 'results.json'}")
    return 0


HANDLERS = {
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "make-data": cmd_make_data,
    "export": cmd_export,
    "serve": cmd_serve,
    "bench": cmd_bench,
    "compress": cmd_compress,
    "distill": cmd_distill,
}


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"paragrad: warning: {message}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C so that workers stop and shared memory is released."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class ReaderGone:
    """Standard output that survives its reader going away (``paragrad train ... | head``):
    once the pipe is closed, output goes nowhere and the command carries on, so the model
    is still written, as ``cat`` and ``grep`` would carry on or stop quietly."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._to_nowhere()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_nowhere()

    def _to_nowhere(self) -> None:
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, self._stream.fileno())  # the buffered rest, flushed at exit, too
        os.close(nowhere)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    signal.signal(signal.SIGTERM, _terminate)
    if not isinstance(sys.stdout, ReaderGone) and hasattr(sys.stdout, "fileno"):
        sys.stdout = ReaderGone(sys.stdout)
    try:
        with flag_names():
            status = HANDLERS[args.command](args)
            sys.stdout.flush()
            return status
    except ParagradError as exc:
        print(f"paragrad: error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"paragrad: error: {where}{exc.strerror or exc}", file=sys.stderr)
    except MemoryError:
        print("paragrad: error: out of memory: use smaller data, model or batches", file=sys.stderr)
    except KeyboardInterrupt as exc:  # the shell's codes: 128 + the signal's number
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"paragrad: {stopped}{_resume_hint(args)}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    return 1


def _resume_hint(args: argparse.Namespace) -> str:
    """For a training run that wrote checkpoints, how to go on from them."""
    checkpoint = getattr(args, "checkpoint", None)
    return "" if checkpoint is None else f"; go on from the checkpoints in {checkpoint} with --resume"


if __name__ == "__main__":
    sys.exit(main())
