"""paragrad: data-parallel training and inference.

>>> import paragrad as pg
>>> ds = pg.make_classification(1000, 5, seed=0)
>>> run = pg.train(pg.models.LogisticRegression(), ds, engine="serial", workers=2)

Names are loaded on first use, so ``import paragrad`` (and a worker process, which needs
only the models and tasks) does not pay for the modules a program never touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paragrad.core.lazy import lazy_names

__version__ = "0.1.0"

# Each public name and the module it comes from (a submodule: the module itself).
_SOURCES = {
    "SGD": "paragrad.training.strategies",
    "ConfigError": "paragrad.errors",
    "ConvergenceWarning": "paragrad.errors",
    "DataError": "paragrad.errors",
    "DataWarning": "paragrad.errors",
    "Dataset": "paragrad.data",
    "GradientDescent": "paragrad.training.strategies",
    "LocalSGD": "paragrad.training.strategies",
    "ModelFileError": "paragrad.errors",
    "OutputError": "paragrad.errors",
    "ParagradError": "paragrad.errors",
    "Run": "paragrad.training.trainer",
    "TrainingDiverged": "paragrad.errors",
    "callbacks": "paragrad.callbacks",
    "compress": "paragrad.training.model_compression",
    "distill": "paragrad.training.distillation",
    "evaluate": "paragrad.inference",
    "load": "paragrad.data",
    "load_model": "paragrad.training.checkpoint",
    "make_classification": "paragrad.data",
    "make_regression": "paragrad.data",
    "models": "paragrad.models",
    "optim": "paragrad.optim",
    "predict": "paragrad.inference",
    "save_dataset": "paragrad.data",
    "save_model": "paragrad.training.checkpoint",
    "serve": "paragrad.serving",
    "train": "paragrad.training.trainer",
}

__all__ = [
    "SGD",
    "ConfigError",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "Dataset",
    "GradientDescent",
    "LocalSGD",
    "ModelFileError",
    "OutputError",
    "ParagradError",
    "Run",
    "TrainingDiverged",
    "callbacks",
    "compress",
    "distill",
    "evaluate",
    "load",
    "load_model",
    "make_classification",
    "make_regression",
    "models",
    "optim",
    "predict",
    "save_dataset",
    "save_model",
    "serve",
    "train",
]


__getattr__, __dir__ = lazy_names(globals(), _SOURCES)


if TYPE_CHECKING:
    from paragrad import callbacks, models, optim
    from paragrad.data import Dataset, load, make_classification, make_regression, save_dataset
    from paragrad.errors import (
        ConfigError,
        ConvergenceWarning,
        DataError,
        DataWarning,
        ModelFileError,
        ParagradError,
        TrainingDiverged,
    )
    from paragrad.inference import evaluate, predict
    from paragrad.serving import serve
    from paragrad.training.checkpoint import load_model, save_model
    from paragrad.training.distillation import distill
    from paragrad.training.model_compression import compress
    from paragrad.training.strategies import SGD, GradientDescent, LocalSGD
    from paragrad.training.trainer import Run, train
