"""The command line's shared pieces: value types that refuse a bad value in the flag's
terms, and the option groups several commands take (reading a data file, the engine).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from paragrad.engines import AUTO, ENGINES
from paragrad.errors import ConfigError, flag_names
from paragrad.training.elastic import WorkerBounds


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


def _columns(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected column names like id or id,notes, got {text!r}")
    return names


def _add_file_options(parser: argparse.ArgumentParser, training: bool) -> None:
    """How to read a data file: its cells (delimiter, decimal mark, encoding, comment and
    missing markers, sheet), and for training the columns and rows used."""
    parser.add_argument(
        "--delimiter",
        metavar="C",
        help="delimiter of a text table: one character, or tab or space (default: read from the header)",
    )
    parser.add_argument(
        "--decimal",
        choices=(".", ","),
        help="decimal mark of a text table's numbers, the other being the thousands separator (default: "
        "',' when a file not separated by commas writes numbers like 3,5, else '.')",
    )
    parser.add_argument(
        "--na-values",
        type=_columns,
        default=(),
        metavar="TEXT[,TEXT]",
        help="more cell texts to read as missing values (besides empty, NA, N/A, null, NaN, ? and -)",
    )
    parser.add_argument(
        "--encoding", help="text encoding of a text table, e.g. latin-1 (default: UTF-8, else Windows-1252)"
    )
    parser.add_argument(
        "--comment",
        metavar="C",
        help="skip lines starting with C (lines starting with # before the header always)",
    )
    parser.add_argument("--sheet", help="sheet of a workbook: its name or number from 0 (default: the first)")
    if not training:
        return
    parser.add_argument("--drop", type=_columns, metavar="COL[,COL]", help="columns not to use (an id, say)")
    parser.add_argument(
        "--features", type=_columns, metavar="COL[,COL]", help="the feature columns (default: all others)"
    )
    parser.add_argument(
        "--one-hot",
        type=_columns,
        metavar="COL[,COL]",
        help="text columns to expand into COL=value indicator columns (at most 100 values each)",
    )
    _add_row_options(parser)


def _add_row_options(parser: argparse.ArgumentParser) -> None:
    """Which rows count, and where the targets of ``.npy`` features are (train, evaluate)."""
    parser.add_argument("--dropna", action="store_true", help="skip rows with missing values")
    parser.add_argument(
        "--target-file", type=Path, metavar="Y.npy", help="the targets of .npy features, one per row"
    )


def _worker_bounds(text: str) -> int | str:
    """A count, MIN:MAX or auto."""
    try:
        with flag_names():
            WorkerBounds.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers ")) from None
    return int(text) if text.strip().isdigit() else text


def _add_engine_options(parser: argparse.ArgumentParser, elastic: bool = False) -> None:
    parser.add_argument(
        "--workers",
        type=_worker_bounds if elastic else _positive_int,
        default=None,
        metavar="N|MIN:MAX|auto" if elastic else "N",
        help=(
            "workers: a count (default: one per core), MIN:MAX to let the run shrink when a "
            "worker is lost and grow when capacity appears, or auto to measure and keep the fastest"
            if elastic
            else "number of workers (default: one per core)"
        ),
    )
    parser.add_argument(
        "--engine",
        choices=(AUTO, *ENGINES),
        default=AUTO,
        help=(
            "where workers run; auto: in this process for small work, threads of this process "
            "for larger full-batch linear models, else local (default: auto)"
        ),
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


class DefaultsFormatter(argparse.HelpFormatter):
    """Every optional option's help says its default, unless its text already does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or "default" in text
            or action.default is argparse.SUPPRESS
        ):
            return text
        default = "none" if action.default is None else "off" if action.default is False else "%(default)s"
        return f"{text} (default: {default})"


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end as one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def _student(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, sizes = text.partition(":")
    if name in ("logistic", "softmax", "linear") and not sizes:
        return name, ()
    if name == "mlp":
        return name, _hidden(sizes) if sizes else (16,)
    raise argparse.ArgumentTypeError(f"expected logistic, softmax, linear or mlp:H[,H], got {text!r}")
