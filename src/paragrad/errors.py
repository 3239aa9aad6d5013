"""The exceptions paragrad raises for problems a user can fix.

Every one of them carries a message that names the problem (file, column, row, shape or
setting); the command line prints that message as one line and exits non-zero.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator

import numpy as np

# Whether messages name settings as command-line flags (``--drop id``) rather than as
# keyword arguments (``drop=['id']``); the command line turns it on while it runs.
_FLAG_NAMES = contextvars.ContextVar("flag_names", default=False)


# Messages name rows as people count them, from 1, and say so: a row index in numpy counts
# from 0, and a spreadsheet's line numbers count the header.
FROM_ONE = "counting from 1"  # after a row number: "row 3 (counting from 1)"
ROWS_FROM_ONE = "rows count from 1"  # at a message's end, when the row is not


class ParagradError(Exception):
    """Base class of the errors that come from bad input or settings, not from bugs."""


class DataError(ParagradError, ValueError):
    """A data file or array cannot be used: missing, malformed, non-numeric or non-finite."""


class ConfigError(ParagradError, ValueError):
    """A setting is out of range or inconsistent with the model or data."""


class ModelFileError(ParagradError, ValueError):
    """A model file is missing, truncated, of another format or refused for safety."""


class OutputError(ParagradError, OSError):
    """An output file could not be written (a full disk, say); the old file is kept."""


class TrainingDiverged(ParagradError, ArithmeticError):
    """The loss or the parameters became NaN or infinite.

    ``params`` holds the last finite parameter vector, so nothing learnt so far is lost.
    """

    def __init__(self, message: str, params: np.ndarray, round_index: int) -> None:
        super().__init__(message)
        self.params = params
        self.round_index = round_index


class PerformanceWarning(UserWarning):
    """Settings that work, but waste the machine or do less than asked (clipped batches)."""


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the calling function point at the
    first caller outside paragrad: the user's line, however deep the warning is raised."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


class DataWarning(UserWarning):
    """Data read with a change the user should know of (repeated column names renamed)."""


class ConvergenceWarning(UserWarning):
    """Training stopped at its epoch or round limit before meeting ``tol``."""


class WorkerLost(ParagradError, RuntimeError):
    """A worker process died (killed, out of memory) before returning its result."""


class WorkerError(ParagradError, RuntimeError):
    """A task raised an exception inside a worker; the message holds its traceback."""


def check_positive_int(
    name: str, value: object, allow_none: bool = False, what: str = "a positive integer"
) -> None:
    """Refuse anything but a positive integer (or None, when allowed) for setting ``name``."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be {what}, got {value!r}")


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Within this block, :func:`option` names settings as command-line flags."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


def setting(keyword: str) -> str:
    """A setting's name as the user writes it: ``--max-rounds`` on the command line,
    ``max_rounds=`` in Python."""
    return "--" + keyword.replace("_", "-") if _FLAG_NAMES.get() else f"{keyword}="


def in_terms(python: str, command_line: str) -> str:
    """The same words for Python callers and for the command line (inside
    :func:`flag_names`), where the fix is said differently: a class against a flag."""
    return command_line if _FLAG_NAMES.get() else python


def model_term(model: object) -> str:
    """A model as the caller names it: ``LogisticRegression`` in Python, ``the logistic
    model`` on the command line (``--model logistic``)."""
    name = getattr(model, "name", None) or type(model).__name__
    return in_terms(
        type(model).__name__ if not isinstance(model, type) else model.__name__, f"the {name} model"
    )


def option(keyword: str, value: object = True) -> str:
    """A setting as the user writes it, for messages that say how to fix a problem:
    ``--one-hot color`` on the command line, ``one_hot=['color']`` in Python."""
    if not _FLAG_NAMES.get():
        return f"{keyword}={value!r}"
    flag = "--" + keyword.replace("_", "-")
    if value is True:
        return flag
    shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return f"{flag} {shown}"
