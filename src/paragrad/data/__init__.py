"""Datasets: validation, loaders, synthetic generators and standardisation.

``dataset`` holds :class:`Dataset` and the checks it makes, ``tables`` CSV and Parquet
tables, ``files`` loading and saving by suffix, ``synthetic`` generated data and
``moments`` standardisation from per-shard moments; every public name is here too.
Rows in messages are counted from 1, as a person reads a file: row 1 is the first data row.
"""

from paragrad.core.shm import shared_empty
from paragrad.data.checks import is_sparse, take_rows
from paragrad.data.dataset import Dataset, FileBacking
from paragrad.data.files import (
    SUPPORTED,
    SVMLIGHT_SUFFIXES,
    has_magic,
    load,
    open_npy,
    open_numpy,
    save_dataset,
)
from paragrad.data.moments import Moments, Standardizer, combine_moments, moments
from paragrad.data.synthetic import make_classification, make_regression, make_sparse_classification
from paragrad.data.tables import PARQUET_SUFFIXES, TABLE_SUFFIXES, TableFile

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
