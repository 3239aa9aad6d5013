"""The model file format: a ``.npz`` of plain arrays with the model's description as JSON.

This module sits below :mod:`paragrad.models` so that a model can write itself; reading a
file and rebuilding the model is :func:`paragrad.training.checkpoint.load_model`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.core.atomic import atomic_write

if TYPE_CHECKING:
    from paragrad.data import Standardizer

FORMAT = "paragrad-model"
VERSION = 1
# 2: the parameters stored small (float16, int8 with a scale per output unit, or sparse);
# a file of full float64 parameters is still written as version 1, so older readers read it.
STORED_VERSION = 2
VERSIONS = (VERSION, STORED_VERSION)
STORAGE = ("float16", "int8", "sparse")
STORED_PREFIXES = {"float16": "params_float16", "int8": "int8_", "sparse": "sparse_"}  # their arrays

# A weight matrix inside the flat parameter vector: (offset, rows, columns), row-major.
Matrix = tuple[int, int, int]


def standardizer_arrays(standardizer: Standardizer | None) -> dict[str, np.ndarray]:
    """The arrays that carry a standardisation in a model file (none without one)."""
    if standardizer is None:
        return {}
    return {"standardizer_mean": standardizer.mean, "standardizer_scale": standardizer.scale}


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` atomically: the old file or the new one, never a part."""
    with atomic_write(path) as handle:
        np.savez(handle, allow_pickle=True, **arrays)


def write_model_file(
    path: str | os.PathLike,
    meta: dict[str, Any],
    params: np.ndarray,
    standardizer: Standardizer | None = None,
    storage: str | None = None,
    stored: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a model file: ``meta`` (format and version added) as JSON, the parameters as
    float64, or with ``storage`` the ``stored`` arrays of :func:`encode_params`."""
    if storage is None or stored is None:
        meta = {"format": FORMAT, "version": VERSION, **meta}
        stored = {"params": np.asarray(params, dtype=np.float64)}
    else:
        meta = {"format": FORMAT, "version": STORED_VERSION, **meta, "storage": storage}
    arrays = {**stored, "meta": np.array(json.dumps(meta)), **standardizer_arrays(standardizer)}
    write_arrays(path, arrays)


def _weight_positions(num_params: int, matrices: list[Matrix]) -> np.ndarray:
    """True where a parameter lies in one of the weight matrices."""
    inside = np.zeros(num_params, dtype=bool)
    for offset, rows, cols in matrices:
        inside[offset : offset + rows * cols] = True
    return inside


def _index_type(num_params: int) -> type:
    return np.uint16 if num_params <= np.iinfo(np.uint16).max else np.uint32


def encode_params(params: np.ndarray, storage: str, matrices: list[Matrix]) -> dict[str, np.ndarray]:
    """The arrays that hold ``params`` small.

    ``float16``: every parameter as float16. ``int8``: each weight matrix as int8 with one
    float32 scale per column (output unit), ``scale = max|W[:, j]| / 127``, symmetric (no
    zero point); the other parameters (intercepts) as float32. ``sparse``: the positions
    (uint16 or uint32) and float32 values of the nonzero parameters.
    """
    params = np.asarray(params, dtype=np.float64)
    if storage == "float16":
        return {"params_float16": params.astype(np.float16)}
    if storage == "sparse":
        index = np.flatnonzero(params)
        return {
            "sparse_index": index.astype(_index_type(len(params))),
            "sparse_values": params[index].astype(np.float32),
            "sparse_size": np.array(len(params), dtype=np.int64),
        }
    if storage != "int8":
        raise ValueError(f"unknown storage {storage!r}")
    codes, scales = [], []
    for offset, rows, cols in matrices:
        W = params[offset : offset + rows * cols].reshape(rows, cols)
        scale = (np.abs(W).max(axis=0) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        codes.append(np.clip(np.rint(W / scale.astype(np.float64)), -127, 127).astype(np.int8).ravel())
        scales.append(scale)
    rest = params[~_weight_positions(len(params), matrices)]
    return {
        "int8_weights": np.concatenate(codes),
        "int8_scales": np.concatenate(scales),
        "int8_rest": rest.astype(np.float32),
    }


def decode_params(arrays: Any, storage: str, num_params: int, matrices: list[Matrix]) -> np.ndarray:
    """The float64 parameter vector from the arrays of :func:`encode_params` (once, at load:
    prediction then runs on plain float64 weights, as fast as the original model's)."""
    if storage == "float16":
        params = np.asarray(arrays["params_float16"])
        if params.dtype != np.float16 or params.shape != (num_params,):
            raise ValueError(f"{params.size} float16 parameters stored, the model needs {num_params}")
        return params.astype(np.float64)
    if storage == "sparse":
        index, values = np.asarray(arrays["sparse_index"]), np.asarray(arrays["sparse_values"])
        if int(arrays["sparse_size"]) != num_params or index.shape != values.shape:
            raise ValueError("sparse parameters do not match the model")
        if len(index) and (index.dtype.kind != "u" or int(index.max()) >= num_params):
            raise ValueError("sparse positions out of range")
        params = np.zeros(num_params)
        params[index.astype(np.intp)] = values.astype(np.float64)
        return params
    if storage != "int8":
        raise ValueError(f"unknown storage {storage!r}")
    codes = np.asarray(arrays["int8_weights"])
    scales = np.asarray(arrays["int8_scales"])
    rest = np.asarray(arrays["int8_rest"])
    inside = _weight_positions(num_params, matrices)
    if (
        codes.dtype != np.int8
        or codes.size != int(inside.sum())
        or scales.size != sum(cols for *_, cols in matrices)
        or rest.size != num_params - codes.size
    ):
        raise ValueError("int8 parameters do not match the model")
    params = np.zeros(num_params)
    used_codes = used_scales = 0
    for offset, rows, cols in matrices:
        # In float32, as ONNX's DequantizeLinear computes it, so an export gives the same weights.
        block = codes[used_codes : used_codes + rows * cols].reshape(rows, cols).astype(np.float32)
        scale = scales[used_scales : used_scales + cols].astype(np.float32)
        params[offset : offset + rows * cols] = (block * scale).astype(np.float64).ravel()
        used_codes += rows * cols
        used_scales += cols
    params[~inside] = rest.astype(np.float64)
    return params
