"""paragrad: data-parallel training and inference.

>>> import paragrad as pg
>>> ds = pg.make_classification(1000, 5, seed=0)
>>> run = pg.train(pg.models.LogisticRegression(), ds, engine="serial", workers=2)
"""

from __future__ import annotations

from paragrad import callbacks, models, optim
from paragrad.checkpoint import load_model, save_model
from paragrad.data import Dataset, load, make_classification, make_regression, save_dataset
from paragrad.errors import (
    ConfigError,
    ConvergenceWarning,
    DataError,
    ModelFileError,
    ParagradError,
    TrainingDiverged,
)
from paragrad.inference import evaluate, predict
from paragrad.serving import serve
from paragrad.strategies import SGD, GradientDescent, LocalSGD
from paragrad.trainer import Run, train

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "ConfigError",
    "ConvergenceWarning",
    "DataError",
    "Dataset",
    "GradientDescent",
    "LocalSGD",
    "ModelFileError",
    "ParagradError",
    "Run",
    "TrainingDiverged",
    "callbacks",
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
