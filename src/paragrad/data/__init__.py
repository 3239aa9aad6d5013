"""Datasets: validation, loaders, synthetic generators and standardisation.

``dataset`` holds :class:`Dataset` and the checks it makes, ``tables`` CSV and Parquet
tables, ``files`` loading and saving by suffix, ``synthetic`` generated data and
``moments`` standardisation from per-shard moments; every public name is here too.
Rows in messages are counted from 1, as a person reads a file: row 1 is the first data row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paragrad.core.lazy import lazy_names
from paragrad.core.shm import shared_empty
from paragrad.data.checks import is_sparse, take_rows
from paragrad.data.dataset import Dataset, FileBacking
from paragrad.data.moments import Moments, Standardizer, combine_moments, moments

# Names whose modules load on first use: a run on arrays in memory reads no file.
_LAZY = {
    "SUPPORTED": "paragrad.data.files",
    "SVMLIGHT_SUFFIXES": "paragrad.data.files",
    "has_magic": "paragrad.data.files",
    "load": "paragrad.data.files",
    "open_npy": "paragrad.data.files",
    "open_numpy": "paragrad.data.files",
    "save_dataset": "paragrad.data.files",
    "make_classification": "paragrad.data.synthetic",
    "make_regression": "paragrad.data.synthetic",
    "make_sparse_classification": "paragrad.data.synthetic",
    "PARQUET_SUFFIXES": "paragrad.data.tables",
    "TABLE_SUFFIXES": "paragrad.data.tables",
    "TableFile": "paragrad.data.tables",
}

__all__ = [
    "PARQUET_SUFFIXES",
    "SUPPORTED",
    "SVMLIGHT_SUFFIXES",
    "TABLE_SUFFIXES",
    "Dataset",
    "FileBacking",
    "Moments",
    "Standardizer",
    "TableFile",
    "combine_moments",
    "has_magic",
    "is_sparse",
    "load",
    "make_classification",
    "make_regression",
    "make_sparse_classification",
    "moments",
    "open_npy",
    "open_numpy",
    "save_dataset",
    "shared_empty",
    "take_rows",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


if TYPE_CHECKING:
    from paragrad.data.files import (
        SUPPORTED,
        SVMLIGHT_SUFFIXES,
        has_magic,
        load,
        open_npy,
        open_numpy,
        save_dataset,
    )
    from paragrad.data.synthetic import make_classification, make_regression, make_sparse_classification
    from paragrad.data.tables import PARQUET_SUFFIXES, TABLE_SUFFIXES, TableFile
