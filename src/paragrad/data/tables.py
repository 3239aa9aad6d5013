"""CSV/TSV and Parquet tables: reading, picking the feature and target columns, one-hot
encoding, rows with missing values, and :class:`TableFile`, a Parquet file whose rows are
read only when they are needed.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from paragrad.core.shm import shared_empty
from paragrad.data.checks import _check_finite
from paragrad.data.columns import (
    ColumnName,
    _check_numeric,
    _fix_text,
    _numeric_column,
    _pick_columns,
    _resolve_target,
    _target_column,
    read_text_numbers,
    tidy_columns,
)
from paragrad.data.dataset import Dataset, _float_dtype
from paragrad.data.delimited import (
    TEXT_SUFFIXES,
    Dialect,
    TextFormat,
    data_lines,
    read_text_table,
    table_suffix,
)
from paragrad.data.encoding import Encoding, apply, learn
from paragrad.data.numbers import NumberFormat
from paragrad.data.sheets import ARROW_SUFFIXES, SHEET_SUFFIXES, read_arrow_file, read_sheet
from paragrad.errors import FROM_ONE, DataError, option

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}  # what save_dataset writes
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a table besides its target (see :func:`paragrad.load`): the feature
    columns, columns to drop, columns to one-hot encode (names, or a model's encoding),
    whether to skip rows with missing values, how text files write their cells (delimiter,
    decimal mark, encoding, comment mark, extra missing markers: each None is read from
    the file) and, for workbooks, the sheet."""

    features: Sequence[str] | None = None
    drop: tuple[str, ...] = ()
    one_hot: tuple[str, ...] | Encoding = ()
    dropna: bool | None = False  # None: not offered (predicting keeps every row)
    delimiter: str | None = None
    decimal: str | None = None
    encoding: str | None = None
    comment: str | None = None
    na_values: tuple[str, ...] = ()
    sheet: str | int | None = None

    def text_format(self) -> TextFormat:
        return TextFormat(self.delimiter, self.decimal, self.encoding, self.comment, self.na_values)


@dataclass
class ReadTable:
    """A table as read: its columns, how messages name its rows, the decimal mark of its
    text cells, what was read that a user should know (notes), and the reading options a
    model should remember to read files of the same kind (decimal mark, encoding)."""

    table: Any
    where: Callable[[int], str]
    decimal: str = "."
    notes: list[str] = dataclasses.field(default_factory=list)
    remembered: dict[str, Any] = dataclasses.field(default_factory=dict)
    hint: str = ""  # added to a message about the columns (which sheet of a workbook)


def _read_table(path: Path, options: ReadOptions) -> ReadTable:
    """Any table file, by suffix: text (compressed or not), Parquet, Arrow/Feather, a workbook."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    suffix = table_suffix(path)
    if suffix in TEXT_SUFFIXES:
        table, dialect = read_text_table(path, options.text_format())
        remembered: dict[str, Any] = {"decimal": dialect.decimal} if dialect.decimal != "." else {}
        if dialect.encoding != "utf-8":
            remembered["encoding"] = dialect.encoding
        if options.na_values:
            remembered["na_values"] = list(options.na_values)
        if dialect.comment is not None:
            remembered["comment"] = dialect.comment
        return ReadTable(table, _line_names(path, dialect), dialect.decimal, list(dialect.notes), remembered)
    if suffix in SHEET_SUFFIXES:
        table, which = read_sheet(path, options.sheet)
        return ReadTable(table, _row_number, notes=[f"read {which}"] if which else [], hint=which)
    try:
        table = read_arrow_file(path) if suffix in ARROW_SUFFIXES else pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read: {reason}") from None
    return ReadTable(table, _row_number)


def _row_number(row: int) -> str:
    return f"row {row + 1} ({FROM_ONE})"


def _line_names(path: Path, dialect: Dialect) -> Callable[[int], str]:
    """How messages name row ``i`` (from 0) of a text table: its line in the file (the
    file's first line is line 1: the first data row is line 2 below a header alone)."""
    lines: list[int] = []

    def where(row: int) -> str:
        if not lines:
            lines.extend(data_lines(path, dialect))
        return f"line {lines[row] if row < len(lines) else row + 2}"

    return where


def _load_table(
    path: Path, target: str | int | None, dtype: DTypeLike | None, check_finite: bool, options: ReadOptions
) -> Dataset:
    read = _read_table(path, options)
    return table_dataset(read, str(path), target, dtype, check_finite, options)


def table_dataset(
    read: ReadTable,
    source: str,
    target: str | int | None,
    dtype: DTypeLike | None,
    check_finite: bool,
    options: ReadOptions,
    numbers: bool = True,
) -> Dataset:
    """A data set from a table read from a file (or a data frame): spreadsheet numbers
    read (``numbers``: a frame's text stays text), one-hot columns encoded, features and
    target picked, missing values handled."""
    encoding = options.one_hot
    keep_text = set(encoding.categories if isinstance(encoding, Encoding) else encoding)
    table, notes = tidy_columns(source, read.table)
    names = list(table.column_names)
    try:
        target_name = _resolve_target(source, names, target) if names else None
    except DataError as exc:
        raise DataError(f"{exc}{f' ({read.hint})' if read.hint else ''}") from None
    fmt = NumberFormat(read.decimal, tuple(options.na_values))
    number_notes: list[tuple[str, str]] = []
    if numbers:  # columns left out are not read: a dropped column may hold anything
        unused = set(options.drop)
        if options.features is not None:
            unused |= set(names) - set(options.features) - {target_name}
        table, number_notes = read_text_numbers(source, table, fmt, read.where, keep_text | unused)
    where = read.where
    if not isinstance(encoding, Encoding):
        if target_name in encoding:
            raise DataError(f"{source}: the target {target_name!r} cannot be one-hot encoded")
        encoding = learn(source, table, [name for name in encoding if name not in options.drop])
    expanded, indicators = apply(source, table, encoding, where)
    # A one-hot column named as a feature, or to drop, stands for its indicator columns.
    features = None if options.features is None else encoding.expand(options.features)
    drop = encoding.expand(options.drop)
    target = None if target_name is None else ColumnName(target_name)
    features, target_name = _pick_columns(source, expanded, table.num_rows, target, features, drop)
    used = {*features, *([] if target_name is None else [target_name])}
    notes += [note for column, note in number_notes if column in used]
    y = None
    if target_name is not None:
        y = _target_column(source, table.column(target_name), target_name, where)
    for name in features:
        if name not in indicators:
            _check_numeric(source, table.column(name), name, where)
    batches, num_rows = table.to_batches(), table.num_rows
    del table, expanded  # the batches hold the table's memory, let go of batch by batch
    X = _fill_rows(source, batches, num_rows, features, indicators, dtype)
    X, y, dropped = _missing_rows(source, X, y, features, target_name, options.dropna, where)
    dataset = Dataset(X, y, features, target_name, dtype=dtype, source=source, check_finite=check_finite)
    dataset.encoding = encoding if encoding.categories else None
    dataset.rows_dropped = dropped
    dataset.notes = tuple([*read.notes, *notes])
    dataset.read_options = dict(read.remembered)
    return dataset


def _fill_rows(
    path: Path | str,
    batches: list[Any],
    num_rows: int,
    features: list[str],
    indicators: dict[str, np.ndarray],
    dtype: DTypeLike | None,
) -> np.ndarray:
    """The features in shared memory, filled a batch of rows at a time (row by row in
    memory, not column by column); each batch is let go once copied, so the table and the
    features are never both whole in memory."""
    import pyarrow as pa

    X = shared_empty((num_rows, len(features)), np.dtype(dtype))
    as_one = not indicators and all(
        batch.schema.field(name).type == pa.float64() for batch in batches[:1] for name in features
    )
    start = 0
    for index, batch in enumerate(batches):
        stop = start + batch.num_rows
        if as_one:  # every feature a float64 column: one conversion of the whole batch
            X[start:stop] = np.asarray(batch.select(features).to_tensor(null_to_nan=True, row_major=True))
        else:
            block = np.empty((batch.num_rows, len(features)), dtype)
            for j, name in enumerate(features):
                if name in indicators:
                    block[:, j] = indicators[name][start:stop]
                else:
                    block[:, j] = _numeric_column(path, batch.column(name), name)
            X[start:stop] = block
        batches[index] = None
        if index % RELEASE_EVERY == 0:
            pa.default_memory_pool().release_unused()
        start = stop
    return X


# Batches copied between two hand-backs of pyarrow's freed memory to the system.
RELEASE_EVERY = 16


def _missing_rows(
    path: Path | str,
    X: np.ndarray,
    y: np.ndarray | None,
    features: list[str],
    target_name: str | None,
    dropna: bool | None,
    where: Callable[[int], str],
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Skip the rows with a missing (empty, NA or NaN) value when ``dropna``, else name the
    first (``None``: skipping is no choice, as when predicting, whose rows must all stay);
    returns the features, the target and how many rows were skipped."""
    missing = np.isnan(X).any(axis=1)
    if y is not None and y.dtype.kind == "f":  # labels read as text or booleans have none
        missing |= np.isnan(y)
    count = int(missing.sum())
    if count == 0:
        return X, y, 0
    if not dropna:
        row = int(np.argmax(missing))
        bad = np.isnan(X[row])
        column = features[int(np.argmax(bad))] if bad.any() else target_name
        others = f" ({count} rows have missing values)" if count > 1 else ""
        raise DataError(
            f"{path}: missing value in column {column!r} at {where(row)}{others}; "
            + ("fill or remove such rows" if dropna is None else f"skip such rows with {option('dropna')}")
        )
    if count == len(missing):
        raise DataError(f"{path}: every row has a missing value")
    kept = shared_empty((len(missing) - count, X.shape[1]), X.dtype)
    kept[:] = X[~missing]
    return kept, None if y is None else y[~missing], count


@dataclass(frozen=True)
class TableFile:
    """A Parquet file whose rows are read when they are needed, by whoever needs them.

    Only the schema is read when it is opened. :meth:`read` reads some rows (row groups
    that hold none are skipped) and checks them as a loaded table is checked. A table
    may stand for a window of the file's rows: ``num_rows`` rows from row ``first``.
    """

    path: str
    features: tuple[str, ...]
    target: str | None
    dtype: str
    num_rows: int
    first: int = 0
    file_rows: int = 0  # the file's row count when opened; reads check it still holds

    def window(self, rows: slice) -> TableFile:
        """The rows of a contiguous slice, still unread."""
        picked = range(self.first, self.first + self.num_rows)[rows]
        if picked.step != 1:
            raise ValueError("a window is a contiguous slice of rows")
        return dataclasses.replace(self, first=picked.start, num_rows=len(picked))

    @classmethod
    def open(
        cls,
        path: Path,
        target: str | int | None,
        features: Sequence[str] | None,
        dtype: DTypeLike | None,
        drop: Sequence[str] = (),
    ) -> TableFile:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read: {reason}") from None
        schema = metadata.schema.to_arrow_schema()
        features, target_name = _pick_columns(path, schema.names, metadata.num_rows, target, features, drop)
        for name in [*features, *([] if target_name is None else [target_name])]:
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
                raise DataError(f"{path}: column {name!r} is not numeric (type {kind}){_fix_text(name)}")
        return cls(
            os.path.abspath(path),
            tuple(features),
            target_name,
            _float_dtype(dtype).str,
            metadata.num_rows,
            file_rows=metadata.num_rows,
        )

    @property
    def columns(self) -> list[str]:
        """The columns read: the features, then the target if any."""
        return [*self.features, *([] if self.target is None else [self.target])]

    def _check_unchanged(self, source: Any) -> None:
        """Refuse a file whose rows or columns differ from those it had when opened."""
        names = set(source.schema_arrow.names)
        if source.metadata.num_rows != self.file_rows or not names.issuperset(self.columns):
            raise DataError(
                f"{self.path}: changed since it was opened, or differs where it is read now "
                "(on a cluster, every node must see the same file)"
            )

    def read(self, rows: slice | np.ndarray | None = None) -> Dataset:
        """The rows at ``rows``: a contiguous slice, or row numbers (from 0, in any order,
        within this table's rows); default all."""
        import pyarrow.parquet as pq

        path, dtype, target = Path(self.path), np.dtype(self.dtype), self.target
        file_rows: range | np.ndarray
        if rows is None or isinstance(rows, slice):
            part = self.window(slice(None) if rows is None else rows)
            file_rows = range(part.first, part.first + part.num_rows)
        else:
            numbers = np.asarray(rows)
            if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
                raise TypeError(f"rows must be a slice or a 1-D array of row numbers, got {numbers.dtype}")
            if numbers.size and not (0 <= numbers.min() and numbers.max() < self.num_rows):
                raise IndexError(f"row numbers must lie in [0, {self.num_rows})")
            file_rows = numbers.astype(np.int64) + self.first
        shape = (len(file_rows), len(self.features))
        X = shared_empty(shape, dtype) if rows is None else np.empty(shape, dtype)
        y = None if target is None else np.empty(len(file_rows), dtype)
        try:
            source = pq.ParquetFile(path)
        except FileNotFoundError:
            raise  # the caller knows best where it was looked for
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
        with source:
            self._check_unchanged(source)
            edges = itertools.accumulate(
                (source.metadata.row_group(group).num_rows for group in range(source.num_row_groups)),
                initial=0,
            )
            for group, places, picked in _rows_by_group(file_rows, itertools.pairwise(edges)):
                table = source.read_row_group(group, columns=self.columns)
                table = (
                    table.slice(picked.start, len(picked))
                    if isinstance(picked, range)
                    else table.take(picked)
                )
                for j, name in enumerate(self.features):
                    X[places, j] = _numeric_column(path, table.column(name), name)
                if y is not None and target is not None:
                    y[places] = _numeric_column(path, table.column(target), target)
        _check_finite(X, self.path, self.features, rows=file_rows)
        if y is not None and target is not None:
            _check_finite(y[:, None], self.path, (target,), what="the target", rows=file_rows)
        return Dataset._trusted(X, y, self.features, self.target, self.path)


def _rows_by_group(
    file_rows: range | np.ndarray, groups: Iterable[tuple[int, int]]
) -> Iterator[tuple[int, slice | np.ndarray, range | np.ndarray]]:
    """For each row group ``(first, last)`` that holds some of ``file_rows``: its index,
    where its rows go among ``file_rows`` (``places``), and which of its rows to pick (a
    range, or indices within the group). Row numbers are sorted once, not scanned per group."""
    if isinstance(file_rows, range):
        for group, (first, last) in enumerate(groups):
            start, stop = max(file_rows.start, first), min(file_rows.stop, last)
            if start < stop:
                places = slice(start - file_rows.start, stop - file_rows.start)
                yield group, places, range(start - first, stop - first)
        return
    order = np.argsort(file_rows, kind="stable")
    ordered = file_rows[order]
    for group, (first, last) in enumerate(groups):
        low, high = np.searchsorted(ordered, (first, last))
        if low < high:
            yield group, order[low:high], ordered[low:high] - first
