"""The validated data set: features, optional labels and names, checked once.

Also the checks every loader shares (numeric, 2-D, finite) and where a memory-mapped
feature matrix lies in its file. Rows in messages are counted from 1, as a person reads
a file: row 1 is the first data row.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.core.shm import is_region
from paragrad.data.frames import column_values, frame_matrix, is_column, is_frame
from paragrad.errors import FROM_ONE, ROWS_FROM_ONE, ConfigError, DataError

if TYPE_CHECKING:
    from paragrad.data.encoding import Encoding
    from paragrad.data.tables import TableFile

# The largest feature or target magnitude accepted. Training squares values and sums the
# squares over all rows (losses, gradients, norms, standardisation): (1e150)^2 = 1e300,
# and a sum of 1e8 such squares, 1e308, is still below float64's largest number, 1.8e308.
# Larger values overflow to infinity, and a model trained on them silently stays zero.
MAX_MAGNITUDE = 1e150
# The same for float32 data, whose products and squares run in float32 (largest 3.4e38):
# (1e15)^2 times the thousands of terms a product sums stays well below it.
MAX_MAGNITUDE_FLOAT32 = 1e15


def magnitude_bound(dtype: np.dtype) -> float:
    """The largest magnitude accepted in data of this float type."""
    return MAX_MAGNITUDE if dtype == np.float64 else MAX_MAGNITUDE_FLOAT32


class Dataset:
    """Features ``X`` (rows x features) and optional labels ``y``, validated once.

    Parameters
    ----------
    X : array-like or data frame, shape (num_rows, num_features)
        Numeric and finite. A data frame (pandas, polars, or any with ``__dataframe__``
        or Arrow's C stream) gives its column names as ``feature_names``; its nullable
        columns' missing values are NaN (an error here, skipped by ``pg.load(frame,
        dropna=True)``), and a text or category column is an error naming it.
    y : array-like, shape (num_rows,), optional
        Numeric and finite targets, or class labels of any kind (numbers, text such as
        ``"yes"``/``"no"``, booleans); ``None`` for data to predict on. Text or boolean
        labels are kept in ``classes`` (sorted) and ``y`` holds each row's position
        among them; :attr:`labels` gives them back. A frame's column (a pandas or
        polars Series) gives its name as ``target_name``.
    feature_names : sequence of str, optional
        One name per column of ``X``.
    target_name : str, optional
        The name of the label column, remembered by models trained on this data.
    dtype : float dtype or None
        ``float64`` or ``float32``; ``None`` (default) keeps float32 features as they are
        (a memory-mapped float32 file stays mapped, never copied), and makes others float64.
    source : str
        What to call the data in error messages (a file name, say).
    check_finite : bool
        Check every feature value (a pass over the data); predict skips it and checks its
        outputs instead, which NaN or infinite features always reach. Features
        memory-mapped from a file are checked later, where they are read: by the workers
        in training's set-up pass, or by :meth:`check` (``unchecked`` says which).

    Notes
    -----
    ``encoding`` holds the categories of the columns ``load(..., one_hot=...)`` encoded,
    and ``rows_dropped`` the rows ``load(..., dropna=True)`` skipped.

    A data set opened with ``load(path, lazy=True)`` has a :class:`TableFile` in
    ``table`` and reads its rows only when they are needed: the Ray engine's workers read
    their own rows; ``X`` and ``y`` read the whole file on first use.
    """

    table: TableFile | None = None
    unchecked: bool = False  # features whose values are still to be checked (see check())
    encoding: Encoding | None = None  # set by paragrad.load (see Notes), as is rows_dropped
    rows_dropped: int = 0
    classes: np.ndarray | None = None
    # What reading the file chose that a user should know (a decimal comma, an encoding,
    # renamed columns), and the reading options a model keeps for files of the same kind.
    notes: tuple[str, ...] = ()
    read_options: dict[str, Any] | None = None

    def __init__(
        self,
        X,
        y=None,
        feature_names: Sequence[str] | None = None,
        target_name: str | None = None,
        *,
        dtype=None,
        source: str = "X",
        check_finite: bool = True,
    ) -> None:
        if is_column(y):  # a frame's column: its name is the target's
            name = getattr(y, "name", None)
            target_name = str(name) if target_name is None and name is not None else target_name
            y = column_values(y)
        if is_frame(X):  # its columns by name, its missing values as NaN
            X, names = frame_matrix(X, source)
            feature_names = names if feature_names is None else feature_names
        dtype = _float_dtype(dtype, like=X, target=y)
        self.source = source
        self.storage = _file_backing(X, dtype)
        self._X = _as_matrix(X, dtype, source)
        self._y, self.classes = (None, None) if y is None else _as_labels(y, self._X.shape[0], dtype, source)
        if feature_names is not None:
            feature_names = tuple(str(name) for name in feature_names)
            if len(feature_names) != self.X.shape[1]:
                raise DataError(
                    f"{source}: {len(feature_names)} feature names for {self.X.shape[1]} feature columns"
                )
        self.feature_names = feature_names
        self.target_name = target_name
        # Features memory-mapped from a file (not a shared region, which was just written
        # here) are checked by the workers as they first read their rows in training,
        # or by check(): a pass here would read the whole file once more.
        self.unchecked = check_finite and self.storage is not None and not is_region(self.storage.path)
        if check_finite and not self.unchecked:
            _check_finite(self.X, source, feature_names)
        if self.y is not None:
            _check_finite(self.y[:, None], source, (target_name or "y",), what="the target")

    @classmethod
    def _trusted(cls, X, y, feature_names, target_name, source, classes=None) -> Dataset:
        """Build a dataset from arrays already validated (a slice or a type change)."""
        ds = cls.__new__(cls)
        ds._X, ds._y, ds.source, ds.storage = X, y, source, _file_backing(X, X.dtype)
        ds.feature_names, ds.target_name, ds.classes = feature_names, target_name, classes
        return ds

    @classmethod
    def _lazy(cls, table: TableFile) -> Dataset:
        """A data set whose rows stay in ``table`` until they are needed."""
        ds = cls.__new__(cls)
        ds._X, ds._y, ds.source, ds.storage, ds.table = None, None, table.path, None, table
        ds.feature_names, ds.target_name = table.features, table.target
        return ds

    @property
    def X(self):
        """The features (rows x features), read from the file first for a lazy data set."""
        if self._X is None:
            self._read_whole()
        return self._X

    @property
    def y(self) -> np.ndarray | None:
        """The labels, or ``None``."""
        if self._X is None and self.table.target is not None:
            self._read_whole()
        return self._y

    def _read_whole(self) -> None:
        whole = self.table.read()
        self._X, self._y, self.storage = whole.X, whole.y, whole.storage

    def check(self) -> None:
        """Check features not yet checked (a mapped file's) here: a DataError names the
        first NaN, infinite or too large value."""
        if self.unchecked:
            _check_finite(self.X, self.source, self.feature_names)
            self.unchecked = False

    @property
    def labels(self) -> np.ndarray | None:
        """The labels as given: text or booleans for such a target, else ``y`` itself."""
        y = self.y
        if y is None or self.classes is None:
            return y
        return self.classes[y.astype(np.intp)]

    @property
    def has_labels(self) -> bool:
        """Whether there are labels, without reading a lazy data set."""
        return self.table.target is not None if self._X is None else self._y is not None

    @property
    def sparse(self) -> bool:
        """Whether the features are a scipy.sparse CSR matrix."""
        return self._X is not None and is_sparse(self._X)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self._X is None else self._X.shape[0]

    @property
    def num_features(self) -> int:
        return len(self.table.features) if self._X is None else self._X.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.table.dtype) if self._X is None else self._X.dtype

    def take(self, rows) -> Dataset:
        """The rows selected by a slice or an index array (a view for a slice; for a lazy
        data set, a slice stays unread)."""
        if self._X is None:
            if isinstance(rows, slice) and rows.step in (None, 1):
                return Dataset._lazy(self.table.window(rows))
            return self.table.read(np.arange(self.num_rows)[rows])
        y = None if self.y is None else self.y[rows]
        names, target = self.feature_names, self.target_name
        part = Dataset._trusted(self.X[rows], y, names, target, self.source, self.classes)
        part.unchecked = self.unchecked
        return part

    def features_only(self) -> Dataset:
        """The same rows without labels or names: what predicting needs."""
        if self._X is None:
            return Dataset._lazy(dataclasses.replace(self.table, target=None))
        return Dataset._trusted(self._X, None, None, None, self.source)

    def astype(self, dtype) -> Dataset:
        """The same data in another float type; no copy when it already has it."""
        dtype = _float_dtype(dtype)
        if dtype == self.dtype:
            return self
        self.check()  # the conversion reads every value anyway
        if self._X is None:
            return Dataset._lazy(dataclasses.replace(self.table, dtype=dtype.str))
        y = None if self.y is None else self.y.astype(dtype)
        X = self.X.astype(dtype)
        if dtype == np.float32:  # values fine in float64 may be too large in float32
            _check_finite(X, self.source, self.feature_names)
            if y is not None:
                _check_finite(y[:, None], self.source, (self.target_name or "y",), what="the target")
        return Dataset._trusted(X, y, self.feature_names, self.target_name, self.source, self.classes)

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict:
        """A copy's arrays (deep copies, pickles) lie in no file: it must not claim one."""
        return {**self.__dict__, "storage": None}

    def __repr__(self) -> str:
        labels = "labels" if self.has_labels else "no labels"
        return f"Dataset({self.num_rows} rows x {self.num_features} features, {labels})"


@dataclass(frozen=True)
class FileBacking:
    """Where a memory-mapped feature matrix lies in its file, so workers can map it too.

    ``inode`` tells whether ``path`` still names that file: a shared region's path is its
    creator's descriptor number, which may name another region once released.
    """

    path: str
    offset: int
    inode: int = 0

    def is_current(self) -> bool:
        """Whether the path still names the file the matrix lies in."""
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False


def _file_backing(X, dtype) -> FileBacking | None:
    """The file and offset of ``X`` when it is a C-ordered view into an ``np.memmap``."""
    mapped = X
    while mapped is not None and not isinstance(mapped, np.memmap):
        mapped = getattr(mapped, "base", None)
    if not isinstance(mapped, np.memmap) or mapped.filename is None or mapped._mmap is None:
        return None
    if not isinstance(X, np.ndarray) or X.dtype != dtype or X.ndim != 2 or not X.flags.c_contiguous:
        return None
    # A slice of a memmap keeps its parent's offset: locate X inside the mapping instead.
    mapping_start = mapped.offset - mapped.offset % mmap.ALLOCATIONGRANULARITY
    offset = mapping_start + X.ctypes.data - np.frombuffer(mapped._mmap, np.uint8).ctypes.data
    if offset < 0 or offset + X.nbytes > os.path.getsize(mapped.filename):
        return None
    return FileBacking(str(mapped.filename), int(offset), os.stat(mapped.filename).st_ino)


def _float_dtype(dtype, like=None, target=None) -> np.dtype:
    """The float type to use; ``None`` keeps float32 features as they are (with their
    ``target``, when float32 holds its every value exactly: class codes, float32 values)
    and makes the rest float64."""
    if dtype is None:
        kind = getattr(like, "dtype", None)
        if kind != np.float32 or not _fits_float32(target):
            return np.dtype(np.float64)
        return np.dtype(np.float32)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _fits_float32(target) -> bool:
    """Whether float32 holds every value of a target exactly (None, text and booleans do:
    they become class codes); a float64 target of other values keeps the data float64."""
    if target is None:
        return True
    values = np.asarray(target)
    if values.dtype.kind not in "iuf" or values.dtype == np.float32:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(values.astype(np.float32), values))


def is_sparse(X) -> bool:
    """Whether ``X`` is a scipy.sparse matrix (checked without importing scipy)."""
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


def _as_matrix(X, dtype, source):
    if is_sparse(X):
        return _as_csr(X, dtype, source)
    X = np.asarray(X)
    if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating) or X.dtype == bool):
        raise DataError(f"{source}: features must be real numbers, got values of type {X.dtype}")
    if X.ndim != 2:
        raise DataError(f"{source}: features must be a 2-D array (rows x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: no data rows")
    if X.shape[1] == 0:
        raise DataError(f"{source}: no feature columns")
    return np.ascontiguousarray(X, dtype=dtype)


def _as_labels(y, num_rows, dtype, source) -> tuple[np.ndarray, np.ndarray | None]:
    """The target as floats, and for text or boolean labels their sorted distinct values
    (the floats are then each row's position among them)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: the target must be 1-D, got shape {y.shape}")
    if len(y) != num_rows:
        raise DataError(f"{source}: {num_rows} rows of features but {len(y)} target values")
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating):
        return np.ascontiguousarray(y, dtype=dtype), None
    if y.dtype.kind not in "bUSO":
        raise DataError(f"{source}: the target must be numbers, text or booleans, got type {y.dtype}")
    y = _plain_labels(y, source)
    classes, codes = np.unique(y, return_inverse=True)
    return np.ascontiguousarray(codes.reshape(-1), dtype=dtype), classes


def _plain_labels(y: np.ndarray, source: str) -> np.ndarray:
    """Text or boolean labels as a plain numpy array (no Python objects); a missing label
    is an error naming its row."""
    if y.dtype.kind != "O":
        return y
    missing = [row for row, value in enumerate(y.tolist()) if value is None or value != value]
    if missing:
        first = missing[0] + 1
        raise DataError(
            f"{source}: {len(missing)} missing label(s) in the target; first at row {first} ({FROM_ONE})"
        )
    if all(isinstance(value, (bool, np.bool_)) for value in y.tolist()):
        return y.astype(bool)
    return y.astype(str)


def _as_csr(X, dtype, source):
    """A CSR matrix with sorted indices in ``dtype``; shape and type checked like arrays."""
    if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating) or X.dtype == bool):
        raise DataError(f"{source}: features must be real numbers, got values of type {X.dtype}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: no data rows")
    if X.shape[1] == 0:
        raise DataError(f"{source}: no feature columns")
    X = X.tocsr().astype(dtype, copy=False)
    X.sort_indices()
    return X


def _check_finite(values, source, names, what="features", rows: Sequence[int] | None = None) -> None:
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


def within_bounds(values) -> bool:
    """Whether every feature value is finite and below its type's bound, in one streaming
    pass (which :func:`_check_finite` then runs again to name the first bad value)."""
    if is_sparse(values):
        return _within_bound(values.data)
    block, mapped = _block_rows(values), _memmap_of(values)
    return all(
        _within_bound(values[start : start + block], mapped) for start in range(0, values.shape[0], block)
    )


def _block_rows(values) -> int:
    """Rows per block of a streaming pass (a million values): no rows x features temporary."""
    return max(1, (1 << 20) // max(1, values.shape[1]))


def _within_bound(part, mapped: np.memmap | None = None) -> bool:
    """Whether every value of ``part`` is finite and below the bound, without a temporary
    (a NaN makes the extremes NaN, which compare false). ``part`` of a memory-mapped
    file (``mapped``) is let go once read: its pages stay in the page cache, but no
    longer count in this process's memory, which so stays O(block) for any file."""
    bound = magnitude_bound(part.dtype)
    within = part.size == 0 or (-bound < float(part.min()) and float(part.max()) < bound)
    if mapped is not None and part.size:
        _let_go(part, mapped)
    return within


def _memmap_of(X) -> np.memmap | None:
    """The ``np.memmap`` of a file that ``X`` views, if any."""
    while X is not None and not (isinstance(X, np.memmap) and X._mmap is not None):
        X = getattr(X, "base", None)
    return X if isinstance(X, np.memmap) and X.filename is not None else None


def _let_go(part: np.ndarray, mapped: np.memmap) -> None:
    """Drop this process's mapping of the whole pages under ``part`` (a contiguous view
    into ``mapped``); reading them again maps them again from the page cache."""
    buffer = mapped._mmap
    assert buffer is not None
    start = part.ctypes.data - np.frombuffer(buffer, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (start + part.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < last <= len(buffer):
        buffer.madvise(mmap.MADV_DONTNEED, first, last - first)


def _small(values) -> np.ndarray:
    """Whether each value is finite and below its type's bound (NaN is not)."""
    return np.abs(values) < magnitude_bound(values.dtype)


def _too_large(source, what, row: int, column: str, value, count: int, dtype: np.dtype) -> DataError:
    return DataError(
        f"{source}: {count} value(s) in {what} too large to square in {np.dtype(dtype).name} (magnitude "
        f"{magnitude_bound(dtype):.0e} or more); first at row {row}, {column} ({float(value):.3g}): "
        f"rescale the column; {ROWS_FROM_ONE}"
    )


def _first_bad(values, block: int, rows, is_bad) -> tuple[int, int, int]:
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
