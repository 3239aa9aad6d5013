"""The ``paragrad`` command line, thin over the Python API.

Every user mistake ends as one line on stderr (``paragrad: error: ...``) and a non-zero
exit status, never a traceback; output files are written atomically, so a failed command
leaves none behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path

from paragrad import __version__
from paragrad.callbacks import Callback, MLflow, TensorBoard
from paragrad.checkpoint import save_model
from paragrad.data import PARQUET_SUFFIXES, load, make_classification, make_regression, save_dataset
from paragrad.engines import ENGINES, reads_own_rows
from paragrad.errors import ConfigError, ParagradError, TrainingDiverged
from paragrad.inference import evaluate, predict_to_file
from paragrad.models import MODELS, get_model
from paragrad.optim import OPTIMIZERS, get_optimizer
from paragrad.optim.base import positive
from paragrad.settings import default_optimizer
from paragrad.strategies import STRATEGIES, get_strategy
from paragrad.trainer import train

DEFAULT_LR = {"sgd": 0.1, "adam": 0.01, "lbfgs": 1.0}
DEFAULT_BATCH = {"sgd": 256, "local-sgd": 64}
NOT_CONVERGED = 3  # the exit status of --strict when training stopped before converging
PREDICTION_SUFFIXES = (".csv", ".parquet", ".npy")
DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".npz")
TARGET_HELP = (
    "label column of a CSV or Parquet file: its name, or its index (from 0) when no column "
    "has that name; '#3' is always index 3"
)
# The suites of paragrad.bench, in the order they run; named here so that the command line
# does not load the benchmarks to parse its arguments.
BENCH_SUITES = (
    "latency",
    "gd_step",
    "mlp_scaling",
    "solvers",
    "exact",
    "float32",
    "predict",
    "communication",
    "torch",
    "ray",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _local_steps(text: str) -> int | None:
    return None if text.lower() in ("none", "0") else _positive_int(text)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive_int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64 or 128,64, got {text!r}") from None


def _check_out(path: Path, suffixes: tuple[str, ...] | None = None) -> None:
    """Fail before any work when the output could not be written."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ConfigError(f"{path}: output directory {directory} does not exist")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: unsupported output type; use {', '.join(suffixes)}")


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="number of workers (default: one per core)",
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default="local", help="where workers run (default: local)"
    )
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="ray engine: join this Ray cluster (default: RAY_ADDRESS, else a local instance)",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        default=1,
        metavar="N",
        help="BLAS threads per worker; on Ray, the CPUs each worker reserves (default: 1)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_out(args.out)
    # Workers that read their own rows of a Parquet file (Ray's) spare reading it here.
    lazy = reads_own_rows(args.engine) and args.data.suffix.lower() in PARQUET_SUFFIXES
    dataset = load(args.data, args.target, dtype=args.dtype, lazy=lazy)
    model_class = get_model(args.model)
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
    optimizer_name = args.optimizer or default_optimizer(model, strategy, dataset).name
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
    optimizer_options = {}
    if optimizer_name in DEFAULT_LR:
        optimizer_options["lr"] = args.lr if args.lr is not None else DEFAULT_LR[optimizer_name]
    if optimizer_name == "sgd":
        optimizer_options.update(momentum=args.momentum, nesterov=args.nesterov)
    options = dict(
        strategy=strategy,
        optimizer=get_optimizer(optimizer_name, **optimizer_options),
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
        max_restarts=args.max_restarts,
        threads_per_worker=args.threads_per_worker,
        address=args.address,
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        callbacks=_trackers(args),
    )
    try:
        run = train(model, dataset, **options)
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
        print(f"paragrad: error: {run.outcome}; raise --epochs or --tol (no model saved)", file=sys.stderr)
        return NOT_CONVERGED
    if args.out is not None:
        run.save(args.out)
        print(f"saved       {args.out}")
    if not run.converged:
        print(
            f"{run.outcome} after {len(run.history)} rounds (tol {args.tol:g}): the model is not the optimum"
        )
    return 0


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
    )
    print(f"wrote {rows} predictions to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate(args.model, args.data, args.target)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from paragrad.bench import run_suites  # the suites load only when benchmarks run

    run_suites(args.suite or list(BENCH_SUITES), args.quick, args.out)
    if args.out is not None:
        print(f"wrote {args.out / 'results.json'}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end as one line on stderr, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    """``paragrad train``: the model, the strategy and optimizer, the run, the engine."""
    p = commands.add_parser("train", help="train a model on a data file")
    p.add_argument("data", type=Path, help="CSV/TSV, Parquet, .npz or LIBSVM file")
    p.add_argument("--target", help=TARGET_HELP)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the weights (default 0)")
    p.add_argument("--hidden", type=_hidden, default=(64,), help="MLP hidden sizes, e.g. 128,64")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu", help="MLP activation")
    p.add_argument(
        "--task",
        choices=("classification", "regression"),
        default="classification",
        help="MLP task",
    )
    p.add_argument("--strategy", choices=STRATEGIES, default="gd")
    p.add_argument(
        "--batch-size", type=_positive_int, help="rows per worker per step (sgd 256, local-sgd 64)"
    )
    p.add_argument(
        "--local-steps",
        type=_local_steps,
        default=16,
        help="local-sgd steps per round; 'none': one-shot",
    )
    p.add_argument("--server-lr", type=float, default=1.0, help="local-sgd server learning rate")
    p.add_argument("--compress", metavar="C", help="compress what workers send: topk:0.01, int8 or fp16")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="default with gd: qr for linear (rows x features^2 up to 1e11), newton for logistic and "
        "softmax (up to 1024 parameters, rows x parameters^2 up to 1e9), else lbfgs; adam for sgd "
        "and local-sgd",
    )
    p.add_argument("--lr", type=float, help="learning rate (sgd 0.1, adam 0.01; lbfgs: first trial step, 1)")
    p.add_argument("--momentum", type=float, default=0.0, help="momentum of the sgd optimizer")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help="passes over the data; rounds for gd (default: 500 for gd, which stops once converged; "
        "10 for sgd and local-sgd)",
    )
    p.add_argument("--max-rounds", type=_positive_int)
    p.add_argument(
        "--tol",
        type=float,
        default=1e-6,
        help="converged when the solver's measure (gd) or the epoch loss's change (sgd) is this small "
        "(default: 1e-6)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help=f"stopping before converging is an error (exit status {NOT_CONVERGED}; nothing saved)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize", action="store_true", help="scale features to mean 0, variance 1")
    p.add_argument("--shuffle", action="store_true", help="shuffle rows before sharding")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("--out", type=Path, help="where to save the trained model (.npz)")
    p.add_argument("--checkpoint", type=Path, metavar="DIR", help="write checkpoints to this folder")
    p.add_argument(
        "--checkpoint-every", metavar="K", help="every K rounds (10) or seconds (30s); default 60s"
    )
    p.add_argument("--resume", action="store_true", help="go on from the newest checkpoint in --checkpoint")
    p.add_argument("--log-dir", type=Path, metavar="DIR", help="write TensorBoard event files to this folder")
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="log the run to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db; MLFLOW_EXPERIMENT_NAME)",
    )
    p.add_argument("--max-restarts", type=int, default=0, help="restart dead workers up to this many times")
    _add_engine_options(p)
    p.set_defaults(handler=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="paragrad", description="Data-parallel training and inference.")
    parser.add_argument("--version", action="version", version=f"paragrad {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )

    _add_train_command(commands)

    p = commands.add_parser("predict", help="predict with a saved model, distributed over workers")
    p.add_argument("model", type=Path, help="model file written by train --out")
    p.add_argument("data", type=Path, help="rows to predict (a target column is ignored)")
    p.add_argument("--out", type=Path, required=True, help="predictions file (.csv, .parquet or .npy)")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _add_engine_options(p)
    p.set_defaults(handler=cmd_predict)

    p = commands.add_parser("evaluate", help="loss and accuracy (or RMSE and R^2) on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--target", help=f"{TARGET_HELP} (default: the one the model was trained on)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(handler=cmd_evaluate)

    p = commands.add_parser("make-data", help="generate a synthetic data set")
    p.add_argument("kind", choices=("regression", "classification"))
    p.add_argument("--rows", type=_positive_int, required=True)
    p.add_argument("--features", type=_positive_int, required=True)
    p.add_argument("--classes", type=_positive_int, default=2, help="classes (classification)")
    p.add_argument("--noise", type=float, default=0.1, help="noise level (regression)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help=".csv, .tsv, .parquet or .npz")
    p.add_argument("--test-rows", type=_positive_int, help="extra rows from the same distribution ...")
    p.add_argument("--test-out", type=Path, help="... written here, for held-out evaluation")
    p.set_defaults(handler=cmd_make_data)

    p = commands.add_parser("bench", help="benchmarks, each against a baseline measured in the same run")
    p.add_argument("--quick", action="store_true", help="smaller sizes, a minute or two")
    p.add_argument("--suite", action="append", choices=BENCH_SUITES, help="run only this suite (repeatable)")
    p.add_argument("--out", type=Path, help="folder for results.json")
    p.set_defaults(handler=cmd_bench)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"paragrad: warning: {message}", file=sys.stderr)


def _terminate(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so workers stop and shared memory is released."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args)
    except ParagradError as exc:
        print(f"paragrad: error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"paragrad: error: {where}{exc.strerror or exc}", file=sys.stderr)
    except MemoryError:
        print("paragrad: error: out of memory: use smaller data, model or batches", file=sys.stderr)
    except KeyboardInterrupt:
        print("paragrad: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
