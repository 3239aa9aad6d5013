"""The model file format: a ``.npz`` of plain arrays with the model's description as JSON.

This module sits below :mod:`paragrad.models` so that a model can write itself; reading a
file and rebuilding the model is :func:`paragrad.checkpoint.load_model`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from paragrad.atomic import atomic_write

if TYPE_CHECKING:
    from paragrad.data import Standardizer

FORMAT = "paragrad-model"
VERSION = 1


def standardizer_arrays(standardizer: Standardizer | None) -> dict[str, np.ndarray]:
    """The arrays that carry a standardisation in a model file (none without one)."""
    if standardizer is None:
        return {}
    return {"standardizer_mean": standardizer.mean, "standardizer_scale": standardizer.scale}


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` atomically: the old file or the new one, never a part."""
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def write_model_file(
    path: str | os.PathLike,
    meta: dict[str, Any],
    params: np.ndarray,
    standardizer: Standardizer | None = None,
) -> None:
    """Write a model file: ``meta`` (format and version added) as JSON, the parameters as float64."""
    meta = {"format": FORMAT, "version": VERSION, **meta}
    arrays = {
        "params": np.asarray(params, dtype=np.float64),
        "meta": np.array(json.dumps(meta)),
        **standardizer_arrays(standardizer),
    }
    write_arrays(path, arrays)
