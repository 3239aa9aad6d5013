"""The validated data set: features, optional labels and names, checked once.

Also the conversions every loader shares (numeric, 2-D; :mod:`paragrad.data.checks`
checks the values) and where a memory-mapped feature matrix lies in its file. Rows in
messages are counted from 1, as a person reads a file: row 1 is the first data row.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike

from paragrad.core.shm import is_region
from paragrad.data.checks import Features, _check_finite, _mapping, is_sparse
from paragrad.data.frames import column_values, frame_matrix, is_column, is_frame
from paragrad.errors import FROM_ONE, ConfigError, DataError

if TYPE_CHECKING:
    from paragrad.data.encoding import Encoding
    from paragrad.data.tables import TableFile


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
        X: Any,
        y: Any = None,
        feature_names: Sequence[str] | None = None,
        target_name: str | None = None,
        *,
        dtype: DTypeLike | None = None,
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
        self._X: Features | None = _as_matrix(X, dtype, source)
        self._y: np.ndarray | None
        self._y, self.classes = (None, None) if y is None else _as_labels(y, self._X.shape[0], dtype, source)
        given = None if feature_names is None else tuple(str(name) for name in feature_names)
        if given is not None and len(given) != self.X.shape[1]:
            raise DataError(f"{source}: {len(given)} feature names for {self.X.shape[1]} feature columns")
        self.feature_names: tuple[str, ...] | None = given
        self.target_name = target_name
        # Features memory-mapped from a file (not a shared region, which was just written
        # here) are checked by the workers as they first read their rows in training,
        # or by check(): a pass here would read the whole file once more.
        self.unchecked = check_finite and self.storage is not None and not is_region(self.storage.path)
        if check_finite and not self.unchecked:
            _check_finite(self.X, source, given)
        if self.y is not None:
            _check_finite(self.y[:, None], source, (target_name or "y",), what="the target")

    @classmethod
    def _trusted(
        cls,
        X: Features,
        y: np.ndarray | None,
        feature_names: tuple[str, ...] | None,
        target_name: str | None,
        source: str,
        classes: np.ndarray | None = None,
    ) -> Dataset:
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
    def X(self) -> Features:
        """The features (rows x features), read from the file first for a lazy data set."""
        if self._X is None:
            self._read_whole()
        return self._X

    @property
    def y(self) -> np.ndarray | None:
        """The labels, or ``None``."""
        if self._X is None and self._unread().target is not None:
            self._read_whole()
        return self._y

    def _unread(self) -> TableFile:
        """The table of a lazy data set, whose rows are not read yet (``_X`` is None)."""
        assert self.table is not None, "a data set without features in memory has a table"
        return self.table

    def _read_whole(self) -> None:
        whole = self._unread().read()
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
        return self._unread().target is not None if self._X is None else self._y is not None

    @property
    def sparse(self) -> bool:
        """Whether the features are a scipy.sparse CSR matrix."""
        return self._X is not None and is_sparse(self._X)

    @property
    def num_rows(self) -> int:
        return self._unread().num_rows if self._X is None else int(self._X.shape[0])

    @property
    def num_features(self) -> int:
        return len(self._unread().features) if self._X is None else int(self._X.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._unread().dtype) if self._X is None else np.dtype(self._X.dtype)

    def take(self, rows: slice | np.ndarray) -> Dataset:
        """The rows selected by a slice or an index array (a view for a slice; for a lazy
        data set, a slice stays unread)."""
        if self._X is None:
            if isinstance(rows, slice) and rows.step in (None, 1):
                return Dataset._lazy(self._unread().window(rows))
            return self._unread().read(np.arange(self.num_rows)[rows])
        y = None if self.y is None else self.y[rows]
        names, target = self.feature_names, self.target_name
        part = Dataset._trusted(self.X[rows], y, names, target, self.source, self.classes)
        part.unchecked = self.unchecked
        return part

    def features_only(self) -> Dataset:
        """The same rows without labels or names: what predicting needs."""
        if self._X is None:
            return Dataset._lazy(dataclasses.replace(self._unread(), target=None))
        return Dataset._trusted(self._X, None, None, None, self.source)

    def astype(self, dtype: DTypeLike | None) -> Dataset:
        """The same data in another float type; no copy when it already has it."""
        dtype = _float_dtype(dtype)
        if dtype == self.dtype:
            return self
        self.check()  # the conversion reads every value anyway
        if self._X is None:
            return Dataset._lazy(dataclasses.replace(self._unread(), dtype=dtype.str))
        y = None if self.y is None else self.y.astype(dtype)
        X = self.X.astype(dtype)
        if dtype == np.float32:  # values fine in float64 may be too large in float32
            _check_finite(X, self.source, self.feature_names)
            if y is not None:
                _check_finite(y[:, None], self.source, (self.target_name or "y",), what="the target")
        return Dataset._trusted(X, y, self.feature_names, self.target_name, self.source, self.classes)

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict[str, Any]:
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


def _file_backing(X: Features, dtype: np.dtype) -> FileBacking | None:
    """The file and offset of ``X`` when it is a C-ordered view into an ``np.memmap``."""
    mapped = X
    while mapped is not None and not isinstance(mapped, np.memmap):
        mapped = getattr(mapped, "base", None)
    buffer = _mapping(mapped) if isinstance(mapped, np.memmap) else None
    if not isinstance(mapped, np.memmap) or mapped.filename is None or buffer is None:
        return None
    if not isinstance(X, np.ndarray) or X.dtype != dtype or X.ndim != 2 or not X.flags.c_contiguous:
        return None
    # A slice of a memmap keeps its parent's offset: locate X inside the mapping instead.
    mapping_start = mapped.offset - mapped.offset % mmap.ALLOCATIONGRANULARITY
    offset = mapping_start + X.ctypes.data - np.frombuffer(buffer, np.uint8).ctypes.data
    if offset < 0 or offset + X.nbytes > os.path.getsize(mapped.filename):
        return None
    return FileBacking(str(mapped.filename), int(offset), os.stat(mapped.filename).st_ino)


# dtype kinds of numbers, as np.issubdtype(kind, np.integer or np.floating) takes them
# (timedelta64 is a signed integer there), and of real values (booleans besides)
NUMBER_KINDS, REAL_KINDS = "iufm", "iufmb"


def _float_dtype(dtype: DTypeLike | None, like: object = None, target: object = None) -> np.dtype:
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


def _fits_float32(target: object) -> bool:
    """Whether float32 holds every value of a target exactly (None, text and booleans do:
    they become class codes); a float64 target of other values keeps the data float64."""
    if target is None:
        return True
    values = np.asarray(target)
    if values.dtype.kind not in "iuf" or values.dtype == np.float32:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(values.astype(np.float32), values))


def _as_matrix(X: Any, dtype: np.dtype, source: str) -> Features:
    """``X`` as a C-ordered array (or CSR matrix) in ``dtype``, checked to be numeric and 2-D."""
    if is_sparse(X):
        return _as_csr(X, dtype, source)
    X = np.asarray(X)
    if X.dtype.kind not in REAL_KINDS:
        raise DataError(f"{source}: features must be real numbers, got values of type {X.dtype}")
    if X.ndim != 2:
        raise DataError(f"{source}: features must be a 2-D array (rows x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: no data rows")
    if X.shape[1] == 0:
        raise DataError(f"{source}: no feature columns")
    return np.ascontiguousarray(X, dtype=dtype)


def _as_labels(y: Any, num_rows: int, dtype: np.dtype, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The target as floats, and for text or boolean labels their sorted distinct values
    (the floats are then each row's position among them)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: the target must be 1-D, got shape {y.shape}")
    if len(y) != num_rows:
        raise DataError(f"{source}: {num_rows} rows of features but {len(y)} target values")
    if y.dtype.kind in NUMBER_KINDS:
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


def _as_csr(X: Features, dtype: np.dtype, source: str) -> Features:
    """A CSR matrix with sorted indices in ``dtype``; shape and type checked like arrays."""
    if X.dtype.kind not in REAL_KINDS:
        raise DataError(f"{source}: features must be real numbers, got values of type {X.dtype}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: no data rows")
    if X.shape[1] == 0:
        raise DataError(f"{source}: no feature columns")
    X = X.tocsr().astype(dtype, copy=False)
    X.sort_indices()
    return X
