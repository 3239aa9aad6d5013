"""Datasets: validation, loaders, synthetic generators and standardisation.

Rows in messages are counted from 1, as a person reads a file: row 1 is the first data row.
"""

from paragrad.data.dataset import (
    PARQUET_SUFFIXES,
    SUPPORTED,
    SVMLIGHT_SUFFIXES,
    TABLE_SUFFIXES,
    Dataset,
    FileBacking,
    Moments,
    Standardizer,
    TableFile,
    combine_moments,
    has_magic,
    is_sparse,
    load,
    make_classification,
    make_regression,
    make_sparse_classification,
    moments,
    open_npy,
    open_numpy,
    save_dataset,
    shared_empty,
)

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
]
