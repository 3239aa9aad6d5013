"""Numbers as spreadsheets and lab tools write them: decimal commas, thousands separators,
percentages and missing-value markers.

pyarrow reads plain numbers (``3.5``, ``-2e3``) and, told the decimal mark, ``3,5``.
What it leaves as text is read here, column by column, under the file's
:class:`NumberFormat`: ``1,234.5`` (or ``1.234,5`` with a decimal comma) is 1234.5, and
``12%`` is 0.12, the value a spreadsheet holds behind a cell shown as 12%. A column that
is numbers in a format the rules do not cover is an error naming the format and the
option that reads it, never a guess: text columns stay text only when they do not look
like numbers at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.errors import ConfigError, DataError, option

# Cells read as missing values besides empty ones: pyarrow's own list (NA, N/A, NULL,
# NaN, #N/A, ...) and the markers of UCI-style files and lab tools.
MISSING_MARKERS = ("?", "-", "--", ".", "Null", "#VALUE!", "#DIV/0!")
# Grouping marks spreadsheets write besides the one opposite the decimal mark.
_SPACES = " \u00a0\u202f'"


@dataclass(frozen=True)
class NumberFormat:
    """The decimal mark of a file's numbers (``.`` or ``,``), and extra missing-value markers."""

    decimal: str = "."
    na_values: tuple[str, ...] = ()

    @property
    def thousands(self) -> str:
        """The grouping mark opposite the decimal mark."""
        return "," if self.decimal == "." else "."

    def null_values(self) -> list[str]:
        """Every cell text read as a missing value."""
        import pyarrow.csv as pacsv

        return [*pacsv.ConvertOptions().null_values, *MISSING_MARKERS, *self.na_values]

    def pattern(self) -> re.Pattern[str]:
        """A number written in this format: sign, digits grouped by threes (or not), a
        fraction, an exponent, a percent sign."""
        d, t = re.escape(self.decimal), re.escape(self.thousands) + re.escape(_SPACES)
        grouped = rf"\d{{1,3}}(?:[{t}]\d{{3}})+"
        return re.compile(rf"^[+-]?(?:{grouped}|\d+)?(?:{d}\d+)?(?:[eE][+-]?\d+)?(?:\s?%)?$")


def decimal_from(text: str | None) -> str | None:
    """A decimal mark given by the user: ``.`` or ``,`` (None: read from the file)."""
    if text is None:
        return None
    if text not in (".", ","):
        raise ConfigError(f"{option('decimal', text)}: the decimal mark is '.' or ','")
    return text


def guess_decimal(cells: list[str]) -> str:
    """The decimal mark that the number-like cells of a file's first lines use: a comma
    when cells like ``3,5`` are at least as many as cells like ``3.5``."""
    comma = sum(1 for cell in cells if re.fullmatch(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?%?", cell))
    dot = sum(1 for cell in cells if re.fullmatch(r"[+-]?\d*\.\d+(?:[eE][+-]?\d+)?%?", cell))
    return "," if comma and comma >= dot else "."


def parse_text(values: list[Any], fmt: NumberFormat) -> tuple[np.ndarray, list[str]] | None:
    """A column of text cells as float64 (missing as NaN) when every present cell is a
    number in ``fmt``, with what was read besides plain numbers (``"thousands separators"``,
    ``"percentages"``); None when some cell is not."""
    pattern = fmt.pattern()
    out = np.full(len(values), np.nan)
    seen: set[str] = set()
    grouping = fmt.thousands + _SPACES
    for row, cell in enumerate(values):
        if cell is None:
            continue
        text = str(cell).strip()
        if not text or not pattern.fullmatch(text) or not any(char.isdigit() for char in text):
            return None
        percent = text.endswith("%")
        plain = text[:-1].rstrip() if percent else text
        if any(mark in plain for mark in grouping):
            seen.add("thousands separators")
            plain = plain.translate({ord(mark): None for mark in grouping})
        if fmt.decimal != ".":
            plain = plain.replace(fmt.decimal, ".")
        value = float(plain)
        if percent:
            seen.add("percentages as fractions (12% = 0.12)")
            value /= 100.0
        out[row] = value
    return out, sorted(seen)


def looks_numeric(values: list[Any], fmt: NumberFormat) -> bool:
    """Whether a column that ``fmt`` cannot read is numbers in the other format: every cell
    it cannot read is a number with the other decimal mark (``3184,8`` in a file read with
    decimal points). Dates (``12.5.2024``) and codes are not."""
    pattern = fmt.pattern()
    unread = [
        text
        for text in (str(value).strip() for value in values if value is not None)
        if text and not pattern.fullmatch(text)
    ]
    other = NumberFormat("," if fmt.decimal == "." else ".").pattern()
    return bool(unread) and all(other.fullmatch(text) and any(c.isdigit() for c in text) for text in unread)


def unreadable_numbers(
    source: str, name: str, values: list[Any], fmt: NumberFormat, where: Callable[[int], str]
) -> DataError:
    """The error for a column of numbers written in a way ``fmt`` does not read: the first
    such cell, and the option that reads it when another decimal mark would."""
    pattern = fmt.pattern()
    row = next(
        row
        for row, value in enumerate(values)
        if value is not None and str(value).strip() and not pattern.fullmatch(str(value).strip())
    )
    other = NumberFormat("," if fmt.decimal == "." else ".", fmt.na_values)
    if parse_text(values, other) is not None:
        hint = f"read them with {option('decimal', other.decimal)}"
    else:
        hint = (
            f"paragrad reads numbers such as 1234.5, 1,234.5 and 12% (with {option('decimal', ',')}: "
            f"1234,5 and 1.234,5), and missing markers such as NA and ? ({option('na_values', ['n.a.'])} "
            "adds more)"
        )
    return DataError(
        f"{source}: column {name!r} holds numbers written as {str(values[row]).strip()[:40]!r} "
        f"({where(row)}), which the {'decimal comma' if fmt.decimal == ',' else 'decimal point'} "
        f"format does not read: {hint}"
    )
