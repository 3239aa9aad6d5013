"""Datasets: validation, loaders, synthetic generators, shard plans and standardisation.

Rows in messages are counted from 1, as a person reads a file: row 1 is the first data row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import mmap
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paragrad.atomic import atomic_write
from paragrad.errors import ConfigError, DataError, ParagradError
from paragrad.shm import shared_empty

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
SVMLIGHT_SUFFIXES = (".svm", ".libsvm", ".svmlight")
SUPPORTED = ".csv, .tsv, .parquet, .npz, .npy, .svm/.libsvm"


class Dataset:
    """Features ``X`` (rows x features) and optional labels ``y``, validated once.

    Parameters
    ----------
    X : array-like, shape (num_rows, num_features)
        Numeric and finite.
    y : array-like, shape (num_rows,), optional
        Numeric and finite labels or targets; ``None`` for data to predict on.
    feature_names : sequence of str, optional
        One name per column of ``X``.
    target_name : str, optional
        The name of the label column, remembered by models trained on this data.
    dtype : float dtype or None
        ``float64`` (default) or ``float32``; ``None`` keeps float32 features as they are.
    source : str
        What to call the data in error messages (a file name, say).
    check_finite : bool
        Check every feature value (a pass over the data); predict skips it and checks its
        outputs instead, which NaN or infinite features always reach.

    A data set opened with ``load(path, lazy=True)`` has a :class:`TableFile` in
    ``table`` and reads its rows only when they are needed: the Ray engine's workers read
    their own rows; ``X`` and ``y`` read the whole file on first use.
    """

    table: TableFile | None = None

    def __init__(
        self,
        X,
        y=None,
        feature_names: Sequence[str] | None = None,
        target_name: str | None = None,
        *,
        dtype=np.float64,
        source: str = "X",
        check_finite: bool = True,
    ) -> None:
        dtype = _float_dtype(dtype, like=X)
        self.source = source
        self.storage = _file_backing(X, dtype)
        self._X = _as_matrix(X, dtype, source)
        self._y = None if y is None else _as_labels(y, self._X.shape[0], dtype, source)
        if feature_names is not None:
            feature_names = tuple(str(name) for name in feature_names)
            if len(feature_names) != self.X.shape[1]:
                raise DataError(
                    f"{source}: {len(feature_names)} feature names for {self.X.shape[1]} feature columns"
                )
        self.feature_names = feature_names
        self.target_name = target_name
        if check_finite:
            _check_finite(self.X, source, feature_names)
        if self.y is not None:
            _check_finite(self.y[:, None], source, (target_name or "y",), what="the target")

    @classmethod
    def _trusted(cls, X, y, feature_names, target_name, source) -> Dataset:
        """Build a dataset from arrays already validated (a slice or a type change)."""
        ds = cls.__new__(cls)
        ds._X, ds._y, ds.source, ds.storage = X, y, source, _file_backing(X, X.dtype)
        ds.feature_names, ds.target_name = feature_names, target_name
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
        return Dataset._trusted(self.X[rows], y, self.feature_names, self.target_name, self.source)

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
        if self._X is None:
            return Dataset._lazy(dataclasses.replace(self.table, dtype=dtype.str))
        y = None if self.y is None else self.y.astype(dtype)
        return Dataset._trusted(self.X.astype(dtype), y, self.feature_names, self.target_name, self.source)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        labels = "labels" if self.has_labels else "no labels"
        return f"Dataset({self.num_rows} rows x {self.num_features} features, {labels})"


@dataclass(frozen=True)
class FileBacking:
    """Where a memory-mapped feature matrix lies in its file, so workers can map it too."""

    path: str
    offset: int


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
    return FileBacking(str(mapped.filename), int(offset))


def _float_dtype(dtype, like=None) -> np.dtype:
    """The float type to use; ``None`` keeps float32 data as it is and makes the rest float64."""
    if dtype is None:
        kind = getattr(like, "dtype", None)
        return np.dtype(np.float32) if kind == np.float32 else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


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


def _as_labels(y, num_rows, dtype, source) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise DataError(f"{source}: the target must be real numbers, got values of type {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{source}: the target must be 1-D, got shape {y.shape}")
    if len(y) != num_rows:
        raise DataError(f"{source}: {num_rows} rows of features but {len(y)} target values")
    return np.ascontiguousarray(y, dtype=dtype)


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
    """Raise a DataError naming the first NaN or infinite value; ``rows`` maps the
    array's rows to the file's (counted from 0) when the array holds only some of them."""
    if is_sparse(values):
        if np.isfinite(values.data).all():
            return
        position = int(np.argmin(np.isfinite(values.data)))
        row = int(np.searchsorted(values.indptr, position, side="right")) - 1
        column = values.indices[position]
        name = repr(names[column]) if names is not None else f"column {column}"
        raise DataError(f"{source}: NaN or infinite value in {what}; first at row {row + 1}, {name}")
    block = max(1, (1 << 20) // max(1, values.shape[1]))  # a streaming pass: no n x d temporary
    if all(np.isfinite(values[start : start + block]).all() for start in range(0, values.shape[0], block)):
        return
    bad = ~np.isfinite(values)
    bad_rows = np.flatnonzero(bad.any(axis=1))
    row = bad_rows[0] if rows is None else bad_rows[np.argmin(np.asarray(rows)[bad_rows])]
    col = int(np.argmax(bad[row]))
    kind = "NaN or missing" if np.isnan(values[row, col]) else "infinite"
    row = row if rows is None else int(rows[row])
    column = repr(names[col]) if names is not None else f"column {col}"
    scope = "" if rows is None else " of the rows read"
    raise DataError(
        f"{source}: {int(bad.sum())} NaN, missing or infinite value(s) in {what}{scope}; "
        f"first at row {row + 1}, {column!s} ({kind})"
    )


# ---------------------------------------------------------------------------------------
# Loaders


def load(
    path: str | os.PathLike,
    target: str | int | None = None,
    *,
    features: Sequence[str] | None = None,
    num_features: int | None = None,
    dtype=np.float64,
    mmap: bool = True,
    check_finite: bool = True,
    lazy: bool = False,
) -> Dataset:
    """Read a data set from CSV/TSV (with a header), Parquet, ``.npz``, ``.npy`` or LIBSVM.

    Parameters
    ----------
    path : str or Path
        The file; its suffix picks the reader.
    target : str or int, optional
        The label column of a CSV or Parquet file, by name or index. ``.npz`` files hold
        ``X`` and ``y`` arrays and LIBSVM files carry labels, so they need none.
    features : sequence of str, optional
        For tables: the feature columns to read, in this order (other columns are
        ignored). By default every column but the target.
    num_features : int, optional
        For LIBSVM files: the feature count (a file need not use the last feature).
    dtype : float dtype or None
        ``float64`` or ``float32``; ``None`` keeps the file's float32 (else float64).
    mmap : bool
        Memory-map ``.npy`` files instead of reading them: the local engine's workers then
        map the same file, and the data is never copied.
    check_finite : bool
        Check the features for NaN and infinities (see :class:`Dataset`).
    lazy : bool
        For Parquet files: read only the schema now and each row when it is needed. The
        Ray engine's workers then each read their own rows (and check them), so the
        data never passes through this process. ``.npy`` files are memory-mapped anyway.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    if lazy and suffix not in (*PARQUET_SUFFIXES, ".npy"):
        raise ConfigError(f"{path}: lazy=True reads .parquet files (and .npy, memory-mapped anyway)")
    if lazy and suffix in PARQUET_SUFFIXES:
        return Dataset._lazy(TableFile.open(path, target, features, dtype))
    if suffix in TABLE_SUFFIXES or suffix in PARQUET_SUFFIXES:
        return _load_table(path, target, features, dtype, check_finite)
    if suffix == ".npz":
        return _load_npz(path, dtype, check_finite)
    if suffix == ".npy":
        return _load_npy(path, dtype, mmap, check_finite)
    if suffix in SVMLIGHT_SUFFIXES:
        return _load_svmlight(path, num_features, dtype, check_finite)
    raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use {SUPPORTED}")


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            return pq.read_table(path)
        parse = pacsv.ParseOptions(delimiter=TABLE_SUFFIXES[suffix])
        return pacsv.read_csv(path, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV file" in reason:
            reason = "the file is empty"
        raise DataError(f"{path}: cannot read: {reason}") from None


def _pick_columns(
    path: Path, names: list[str], num_rows: int, target, features
) -> tuple[list[str], str | None]:
    """The feature columns and the target column of a table, checked against its header."""
    if not names:
        raise DataError(f"{path}: the file is empty")
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{path}: column {duplicate!r} appears more than once in the header")
    target_name = _resolve_target(path, names, target)
    if features is None:
        features = [name for name in names if name != target_name]
    else:
        missing = [name for name in features if name not in names]
        if missing:
            raise DataError(
                f"{path}: missing feature column(s) {', '.join(map(repr, missing))} "
                f"that the model was trained with"
            )
    if num_rows == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target_name!r}")
    if target_name in features:
        raise DataError(f"{path}: column {target_name!r} cannot be both a feature and the target")
    return list(features), target_name


def _load_table(path: Path, target, features, dtype, check_finite: bool) -> Dataset:
    table = _read_table(path)
    features, target_name = _pick_columns(path, list(table.column_names), table.num_rows, target, features)
    X = shared_empty((table.num_rows, len(features)), dtype)
    for j, name in enumerate(features):
        X[:, j] = _numeric_column(path, table.column(name), name)
    y = None
    if target_name is not None:
        y = _numeric_column(path, table.column(target_name), target_name)
    return Dataset(X, y, features, target_name, dtype=dtype, source=str(path), check_finite=check_finite)


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
    def open(cls, path: Path, target, features, dtype) -> TableFile:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read: {reason}") from None
        schema = metadata.schema.to_arrow_schema()
        features, target_name = _pick_columns(path, schema.names, metadata.num_rows, target, features)
        for name in [*features, *([] if target_name is None else [target_name])]:
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
                raise DataError(f"{path}: column {name!r} is not numeric (type {kind})")
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

    def _check_unchanged(self, source) -> None:
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

        path, dtype = Path(self.path), np.dtype(self.dtype)
        if rows is None or isinstance(rows, slice):
            part = self.window(slice(None) if rows is None else rows)
            file_rows = range(part.first, part.first + part.num_rows)
        else:
            file_rows = np.asarray(rows)
            if file_rows.ndim != 1 or not np.issubdtype(file_rows.dtype, np.integer):
                raise TypeError(f"rows must be a slice or a 1-D array of row numbers, got {file_rows.dtype}")
            if file_rows.size and not (0 <= file_rows.min() and file_rows.max() < self.num_rows):
                raise IndexError(f"row numbers must lie in [0, {self.num_rows})")
            file_rows = file_rows.astype(np.int64) + self.first
        shape = (len(file_rows), len(self.features))
        X = shared_empty(shape, dtype) if rows is None else np.empty(shape, dtype)
        y = None if self.target is None else np.empty(len(file_rows), dtype)
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
                if y is not None:
                    y[places] = _numeric_column(path, table.column(self.target), self.target)
        _check_finite(X, self.path, self.features, rows=file_rows)
        if y is not None:
            _check_finite(y[:, None], self.path, (self.target,), what="the target", rows=file_rows)
        return Dataset._trusted(X, y, self.features, self.target, self.path)


def _rows_by_group(file_rows: range | np.ndarray, groups):
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


def _resolve_target(path: Path, names: list[str], target) -> str | None:
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not -len(names) <= target < len(names):
            raise DataError(f"{path}: target column index {target} out of range ({len(names)} columns)")
        return names[target]
    if target not in names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise DataError(f"{path}: target column {target!r} not found (columns: {shown})")
    return target


def _numeric_column(path: Path, column, name: str) -> np.ndarray:
    """One table column as float64, nulls as NaN; a clear error for text or dates."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    if pa.types.is_null(kind):
        raise DataError(f"{path}: column {name!r} is empty (no values)")
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: column {name!r} is not numeric (row {row + 1} holds {str(value)[:40]!r})"
            ) from None
    raise DataError(f"{path}: column {name!r} is not numeric (type {kind})")


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def has_magic(path: Path, magic: bytes) -> bool:
    """Whether a file starts with the given signature (numpy reads anything else as pickle)."""
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


@contextlib.contextmanager
def open_numpy(path: Path, kind: str, *, what: str | None = None, error: type[Exception] = DataError):
    """``np.load`` of a ``.npy`` or ``.npz`` file without pickle, every failure one clear error.

    ``what`` names the expected content in messages; the file is closed on every path.
    """
    what = what or f"a valid .{kind} file"
    if not has_magic(path, ZIP_MAGIC if kind == "npz" else NPY_MAGIC):
        raise error(f"{path}: not {what}")
    with open(path, "rb") as handle:
        try:
            yield np.load(handle, allow_pickle=False)
        except ParagradError:
            raise
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise error(f"{path}: holds pickled Python objects, which are refused") from None
            raise error(f"{path}: not {what} ({exc})") from None
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise error(f"{path}: not {what} or truncated ({exc})") from None


def open_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file of features memory-mapped as it is (2-D, numeric), without reading it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not has_magic(path, NPY_MAGIC):
        raise DataError(f"{path}: not a valid .npy file")
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot memory-map ({exc})") from None
    if X.ndim != 2 or X.shape[0] == 0 or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: features must be a non-empty 2-D numeric array, got {X.dtype} {X.shape}")
    if np.iscomplexobj(X):
        raise DataError(f"{path}: features must be real numbers, got values of type {X.dtype}")
    return X


def _load_npy(path: Path, dtype, mmap: bool, check_finite: bool) -> Dataset:
    if mmap:
        return Dataset(open_npy(path), dtype=dtype, source=str(path), check_finite=check_finite)
    with open_numpy(path, "npy") as X:
        return Dataset(X, dtype=dtype, source=str(path), check_finite=check_finite)


def _load_npz(path: Path, dtype, check_finite: bool) -> Dataset:
    with open_numpy(path, "npz") as archive:
        if "X" not in archive.files:
            raise DataError(f"{path}: no array named 'X' (arrays: {', '.join(archive.files)})")
        X = archive["X"]
        y = archive["y"] if "y" in archive.files else None
        names = archive["feature_names"].tolist() if "feature_names" in archive.files else None
        target = str(archive["target_name"]) if "target_name" in archive.files else None
    return Dataset(X, y, names, target, dtype=dtype, source=str(path), check_finite=check_finite)


def _load_svmlight(path: Path, num_features: int | None, dtype, check_finite: bool) -> Dataset:
    try:
        from sklearn.datasets import load_svmlight_file
    except ImportError:
        raise DataError(
            f"{path}: reading LIBSVM files needs scikit-learn: pip install 'paragrad[svmlight]'"
        ) from None
    try:
        X, y = load_svmlight_file(str(path), n_features=num_features, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: not a valid LIBSVM file ({exc})") from None
    return Dataset(X, y, dtype=dtype, source=str(path), check_finite=check_finite)


def save_dataset(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write a data set as CSV/TSV, Parquet or ``.npz`` (chosen by suffix), atomically."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    names = dataset.feature_names or tuple(f"x{j}" for j in range(dataset.num_features))
    target = dataset.target_name or "y"
    if suffix == ".npz":
        arrays = {"X": dataset.X, "feature_names": np.array(names)}
        if dataset.y is not None:
            arrays.update(y=dataset.y, target_name=np.array(target))
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)
        return
    if suffix not in TABLE_SUFFIXES and suffix not in PARQUET_SUFFIXES:
        raise DataError(f"{path}: cannot write {suffix or '(no suffix)'!r}; use .csv, .tsv, .parquet or .npz")
    columns = {name: dataset.X[:, j] for j, name in enumerate(names)}
    if dataset.y is not None:
        y = dataset.y
        columns[target] = y.astype(np.int64) if np.array_equal(y, np.round(y)) else y
    table = pa.table(columns)
    with atomic_write(path) as handle:
        if suffix in PARQUET_SUFFIXES:
            pq.write_table(table, handle)
        else:
            options = pacsv.WriteOptions(delimiter=TABLE_SUFFIXES[suffix])
            pacsv.write_csv(table, handle, write_options=options)


# ---------------------------------------------------------------------------------------
# Synthetic data


def make_regression(
    num_rows: int, num_features: int, *, noise: float = 0.1, seed: int = 0, dtype=np.float64
) -> Dataset:
    """Gaussian features and ``y = X w + b + noise * e`` with random ``w`` and ``b``."""
    _check_size(num_rows, num_features)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_rows, num_features))
    w = rng.standard_normal(num_features)
    y = X @ w + rng.standard_normal() + noise * rng.standard_normal(num_rows)
    return Dataset(X, y, _default_names(num_features), "y", dtype=dtype, source="make_regression")


def make_classification(
    num_rows: int,
    num_features: int,
    *,
    num_classes: int = 2,
    separation: float = 2.0,
    seed: int = 0,
    dtype=np.float64,
) -> Dataset:
    """Gaussian features and labels ``0..num_classes-1`` drawn from a softmax of ``X W + b``.

    Labels are sampled, not thresholded, so the classes overlap and the logistic loss has a
    finite optimum; ``separation`` scales the logits (larger means easier).
    """
    _check_size(num_rows, num_features)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_rows, num_features))
    W = rng.standard_normal((num_features, num_classes)) * separation / np.sqrt(num_features)
    logits = X @ W + 0.5 * rng.standard_normal(num_classes)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    u = rng.random((num_rows, 1))
    y = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), num_classes - 1)
    return Dataset(X, y, _default_names(num_features), "y", dtype=dtype, source="make_classification")


def make_sparse_classification(
    num_rows: int, num_features: int, *, density: float = 0.001, seed: int = 0, dtype=np.float64
) -> Dataset:
    """Sparse CSR features (``density`` of entries non-zero) with binary logistic labels.

    Built row block by row block, so data sets far too large to hold densely are cheap.
    """
    import scipy.sparse as sp

    _check_size(num_rows, num_features)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(num_features) * 3.0
    per_row = max(1, round(density * num_features))
    indices = np.sort(rng.integers(0, num_features, size=(num_rows, per_row)), axis=1).ravel()
    values = rng.standard_normal(num_rows * per_row)
    indptr = np.arange(0, num_rows * per_row + 1, per_row)
    X = sp.csr_matrix((values, indices, indptr), shape=(num_rows, num_features))
    X.sum_duplicates()
    z = X @ w
    y = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    return Dataset(X, y, target_name="y", dtype=dtype, source="make_sparse_classification")


def _check_size(num_rows: int, num_features: int) -> None:
    if num_rows < 1 or num_features < 1:
        raise ConfigError(f"rows and features must be positive, got {num_rows} x {num_features}")


def _default_names(num_features: int) -> tuple[str, ...]:
    return tuple(f"x{j}" for j in range(num_features))


# ---------------------------------------------------------------------------------------
# Standardisation from per-shard moments


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of each feature over some rows."""

    count: int
    mean: np.ndarray
    m2: np.ndarray


def moments(X: np.ndarray) -> Moments:
    """The moments of the rows of ``X``, accumulated in float64."""
    mean = X.mean(axis=0, dtype=np.float64)
    centred = X - mean
    return Moments(len(X), mean, np.einsum("ij,ij->j", centred, centred))


def combine_moments(parts: Sequence[Moments]) -> Moments:
    """Merge per-shard moments exactly (Chan, Golub and LeVeque's pairwise update)."""
    total = parts[0]
    for part in parts[1:]:
        count = total.count + part.count
        delta = part.mean - total.mean
        mean = total.mean + delta * (part.count / count)
        m2 = total.m2 + part.m2 + delta**2 * (total.count * part.count / count)
        total = Moments(count, mean, m2)
    return total


@dataclass(frozen=True)
class Standardizer:
    """``(X - mean) / scale`` per feature; constant features keep scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_moments(cls, stats: Moments) -> Standardizer:
        std = np.sqrt(stats.m2 / stats.count)
        return cls(stats.mean, np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(X.dtype, copy=False)
