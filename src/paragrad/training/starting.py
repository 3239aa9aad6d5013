"""Where a run starts: the model chosen from the target or built by its family's name, and a
trained model whose parameters (and standardisation) start the run (``init=``).
"""

from __future__ import annotations

import os

import numpy as np

from paragrad.data import Dataset, Standardizer
from paragrad.errors import ConfigError, DataError, setting
from paragrad.models import get_model
from paragrad.models.base import Model
from paragrad.training.checkpoint import TrainingState
from paragrad.training.settings import choose_model


def standardizer_kept(resumed: TrainingState | None, start_from: Model | None) -> Standardizer | None:
    """The standardisation a run must keep: a resumed run's, else its starting model's."""
    if resumed is not None and resumed.standardizer is not None:
        return resumed.standardizer
    return None if start_from is None else start_from.standardizer_


def model_for(model: Model | str | None, data: Dataset) -> tuple[Model, str]:
    """The model to train, and why it was chosen: ``None`` or ``"auto"`` chooses from the
    target (:func:`~paragrad.training.settings.choose_model`); a family's name builds one."""
    if isinstance(model, Model):
        return model, ""
    if model is not None and not isinstance(model, str):
        raise ConfigError(
            f"model must be a paragrad model, a family's name or 'auto', got {type(model).__name__}"
        )
    if not isinstance(data, Dataset):
        raise ConfigError(
            "data must be a paragrad.Dataset: build one with pg.Dataset(X, y) or pg.load(path, target=...)"
        )
    if model in (None, "auto"):
        if not data.has_labels:
            raise DataError(
                f"{data.source}: no target values to train on "
                f"(name the label column with {setting('target')})"
            )
        name, reason = choose_model(data)
        return get_model(name)(), f"{name} ({reason})"
    return get_model(model)(), ""


def start_model(init: Model | str | os.PathLike, model: Model, data: Dataset) -> Model:
    """The trained model ``init=`` names, refused with the reason when it cannot start this
    run: another family, or features that differ from the data's."""
    from paragrad.training.checkpoint import load_model

    start = init if isinstance(init, Model) else load_model(init)
    start._check_trained()
    if start.name != model.name:
        raise ConfigError(f"init: a {start.name} model cannot start a {model.name} model's training")
    if start.num_features_ != data.num_features:
        raise DataError(
            f"init: the model was trained on {start.num_features_} features, the data has {data.num_features}"
        )
    if (
        start.feature_names_ is not None
        and data.feature_names is not None
        and tuple(start.feature_names_) != tuple(data.feature_names)
    ):
        raise DataError(
            f"init: the model's features ({', '.join(start.feature_names_[:5])}, ...) are not the data's "
            f"({', '.join(data.feature_names[:5])}, ...)"
        )
    return start


def initial_params(start: Model, model: Model) -> np.ndarray:
    """``start``'s parameters, once ``model`` is set up from the data: refused when the
    classes or the shapes differ."""
    if model.is_classifier and not np.array_equal(
        np.asarray(start.classes_).astype(str), np.asarray(model.classes_).astype(str)
    ):
        raise DataError(
            f"init: the model's classes {np.asarray(start.classes_).tolist()} are not the data's "
            f"{np.asarray(model.classes_).tolist()}"
        )
    if start.num_params != model.num_params:
        raise ConfigError(
            f"init: {start!r} has {start.num_params} parameters, {model!r} needs {model.num_params}: "
            "start from a model of the same shape"
        )
    return np.array(start.params, dtype=np.float64)
