"""The checks every loader shares: feature and target values finite, and small enough
that training can square and sum them.

The checks stream over the rows in blocks (no rows x features temporary) and let go of
the pages of a memory-mapped file once read, so that checking any file takes O(block)
memory. An error names the first bad value by its row, counted from 1, and column.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from paragrad.core.shards import default_workers
from paragrad.errors import ROWS_FROM_ONE, DataError

# The largest feature or target magnitude accepted. Training squares values and sums the
# squares over all rows (losses, gradients, norms, standardisation): (1e150)^2 = 1e300,
# and a sum of 1e8 such squares, 1e308, is still below float64's largest number, 1.8e308.
# Larger values overflow to infinity, and a model trained on them silently stays zero.
MAX_MAGNITUDE = 1e150
# The same for float32 data, whose products and squares run in float32 (largest 3.4e38):
# (1e15)^2 times the thousands of terms a product sums stays well below it.
MAX_MAGNITUDE_FLOAT32 = 1e15

# A feature matrix: a dense 2-D array or a scipy.sparse matrix (scipy has no type
# information, so this is Any; :func:`is_sparse` tells the two apart).
Features = Any


def magnitude_bound(dtype: np.dtype) -> float:
    """The largest magnitude accepted in data of this float type."""
    return MAX_MAGNITUDE if dtype == np.float64 else MAX_MAGNITUDE_FLOAT32


def is_sparse(X: Features) -> bool:
    """Whether ``X`` is a scipy.sparse matrix (checked without importing scipy)."""
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


def take_rows(array: Any, rows: slice | np.ndarray) -> Any:
    """``array[rows]``: a view for a slice; for row numbers, dense rows gathered by
    :func:`numpy.take` (row by row, about twice as fast as fancy indexing on wide rows)."""
    if isinstance(rows, slice) or is_sparse(array):
        return array[rows]
    return np.take(array, rows, axis=0)


def _check_finite(
    values: Features,
    source: str,
    names: Sequence[str] | None,
    what: str = "features",
    rows: Sequence[int] | np.ndarray | None = None,
) -> None:
    """Raise a DataError naming the first NaN, infinite or too large value (see
    :data:`MAX_MAGNITUDE`); ``rows`` maps the array's rows to the file's (counted from 0)
    when the array holds only some of them."""
    if within_bounds(values):
        return
    if is_sparse(values):
        data = values.data
        finite = np.isfinite(data)
        position = int(np.argmin(finite) if not finite.all() else np.argmin(_small(data)))
        row = int(np.searchsorted(values.indptr, position, side="right")) - 1
        column = values.indices[position]
        name = repr(names[column]) if names is not None else f"column {column}"
        if not finite.all():
            raise DataError(
                f"{source}: NaN or infinite value in {what}; first at row {row + 1}, {name}; {ROWS_FROM_ONE}"
            )
        count = int((~_small(data)).sum())
        raise _too_large(source, what, row + 1, name, data[position], count, data.dtype)
    block = _block_rows(values)
    scope = "" if rows is None else " of the rows read"
    count, row, col = _first_bad(values, block, rows, lambda part: ~np.isfinite(part))
    if count:
        kind = "NaN or missing" if np.isnan(values[row, col]) else "infinite"
        column = repr(names[col]) if names is not None else f"column {col}"
        file_row = row if rows is None else int(rows[row])
        raise DataError(
            f"{source}: {count} NaN, missing or infinite value(s) in {what}{scope}; "
            f"first at row {file_row + 1}, {column!s} ({kind}); {ROWS_FROM_ONE}"
        )
    count, row, col = _first_bad(values, block, rows, lambda part: ~_small(part))
    column = repr(names[col]) if names is not None else f"column {col}"
    file_row = row if rows is None else int(rows[row])
    raise _too_large(source, f"{what}{scope}", file_row + 1, column, values[row, col], count, values.dtype)


# Arrays in memory from this size on are checked by a thread a core (1e6 x 100 float64:
# 47-52 ms on 2 cores where one thread took 74-84), after their sum of squares.
PARALLEL_CHECK_BYTES = 32 << 20


def within_bounds(values: Features) -> bool:
    """Whether every feature value is finite and below its type's bound, in one streaming
    pass (which :func:`_check_finite` then runs again to name the first bad value); a large
    array in memory first by its sum of squares (:func:`_squares_within`)."""
    if is_sparse(values):
        return _within_bound(values.data)
    block, mapped = _block_rows(values), _memmap_of(values)
    if values.shape[0] <= block:  # one block: no loop to set up
        return _within_bound(values, mapped)

    def check(start: int) -> bool:
        return _within_bound(values[start : start + block], mapped)

    starts = range(0, values.shape[0], block)
    parts = min(default_workers(), values.nbytes // PARALLEL_CHECK_BYTES)
    if mapped is None and parts > 1:  # a large array in memory
        if _squares_within(values):
            return True
        from concurrent.futures import ThreadPoolExecutor  # not on import: it is seldom needed

        with ThreadPoolExecutor(parts) as pool:  # numpy lets go of Python's lock while it reduces
            return all(pool.map(check, starts))
    return all(map(check, starts))


def _squares_within(values: np.ndarray) -> bool:
    """Whether the sum of the squares of all the values is finite and below the bound's
    square, so that every value is finite and within the bound: one BLAS product, which
    reads the array once on every core (1e6 x 100 float64: 26 ms on 2 cores, where the
    two reductions of each block took 52). False proves nothing: a NaN, or squares whose
    sum overflows, which the reductions then tell apart."""
    if values.dtype not in (np.float32, np.float64) or not values.flags.c_contiguous:
        return False
    flat = values.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.dot(flat, flat))
    return total < magnitude_bound(values.dtype) ** 2


def _block_rows(values: Features) -> int:
    """Rows per block of a streaming pass (a million values): no rows x features temporary."""
    return max(1, (1 << 20) // max(1, values.shape[1]))


def _within_bound(part: np.ndarray, mapped: np.memmap | None = None) -> bool:
    """Whether every value of ``part`` is finite and below the bound, without a temporary
    (a NaN makes the extremes NaN, which compare false). ``part`` of a memory-mapped
    file (``mapped``) is let go once read: its pages stay in the page cache, but no
    longer count in this process's memory, which so stays O(block) for any file."""
    bound = magnitude_bound(part.dtype)
    within = part.size == 0 or (-bound < float(part.min()) and float(part.max()) < bound)
    if mapped is not None and part.size:
        _let_go(part, mapped)
    return within


def _mapping(mapped: np.memmap) -> mmap.mmap | None:
    """The ``mmap`` under ``mapped`` (None for a view that owns no mapping); a private
    attribute of numpy's, so its type information does not list it."""
    return getattr(mapped, "_mmap", None)


def _memmap_of(X: Features) -> np.memmap | None:
    """The ``np.memmap`` of a file that ``X`` views, if any."""
    while X is not None and not (isinstance(X, np.memmap) and _mapping(X) is not None):
        X = getattr(X, "base", None)
    return X if isinstance(X, np.memmap) and X.filename is not None else None


def _let_go(part: np.ndarray, mapped: np.memmap) -> None:
    """Drop this process's mapping of the whole pages under ``part`` (a contiguous view
    into ``mapped``); reading them again maps them again from the page cache."""
    buffer = _mapping(mapped)
    assert buffer is not None
    start = part.ctypes.data - np.frombuffer(buffer, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (start + part.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < last <= len(buffer):
        buffer.madvise(mmap.MADV_DONTNEED, first, last - first)


def _small(values: np.ndarray) -> np.ndarray:
    """Whether each value is finite and below its type's bound (NaN is not)."""
    return np.abs(values) < magnitude_bound(values.dtype)


def _too_large(
    source: str, what: str, row: int, column: str, value: float, count: int, dtype: np.dtype
) -> DataError:
    return DataError(
        f"{source}: {count} value(s) in {what} too large to square in {np.dtype(dtype).name} (magnitude "
        f"{magnitude_bound(dtype):.0e} or more); first at row {row}, {column} ({float(value):.3g}): "
        f"rescale the column; {ROWS_FROM_ONE}"
    )


def _first_bad(
    values: np.ndarray,
    block: int,
    rows: Sequence[int] | np.ndarray | None,
    is_bad: Callable[[np.ndarray], np.ndarray],
) -> tuple[int, int, int]:
    """How many values ``is_bad`` marks, and the array row and column of the first of
    them in the file's order, found block by block (no n x d temporary)."""
    count, first = 0, None  # first: (file row, array row, column)
    for start in range(0, values.shape[0], block):
        bad = is_bad(values[start : start + block])
        bad_rows = np.flatnonzero(bad.any(axis=1))
        if not len(bad_rows):
            continue
        count += int(bad.sum())
        if rows is None:
            pick = 0
            file_row = start + int(bad_rows[0])
        else:
            file_rows = np.asarray(rows[start : start + block])[bad_rows]
            pick = int(np.argmin(file_rows))
            file_row = int(file_rows[pick])
        if first is None or file_row < first[0]:
            first = (file_row, start + int(bad_rows[pick]), int(np.argmax(bad[bad_rows[pick]])))
    if first is None:
        return 0, 0, 0
    return count, first[1], first[2]
