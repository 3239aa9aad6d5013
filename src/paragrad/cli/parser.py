"""The command line's options: one parser per command, every default shown in ``--help``.

Parsing names no handler: :mod:`paragrad.cli` runs the command the parser picked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paragrad import __version__
from paragrad.cli.options import (
    DefaultsFormatter,
    OneLineParser,
    _add_engine_options,
    _add_file_options,
    _add_row_options,
    _fraction,
    _hidden,
    _local_steps,
    _positive_int,
    _student,
)
from paragrad.models import MODELS
from paragrad.optim import OPTIMIZERS
from paragrad.serving.config import ServeConfig
from paragrad.training.settings import MAX_GUESSED_CLASSES, MIN_CLASS_ROWS
from paragrad.training.strategies import STRATEGIES

DEFAULT_LR = {"sgd": 0.1, "adam": 0.01, "lbfgs": 1.0}
DEFAULT_BATCH = {"sgd": 256, "local-sgd": 64}
SERVE_DEFAULT = ServeConfig()
NOT_CONVERGED = 3  # the exit status of --strict when training stopped before converging
PREDICTION_SUFFIXES = (".csv", ".parquet", ".npy")
DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".npz")  # what make-data writes
EXPORT_FORMATS = ("onnx",)
EXPORT_SUFFIXES = (".onnx",)
MODEL_SUFFIXES = (".npz",)  # what train --out writes
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
    "serve",
    "elastic",
    "e2e",
    "energy",
    "acceleration",
    "engine",
)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """``paragrad train``'s model: the family (chosen from the target unless given) and its
    hyperparameters."""
    p.add_argument(
        "--model",
        choices=MODELS,
        help="default: chosen from the target: logistic for 2 distinct values; softmax for text labels, "
        f"or for 3 to {MAX_GUESSED_CLASSES} whole numbers each seen in at least {MIN_CLASS_ROWS} rows; "
        "else linear",
    )
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the weights (default 0)")
    p.add_argument(
        "--hidden", type=_hidden, default=(64,), help="MLP hidden sizes, e.g. 128,64 (default: 64)"
    )
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu", help="MLP activation")
    p.add_argument(
        "--task",
        choices=("classification", "regression"),
        default="classification",
        help="MLP task",
    )


def _add_fault_options(p: argparse.ArgumentParser) -> None:
    """What train does about lost and silent workers."""
    p.add_argument("--max-restarts", type=int, default=0, help="restart dead workers up to this many times")
    p.add_argument(
        "--round-timeout",
        type=float,
        metavar="S",
        help="a worker silent this many seconds in a round (stopped, hung) is lost; default 60",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        metavar="S",
        help="a new worker (a Ray actor) not started within this many seconds is lost; default 120",
    )


def _add_strategy_options(p: argparse.ArgumentParser) -> None:
    """``paragrad train``'s strategy and optimizer, with their settings."""
    p.add_argument("--strategy", choices=STRATEGIES, default="gd", help="training algorithm")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="rows per step: for sgd the global batch, shared by all workers; for local-sgd each "
        "worker's own batch (default: 256 for sgd, 64 for local-sgd)",
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
    p.add_argument(
        "--lr", type=float, help="learning rate (default: sgd 0.1, adam 0.01; lbfgs: first trial step, 1)"
    )
    p.add_argument("--momentum", type=float, default=0.0, help="momentum of the sgd optimizer")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    """``paragrad train``: the model, the strategy and optimizer, the run, the engine."""
    p = commands.add_parser("train", help="train a model on a data file", formatter_class=DefaultsFormatter)
    p.add_argument(
        "data",
        type=Path,
        help="CSV/TSV/.txt (also .gz, .bz2, .zst, .xz), Parquet, .xlsx, Feather, .npz, LIBSVM, "
        "or .npy features with --target-file",
    )
    p.add_argument("--target", help=TARGET_HELP)
    _add_model_options(p)
    _add_strategy_options(p)
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help="passes over the data; rounds for gd (default: 500 for gd, which stops once converged; "
        "10 for sgd and local-sgd)",
    )
    p.add_argument("--max-rounds", type=_positive_int, help="a cap on rounds (default: no cap)")
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
    p.add_argument("--seed", type=int, default=0, help="seeds the start, the sampling and the shuffle")
    p.add_argument("--standardize", action="store_true", help="scale features to mean 0, variance 1")
    p.add_argument("--shuffle", action="store_true", help="shuffle rows before sharding")
    p.add_argument("--dtype", choices=("float64", "float32"), help="float type (default: the data's own)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal, once a run takes a second)",
    )
    p.add_argument("--out", type=Path, help="where to save the trained model, .npz (default: not saved)")
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
    _add_fault_options(p)
    p.add_argument(
        "--init", type=Path, metavar="MODEL", help="start from this trained model's parameters (same shapes)"
    )
    _add_file_options(p, training=True)
    _add_engine_options(p, elastic=True)


def _add_compress_command(commands: argparse._SubParsersAction) -> None:
    """``paragrad compress``: a smaller model file, measured against the original."""
    p = commands.add_parser(
        "compress",
        help="make a model file smaller: float16, int8 weights, or pruning",
        description="Write a compressed copy of a model and print file size, metric, loss and "
        "prediction time on --data, before and after, measured in the same run.",
    )
    p.add_argument("model", type=Path, help="model file written by train --out")
    p.add_argument("--method", choices=("float16", "int8", "prune"), required=True)
    p.add_argument("--sparsity", type=_fraction, help="prune: fraction of the weights set to zero")
    p.add_argument(
        "--data", type=Path, help="labelled rows to measure on (and to fine-tune on after pruning)"
    )
    p.add_argument("--target", help=f"{TARGET_HELP} (default: the one the model was trained on)")
    p.add_argument(
        "--max-drop", type=_fraction, metavar="D", help="refuse, writing nothing, if the metric falls by more"
    )
    p.add_argument("--out", type=Path, required=True, help="the compressed model file, .npz")


def _add_distill_command(commands: argparse._SubParsersAction) -> None:
    """``paragrad distill``: a small student trained on a teacher's outputs."""
    p = commands.add_parser(
        "distill",
        help="train a small model on a trained model's outputs",
        description="Train a student on a mix of the teacher's softened outputs and the labels; "
        "print its metric, agreement with the teacher, size and prediction time against the "
        "teacher's and against the same student trained on the labels alone.",
    )
    p.add_argument("teacher", type=Path, help="model file written by train --out, or an .onnx file")
    p.add_argument("data", type=Path, help="labelled training rows")
    p.add_argument("--target", help=TARGET_HELP)
    p.add_argument("--student", type=_student, required=True, metavar="{logistic,softmax,linear,mlp:H[,H]}")
    p.add_argument("--temperature", type=float, default=2.0, help="softens the outputs (classifiers)")
    p.add_argument("--alpha", type=_fraction, default=0.5, help="weight of the teacher's part of the loss")
    p.add_argument(
        "--test", type=Path, help="held-out labelled rows to report on (default: the training rows)"
    )
    p.add_argument("--strategy", choices=STRATEGIES, default="sgd", help="training algorithm")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="rows per step")
    p.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate")
    p.add_argument("--epochs", type=_positive_int, default=20, help="passes over the data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the student's model file, .npz")
    _add_engine_options(p)


# The serve options with a value: flag, type and help; their defaults are ServeConfig's.
SERVE_OPTIONS = (
    ("--host", str, "address to listen on; any but loopback needs --token"),
    ("--port", int, "port to listen on (0: any free port)"),
    (
        "--max-batch",
        _positive_int,
        "rows of concurrent requests predicted together (a larger request goes alone)",
    ),
    ("--max-wait-ms", float, "longest a request waits for others to share its batch"),
    ("--max-queue", _positive_int, "requests waiting per model before 503"),
    ("--max-rows", _positive_int, "rows per request before 413"),
    ("--max-body-mb", float, "request body size in MiB before 413"),
    ("--grace", float, "seconds to finish requests after SIGTERM"),
    ("--reload-interval", float, "seconds between looks at the model files (0: never)"),
    ("--workers", _positive_int, "local worker processes for requests of --split-rows rows (1: none)"),
    ("--split-rows", _positive_int, "rows from which a request goes to the workers"),
    ("--header-timeout", float, "seconds for a request's headers to arrive before 408"),
    ("--body-timeout", float, "seconds for a request's body to arrive, once its headers have, before 408"),
    ("--max-connections", _positive_int, "open connections; more are answered 503 and closed"),
    ("--blas-threads", _positive_int, "BLAS threads the server predicts with (the others serve clients)"),
)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve saved models over HTTP (Open Inference Protocol) with a page to try them",
        description="Serve model files over HTTP until SIGTERM or Ctrl-C: the Open Inference Protocol "
        "(KServe V2 REST) at /v2, Prometheus metrics at /metrics, a page to try the models at /.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="model file, or NAME=PATH (default name: its stem)"
    )
    for flag, kind, text in SERVE_OPTIONS:
        p.add_argument(flag, type=kind, default=getattr(SERVE_DEFAULT, flag[2:].replace("-", "_")), help=text)
    p.add_argument(
        "--token", help="clients must send 'Authorization: Bearer TOKEN' (default: $PARAGRAD_SERVE_TOKEN)"
    )
    p.add_argument("--insecure", action="store_true", help="serve a non-loopback address without a token")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name taken besides the server's address when there is no token (repeatable; *: any)",
    )
    p.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN (https://host[:port], or *) call the server (repeatable; default: none)",
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the protocol's gRPC form on PORT of the same host (0: any free port)",
    )
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.command`` names the one given."""
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
    _add_file_options(p, training=False)
    _add_engine_options(p)

    p = commands.add_parser("evaluate", help="loss and accuracy (or RMSE and R^2) on labelled data")
    p.add_argument("model", type=Path, help="model file written by train --out")
    p.add_argument(
        "data", type=Path, help="labelled rows: a table with the target, or .npy with --target-file"
    )
    p.add_argument("--target", help=f"{TARGET_HELP} (default: the one the model was trained on)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_file_options(p, training=False)
    _add_row_options(p)

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

    p = commands.add_parser(
        "export",
        help="export a saved model to ONNX, for onnxruntime",
        description="Write a numpy model file as an ONNX graph: input X (rows x features), outputs "
        "predict and, for classifiers, proba.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("model", type=Path, help="model file written by train --out (numpy models only)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="file format")
    p.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="where to write the exported model, .onnx"
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float type of the input, weights and outputs; float64 matches predict to round-off",
    )

    _add_serve_command(commands)
    _add_compress_command(commands)
    _add_distill_command(commands)

    p = commands.add_parser("bench", help="benchmarks, each against a baseline measured in the same run")
    p.add_argument("--quick", action="store_true", help="smaller sizes, a minute or two")
    p.add_argument("--suite", action="append", choices=BENCH_SUITES, help="run only this suite (repeatable)")
    p.add_argument("--out", type=Path, help="folder for results.json")
    return parser
