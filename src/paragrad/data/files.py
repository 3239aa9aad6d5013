"""Loading and saving data files: :func:`load` picks a reader by suffix (tables,
``.npy``, ``.npz``, LIBSVM), :func:`save_dataset` writes one; numpy files are opened
without pickle.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from paragrad.core.atomic import atomic_write
from paragrad.data.dataset import Dataset, _float_dtype
from paragrad.data.delimited import COMPRESSED_SUFFIXES, TEXT_SUFFIXES, table_suffix
from paragrad.data.encoding import Encoding
from paragrad.data.frames import frame_table, is_frame
from paragrad.data.sheets import ARROW_SUFFIXES, SHEET_SUFFIXES
from paragrad.data.tables import (
    PARQUET_SUFFIXES,
    TABLE_SUFFIXES,
    ReadOptions,
    ReadTable,
    TableFile,
    _load_table,
    table_dataset,
)
from paragrad.errors import ConfigError, DataError, ParagradError, option

SVMLIGHT_SUFFIXES = (".svm", ".libsvm", ".svmlight")
SUPPORTED = (
    ".csv, .tsv, .txt (also .gz, .bz2, .zst, .xz), .parquet, .xlsx/.xls/.ods, .feather/.arrow, "
    ".npz, .npy, .svm/.libsvm"
)
# Table files besides text: options for text cells (decimal, encoding) apply to them too.
NON_TEXT_TABLES = (*PARQUET_SUFFIXES, *SHEET_SUFFIXES, *ARROW_SUFFIXES)

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def load(
    path: Any,
    target: str | int | None = None,
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    one_hot: Sequence[str] | Encoding = (),
    dropna: bool | None = False,
    delimiter: str | None = None,
    decimal: str | None = None,
    na_values: Sequence[str] = (),
    encoding: str | None = None,
    comment: str | None = None,
    sheet: str | int | None = None,
    target_file: str | os.PathLike | None = None,
    num_features: int | None = None,
    dtype: DTypeLike | None = None,
    mmap: bool = True,
    check_finite: bool = True,
    lazy: bool = False,
) -> Dataset:
    """Read a data set from CSV/TSV/``.txt`` (with a header; compressed too), Parquet, an
    Excel or OpenDocument workbook, Feather/Arrow, ``.npz``, ``.npy``, LIBSVM, or a data frame.

    Numbers in text cells are read as spreadsheets write them: ``1,234.5`` (thousands
    separators), ``12%`` (read as 0.12, the value behind the cell), decimal commas
    (``3,5``: read so when a file not separated by commas writes its numbers that way, or
    with ``decimal=","``); ``?``, ``-``, ``NA``, ``N/A``, ``null`` and empty cells are
    missing values. ``dataset.notes`` says what was read besides plain numbers.

    Parameters
    ----------
    path : str, Path or data frame
        The file; its suffix picks the reader (a compression suffix aside: ``a.csv.gz``).
        A pandas or polars frame is read like a table with the same options, its text
        columns left as text (to one-hot encode, or an error naming them).
    target : str or int, optional
        The label column of a CSV or Parquet file: an int is an index; a str is a name,
        or, when no column has that name, a text of digits is an index; ``"#3"`` is
        always index 3. ``.npz`` files hold ``X`` and ``y`` arrays and LIBSVM files carry
        labels, so they need none.
    features : sequence of str, optional
        For tables: the feature columns to read, in this order (other columns are
        ignored). By default every column but the target and those in ``drop``.
    drop : sequence of str
        For tables: columns not to use (an id or a free-text column, say).
    one_hot : sequence of str, or an Encoding
        For tables: text columns to expand into indicator columns ``COL=value``, one per
        category (sorted; at most 100). The categories are kept in ``dataset.encoding``; an
        :class:`~paragrad.data.encoding.Encoding` (a model's ``encoding_``) applies them
        again, and refuses a value it does not hold.
    dropna : bool
        For tables: skip rows with a missing value (an empty cell, ``NA``, ``NaN``) in the
        columns used; ``dataset.rows_dropped`` says how many. Without it such a row is an
        error naming its line (the header is line 1, the first data row line 2).
    delimiter : str, optional
        For text tables: the delimiter (one character, or ``tab``/``space``). By default it
        is read from the header: comma, semicolon, tab, pipe or space.
    decimal : {".", ","}, optional
        For text tables: the decimal mark (the other is the thousands separator). By
        default a comma when a file not separated by commas writes numbers like ``3,5``.
    na_values : sequence of str
        Cell texts read as missing values besides the usual ones.
    encoding : str, optional
        For text tables: the text encoding (``"latin-1"``, say). By default UTF-8, or
        Windows-1252 when the file is not UTF-8 (with a note).
    comment : str, optional
        For text tables: lines starting with this character are skipped anywhere
        (lines starting with ``#`` before the header are skipped anyway).
    sheet : str or int, optional
        For workbooks: the sheet's name or number (from 0); by default the first.
    target_file : str or Path, optional
        For ``.npy`` features: a ``.npy`` of the targets, one per row.
    num_features : int, optional
        For LIBSVM files: the feature count (a file need not use the last feature).
    dtype : float dtype or None
        ``float64`` or ``float32``; ``None`` (default) keeps a numpy file's float32, which
        then stays mapped where it lies (tables and other types read as float64).
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
    if is_frame(path):
        options = ReadOptions(
            features,
            _names(drop, "drop"),
            one_hot if isinstance(one_hot, Encoding) else _names(one_hot, "one_hot"),
            dropna,
            na_values=tuple(na_values),
        )
        read = ReadTable(frame_table(path), lambda row: f"row {row + 1}")
        source = f"{type(path).__name__}"
        return table_dataset(read, source, target, _float_dtype(dtype), check_finite, options, numbers=False)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    suffix = table_suffix(path)
    if path.suffix.lower() in COMPRESSED_SUFFIXES and suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: compressed files are read for {', '.join(TEXT_SUFFIXES)} tables")
    if lazy and suffix not in (*PARQUET_SUFFIXES, ".npy"):
        raise ConfigError(f"{path}: lazy=True reads .parquet files (and .npy, memory-mapped anyway)")
    drop, one_hot = (
        _names(drop, "drop"),
        one_hot if isinstance(one_hot, Encoding) else _names(one_hot, "one_hot"),
    )
    is_table = suffix in TEXT_SUFFIXES or suffix in NON_TEXT_TABLES
    asked = one_hot and not isinstance(one_hot, Encoding)  # a model's encoding fits any file
    if not is_table and (drop or asked or dropna or delimiter is not None):
        raise ConfigError(
            f"{path}: drop=, one_hot=, dropna= and delimiter= apply to tables (CSV, Parquet, ...)"
        )
    if target_file is not None and suffix != ".npy":
        raise ConfigError(f"{path}: {option('target_file', str(target_file))} goes with .npy features")
    if is_table or suffix not in (".npy", ".npz"):
        dtype = _float_dtype(dtype)  # text and LIBSVM are parsed, into float64 by default
    # One-hot encoding and skipping rows need every row read here.
    if lazy and suffix in PARQUET_SUFFIXES and not (one_hot or dropna):
        return Dataset._lazy(TableFile.open(path, target, features, dtype, drop))
    if is_table:
        text = (delimiter, decimal, encoding, comment, tuple(na_values))
        options = ReadOptions(features, drop, one_hot or (), dropna, *text, sheet=sheet)
        return _load_table(path, target, dtype, check_finite, options)
    if suffix == ".npz":
        return _load_npz(path, dtype, check_finite)
    if suffix == ".npy":
        dataset = _load_npy(path, dtype, mmap, check_finite)
        return dataset if target_file is None else _with_targets(dataset, Path(target_file), dtype)
    if suffix in SVMLIGHT_SUFFIXES:
        return _load_svmlight(path, num_features, dtype, check_finite)
    raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use {SUPPORTED}")


def _names(value: Sequence[str] | str, keyword: str) -> tuple[str, ...]:
    """Column names given as a list, or as one text of names separated by commas."""
    names = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"{keyword}= must be column names, got {value!r}")
    return tuple(names)


def _with_targets(dataset: Dataset, path: Path, dtype: DTypeLike | None) -> Dataset:
    """``.npy`` features with their targets from another ``.npy`` file (``dtype`` None:
    float32 features stay float32 when the targets fit float32)."""
    if not path.is_file():
        raise DataError(f"{path}: target file not found")
    with open_numpy(path, "npy") as y:
        y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != dataset.num_rows:
        raise DataError(
            f"{path}: {dataset.num_rows} rows of features in {dataset.source} but targets of shape {y.shape}"
        )
    # The features were checked as they were loaded (or are left to the workers, as
    # dataset.unchecked says); the targets are checked here.
    with_targets = Dataset(
        dataset.X, y, target_name="y", dtype=dtype, source=dataset.source, check_finite=False
    )
    with_targets.unchecked = dataset.unchecked
    if with_targets.storage is None:  # copied to float64 for the targets: no longer the file
        with_targets.check()
    return with_targets


def has_magic(path: Path, magic: bytes) -> bool:
    """Whether a file starts with the given signature (numpy reads anything else as pickle)."""
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


@contextlib.contextmanager
def open_numpy(
    path: Path,
    kind: str,
    *,
    what: str | None = None,
    error: type[Exception] = DataError,
    content: bytes | None = None,
) -> Iterator[Any]:
    """``np.load`` of a ``.npy`` or ``.npz`` file without pickle, every failure one clear error.

    ``what`` names the expected content in messages; the file is closed on every path.
    ``content``, when given, is the file's bytes as read earlier (``path`` names it in messages).
    """
    what = what or f"a valid .{kind} file"
    magic = ZIP_MAGIC if kind == "npz" else NPY_MAGIC
    if not (content.startswith(magic) if content is not None else has_magic(path, magic)):
        raise error(f"{path}: not {what}")
    with open(path, "rb") if content is None else io.BytesIO(content) as handle:
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


def _load_npy(path: Path, dtype: DTypeLike | None, mmap: bool, check_finite: bool) -> Dataset:
    if mmap:
        return Dataset(open_npy(path), dtype=dtype, source=str(path), check_finite=check_finite)
    with open_numpy(path, "npy") as X:
        return Dataset(X, dtype=dtype, source=str(path), check_finite=check_finite)


def _load_npz(path: Path, dtype: DTypeLike | None, check_finite: bool) -> Dataset:
    with open_numpy(path, "npz") as archive:
        if "X" not in archive.files:
            raise DataError(f"{path}: no array named 'X' (arrays: {', '.join(archive.files)})")
        X = archive["X"]
        y = archive["y"] if "y" in archive.files else None
        names = archive["feature_names"].tolist() if "feature_names" in archive.files else None
        target = str(archive["target_name"]) if "target_name" in archive.files else None
    return Dataset(X, y, names, target, dtype=dtype, source=str(path), check_finite=check_finite)


def _load_svmlight(
    path: Path, num_features: int | None, dtype: DTypeLike | None, check_finite: bool
) -> Dataset:
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
