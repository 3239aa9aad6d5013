"""Model files: a ``.npz`` of plain arrays plus JSON metadata, written atomically.

No pickle anywhere: files are read with ``allow_pickle=False``, so loading one cannot run
code. The metadata names the family and its hyperparameters, the feature count and
names, the target's name and the classes; the standardisation travels as arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.atomic import atomic_write
from paragrad.data import Standardizer, open_numpy
from paragrad.errors import ModelFileError, ParagradError
from paragrad.models import Model, get_model

FORMAT = "paragrad-model"
VERSION = 1


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write a trained model to ``path`` (any suffix; ``.npz`` is customary)."""
    model._check_trained()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "family": model.name,
        "config": model.get_config(),
        "num_features": model.num_features_,
        "classes": None if model.classes_ is None else model.classes_.tolist(),
        "feature_names": None if model.feature_names_ is None else list(model.feature_names_),
        "target_name": model.target_name_,
    }
    arrays = {
        "params": np.asarray(model.params_, dtype=np.float64),
        "meta": np.array(json.dumps(meta)),
    }
    if model.standardizer_ is not None:
        arrays["standardizer_mean"] = model.standardizer_.mean
        arrays["standardizer_scale"] = model.standardizer_.scale
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def load_model(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save_model` (or ``run.save``), refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    with open_numpy(path, "npz", what="a paragrad model file", error=ModelFileError) as archive:
        if "meta" not in archive.files or "params" not in archive.files:
            raise ModelFileError(f"{path}: not a paragrad model file (no model metadata)")
        try:
            meta = json.loads(str(archive["meta"]))
        except json.JSONDecodeError:
            raise ModelFileError(f"{path}: damaged model metadata (not JSON)") from None
        params = archive["params"]
        standardizer = None
        if "standardizer_mean" in archive.files:
            standardizer = Standardizer(archive["standardizer_mean"], archive["standardizer_scale"])
    return _rebuild(path, meta, params, standardizer)


def _rebuild(path: Path, meta: Any, params: np.ndarray, standardizer: Standardizer | None) -> Model:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a paragrad model file (unknown format)")
    if meta.get("version") != VERSION:
        raise ModelFileError(
            f"{path}: model file version {meta.get('version')} is not supported (expected {VERSION})"
        )
    try:
        model = get_model(meta["family"])(**meta["config"])
        num_features = meta["num_features"]
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features {num_features!r}")
        classes = meta["classes"]
        labels = None if classes is None else np.asarray(classes, dtype=np.float64)
        names = meta["feature_names"]
        if names is not None and len(names) != num_features:
            raise ValueError(f"{len(names)} feature names for {num_features} features")
        model.setup(
            num_features,
            labels,
            feature_names=None if names is None else tuple(map(str, names)),
            target_name=meta["target_name"],
        )
        if standardizer is not None and (
            standardizer.mean.shape != (num_features,) or standardizer.scale.shape != (num_features,)
        ):
            raise ValueError("standardisation arrays do not match the feature count")
    except (KeyError, TypeError, ValueError, ParagradError) as exc:
        raise ModelFileError(f"{path}: damaged model metadata ({exc})") from None
    if params.shape != (model.num_params,) or not np.issubdtype(params.dtype, np.floating):
        raise ModelFileError(
            f"{path}: {params.size} parameters stored, but the model needs {model.num_params}"
        )
    model.params_ = params
    model.standardizer_ = standardizer
    return model
