"""One-hot encoding of text columns, remembered so that new data is encoded the same way.

A column ``color`` with values ``blue`` and ``red`` becomes indicator columns
``color=blue`` and ``color=red`` (categories sorted), in the column's place. The
categories travel with the data set (``dataset.encoding``) and with a model file, so
prediction applies the same columns. A value not seen in training is an error naming the
column and the value: an all-zero row would predict silently from the intercept alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.errors import DataError, option

MAX_CATEGORIES = 100
# A column with more distinct values than this and than half its rows is an id or free
# text, not categories.
FEW_CATEGORIES = 10


@dataclass(frozen=True)
class Encoding:
    """The one-hot encoded columns, each with its sorted categories.

    The first category of each is the reference and gets no column (the intercept stands
    for it): all of them would add up to the intercept's column, a dependence in every fit.
    """

    categories: Mapping[str, tuple[str, ...]]

    def names(self, column: str) -> list[str]:
        """The indicator columns that stand for ``column``: one per category but the first."""
        return [f"{column}={value}" for value in self.categories[column][1:]]

    def expand(self, columns: Sequence[str]) -> list[str]:
        """``columns`` with each encoded one replaced by its indicator columns."""
        return [new for name in columns for new in (self.names(name) if name in self.categories else [name])]

    def to_json(self) -> dict[str, list[str]]:
        """A JSON-able form, for model files."""
        return {column: list(values) for column, values in self.categories.items()}

    @classmethod
    def from_json(cls, data: Any) -> Encoding:
        """Read :meth:`to_json`'s form back; a ValueError if it is not that."""
        if not isinstance(data, dict) or not all(
            isinstance(values, list) and all(isinstance(v, str) for v in values) for values in data.values()
        ):
            raise ValueError("the one-hot encoding is not a mapping of column to categories")
        return cls({str(column): tuple(values) for column, values in data.items()})


def _as_text(path: object, column: Any, name: str) -> list[str | None]:
    """A column's values as text (nulls as None), whatever their type in the file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
    return column.to_pylist()


def learn(path: object, table: Any, columns: Sequence[str]) -> Encoding:
    """The categories of each of ``columns`` in ``table``; refuses too many."""
    categories: dict[str, tuple[str, ...]] = {}
    for name in columns:
        if name not in table.column_names:
            raise DataError(
                f"{path}: no column {name!r} to one-hot encode ({option('one_hot', list(columns))})"
            )
        cells = _as_text(path, table.column(name), name)
        values = sorted({value for value in cells if value is not None})
        _check_categories(path, name, cells, values)
        if len(values) > MAX_CATEGORIES:
            raise DataError(
                f"{path}: column {name!r} has {len(values)} distinct values, too many to one-hot "
                f"encode (at most {MAX_CATEGORIES}): drop it with {option('drop', [name])}"
            )
        categories[name] = tuple(values)
    return Encoding(categories)


def _check_categories(path: object, name: str, cells: list[str | None], values: list[str]) -> None:
    """Refuse to one-hot encode numbers with fractions (a quantity) or mostly distinct values
    (an id, free text): each value would become a column of its own."""
    from paragrad.data.numbers import NumberFormat, parse_text

    present = [cell for cell in cells if cell is not None]
    parsed = parse_text(present, NumberFormat())
    if parsed is not None and not np.array_equal(parsed[0], np.round(parsed[0])):
        raise DataError(
            f"{path}: column {name!r} holds numbers, not categories: leave it out of "
            f"{option('one_hot', [name])} and it is read as numbers"
        )
    if len(values) > max(FEW_CATEGORIES, len(present) // 2):
        raise DataError(
            f"{path}: column {name!r} has {len(values)} distinct values in {len(present)} rows, mostly "
            f"distinct (an id or free text?), not categories to one-hot encode: leave it out with "
            f"{option('drop', [name])}"
        )


def apply(
    path: object, table: Any, encoding: Encoding, where: Callable[[int], str]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The indicator columns of ``table`` under ``encoding``: their names in the table's
    column order, and their values (NaN where the cell is missing). ``where(row)`` names a
    row in messages (a line of a text file)."""
    names: list[str] = []
    values: dict[str, np.ndarray] = {}
    for column in table.column_names:
        if column not in encoding.categories:
            names.append(column)
            continue
        cells = _as_text(path, table.column(column), column)
        known = encoding.categories[column]
        index = {value: j for j, value in enumerate(known)}
        codes = np.array([index.get(cell, -1) if cell is not None else -2 for cell in cells])
        if (codes == -1).any():
            row = int(np.argmax(codes == -1))
            raise DataError(
                f"{path}: column {column!r} holds {cells[row]!r} at {where(row)}, a value the model "
                f"was not trained with (known: {', '.join(known)})"
            )
        for j, name in enumerate(encoding.names(column), start=1):
            indicator = (codes == j).astype(np.float64)
            indicator[codes == -2] = np.nan
            values[name] = indicator
        names.extend(encoding.names(column))
    return names, values
