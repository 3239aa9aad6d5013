"""A table's columns as tools write them: the header made usable (an empty last column,
repeated names), text cells that hold numbers read as numbers, the target and feature
columns picked and checked, and the messages that say how to fix a column.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.data.encoding import FEW_CATEGORIES
from paragrad.data.numbers import NumberFormat, looks_numeric, parse_text, unreadable_numbers
from paragrad.errors import FROM_ONE, DataError, DataWarning, caller_stacklevel, option


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")


def _pick_columns(
    path: Path | str,
    names: list[str],
    num_rows: int,
    target: str | int | None,
    features: Sequence[str] | None,
    drop: Sequence[str] = (),
) -> tuple[list[str], str | None]:
    """The feature columns and the target column of a table, checked against its header."""
    if not names:
        raise DataError(f"{path}: the file is empty")
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{path}: column {duplicate!r} appears more than once in the header")
    target_name = _resolve_target(path, names, target)
    unknown = [name for name in drop if name not in names]
    if unknown:
        raise DataError(
            f"{path}: cannot drop {', '.join(map(repr, unknown))} ({option('drop', list(drop))}): "
            f"no such column (columns: {_shown(names)})"
        )
    if target_name in drop:
        raise DataError(f"{path}: column {target_name!r} cannot be both dropped and the target")
    if features is None:
        features = [name for name in names if name != target_name and name not in drop]
    else:
        missing = [name for name in features if name not in names]
        if missing:
            raise DataError(
                f"{path}: missing feature column(s) {', '.join(map(repr, missing))} "
                f"(columns: {_shown(names)})"
            )
        both = [name for name in features if name in drop]
        if both:
            raise DataError(f"{path}: column {both[0]!r} cannot be both a feature and dropped")
    if num_rows == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target_name!r}")
    if target_name in features:
        raise DataError(f"{path}: column {target_name!r} cannot be both a feature and the target")
    return list(features), target_name


def tidy_columns(source: str, table: Any) -> tuple[Any, list[str]]:
    """A table's header as tools write it made usable: an empty, unnamed last column (a
    delimiter at the end of every line) dropped, and repeated names numbered as pandas
    numbers them (``a``, ``a.1``, ``a.2``), with a warning naming them."""
    notes = []
    names = list(table.column_names)
    if (
        len(names) > 1
        and names[-1].strip() == ""
        and table.column(len(names) - 1).null_count == table.num_rows
    ):
        table = table.remove_column(len(names) - 1)
        names.pop()
        notes.append("dropped the empty, unnamed last column (a delimiter at the end of each line)")
    if len(set(names)) != len(names):
        taken, renamed, new_names = set(names), [], []
        counts: dict[str, int] = {}
        for name in names:
            if name in counts:
                number = counts[name]
                while f"{name}.{number}" in taken:
                    number += 1
                counts[name] = number + 1
                new = f"{name}.{number}"
                taken.add(new)
                renamed.append(f"{name!r} to {new!r}")
                new_names.append(new)
            else:
                counts[name] = 1
                new_names.append(name)
        table = table.rename_columns(new_names)
        message = f"{source}: repeated column names renamed: {', '.join(renamed)}"
        warnings.warn(message, DataWarning, stacklevel=caller_stacklevel())
    return table, notes


def read_text_numbers(
    source: str, table: Any, fmt: NumberFormat, where: Callable[[int], str], keep_text: set[str]
) -> tuple[Any, list[tuple[str, str]]]:
    """The text columns of ``table`` that hold numbers as spreadsheets write them, as
    float64 columns; the notes on what was read, per column. Columns in ``keep_text``
    (to one-hot encode, or not used) stay as they are; a column of numbers in a format not read is
    an error naming the format and the option that reads it."""
    import pyarrow as pa

    notes, missing = [], set(fmt.null_values())
    for index, name in enumerate(table.column_names):
        column = table.column(index)
        if name in keep_text or not (
            pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        ):
            continue
        values = [None if value in missing else value for value in column.to_pylist()]
        parsed = parse_text(values, fmt)
        if parsed is None:
            if looks_numeric(values, fmt):
                raise unreadable_numbers(source, name, values, fmt, where)
            continue
        numbers, kinds = parsed
        table = table.set_column(index, name, pa.array(numbers, pa.float64(), from_pandas=True))
        if kinds:
            notes.append((name, f"column {name!r}: read {' and '.join(kinds)}"))
    return table, notes


_INDEX = re.compile(r"-?[0-9]+", re.ASCII)


class ColumnName(str):
    """A target that is a column name only, never read as an index (a model's own)."""


def _resolve_target(path: Path | str, names: list[str], target: str | int | None) -> str | None:
    """The target column's name. An int is an index; a text is a name first, then, when
    no column has that name, a text of digits is an index; ``"#3"`` is always index 3."""
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return _target_at(path, names, int(target))
    if isinstance(target, str) and not isinstance(target, ColumnName):
        if target.startswith("#") and _INDEX.fullmatch(target[1:]):
            return _target_at(path, names, int(target[1:]))
        if target not in names and _INDEX.fullmatch(target):
            index = int(target)
            if not -len(names) <= index < len(names):
                raise DataError(
                    f"{path}: target column {target!r} not found: no column has that name, and index "
                    f"{index} is out of range ({len(names)} columns)"
                )
            return names[index]
    if target not in names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise DataError(f"{path}: target column {str(target)!r} not found (columns: {shown})")
    return str(target)


def _target_at(path: Path | str, names: list[str], index: int) -> str:
    if not -len(names) <= index < len(names):
        raise DataError(f"{path}: target column index {index} out of range ({len(names)} columns)")
    return names[index]


def _fix_text(name: str, feature: bool = True, values: list[Any] | None = None) -> str:
    """How to fix a text column, for messages: one-hot encode it when its values look like
    categories (repeated, not numbers), else leave it out."""
    if not feature:
        return ""
    if values is not None and not looks_like_categories(values):
        return (
            f": it is not numbers, nor categories (mostly distinct values): leave it out with "
            f"{option('drop', [name])}"
        )
    return f": drop it with {option('drop', [name])} or encode it with {option('one_hot', [name])}"


def looks_like_categories(values: list[Any]) -> bool:
    """Whether text values repeat enough to be categories: at most half of them distinct
    (or a few)."""
    present = [value for value in values if value is not None]
    return len(set(present)) <= max(FEW_CATEGORIES, len(present) // 2)


def _target_column(path: Path | str, column: Any, name: str, where: Callable[[int], str]) -> np.ndarray:
    """The target column: numbers as float64 (nulls as NaN); text or booleans as they are,
    for class labels (a missing one is an error naming its row)."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind)):
        return _numeric_column(path, column, name, where, feature=False)
    if column.null_count:
        row = next(row for row, value in enumerate(column.to_pylist()) if value is None)
        count = column.null_count
        raise DataError(f"{path}: column {name!r} has {count} missing label(s); first at {where(row)}")
    return np.asarray(column.to_pylist(), dtype=bool if pa.types.is_boolean(kind) else str)


def _numeric_column(
    path: Path | str, column: Any, name: str, where: Callable[[int], str] | None = None, feature: bool = True
) -> np.ndarray:
    """One table column as float64, nulls as NaN; a clear error for text or dates."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _check_numeric(path, column, name, where, feature)
    return float_values(pc.cast(column, pa.float64(), safe=False))


def arrow_array(values: np.ndarray) -> Any:
    """A 1-D numpy array of numbers, booleans, text or bytes as the Arrow array pyarrow
    would make of it, built on its buffers (pyarrow's own conversion imports pandas)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))  # Arrow's order
    count = len(values)
    if values.dtype.kind == "b":
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), count, [None, pa.py_buffer(bits)])
    if values.dtype.kind in "iuf":
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), count, [None, pa.py_buffer(values)])
    if values.dtype.kind == "S":
        return _variable_width(pa.binary(), values.tolist())
    return _variable_width(pa.string(), [str(value).encode() for value in values.tolist()])


def _variable_width(kind: Any, items: list[bytes], piece_bytes: int = 2**31 - 1) -> Any:
    """Text or bytes as Arrow's ``kind`` (32-bit offsets): one array, or pieces of at most
    ``piece_bytes`` each past that (a chunked array of the same type), as pyarrow splits them."""
    import pyarrow as pa

    ends = np.cumsum([len(item) for item in items], dtype=np.int64)
    pieces: list[Any] = []
    first = 0
    while first < len(items) or not pieces:
        before = int(ends[first - 1]) if first else 0
        last = max(int(np.searchsorted(ends, before + piece_bytes, side="right")), first + 1)
        last = min(last, len(items))
        offsets = np.r_[0, ends[first:last] - before].astype(np.int32)
        data = b"".join(items[first:last])
        pieces.append(
            pa.Array.from_buffers(kind, last - first, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        )
        first = last
    return pieces[0] if len(pieces) == 1 else pa.chunked_array(pieces, type=kind)


def float_values(column: Any) -> np.ndarray:
    """A float64 Arrow column (chunked or not) as numpy, nulls as NaN: a read-only view of
    a single chunk without nulls (Arrow's memory, as ``to_numpy`` gives it), else a copy.
    Read from the column's buffers, because pyarrow's ``to_numpy`` imports pandas (0.2 s of
    a first call in a fresh process)."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    if len(chunks) == 1 and not chunks[0].null_count and len(chunks[0]):
        chunk = chunks[0]
        view = np.frombuffer(chunk.buffers()[1], np.float64, len(chunk), chunk.offset * 8)
        view.flags.writeable = False
        return view
    values = np.empty(len(column))
    at = 0
    for chunk in chunks:
        count = len(chunk)
        if count:
            validity, data = chunk.buffers()[:2]
            values[at : at + count] = np.frombuffer(data, np.float64, count, chunk.offset * 8)
            if chunk.null_count:
                bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
                values[at : at + count][bits[chunk.offset : chunk.offset + count] == 0] = np.nan
        at += count
    return values


def _check_numeric(
    path: Path | str, column: Any, name: str, where: Callable[[int], str] | None = None, feature: bool = True
) -> None:
    """Nothing for a column of numbers or booleans; a clear error for text or dates."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return
    if pa.types.is_null(kind):
        raise DataError(f"{path}: column {name!r} is empty (no values)")
    where = where or (lambda row: f"row {row + 1} ({FROM_ONE})")
    values = column.to_pylist()
    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: column {name!r} is not numeric ({where(row)} holds {str(value)[:40]!r})"
                f"{_fix_text(name, feature, values)}"
            ) from None
    raise DataError(f"{path}: column {name!r} is not numeric (type {kind}){_fix_text(name, feature)}")
