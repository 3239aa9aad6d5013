"""Model families: each a loss and gradient sum over one flat parameter vector."""

from __future__ import annotations

from paragrad.errors import ConfigError
from paragrad.models.base import Classifier, Model
from paragrad.models.linear import LinearRegression
from paragrad.models.logistic import LogisticRegression
from paragrad.models.mlp import MLP, MLPClassifier
from paragrad.models.softmax import SoftmaxRegression
from paragrad.models.torch_module import Torch, TorchClassifier

MODELS: dict[str, type[Model]] = {
    cls.name: cls for cls in (LinearRegression, LogisticRegression, SoftmaxRegression, MLP)
}


def get_model(name: str) -> type[Model]:
    """The model class for a short name (``linear``) or a class name (``LinearRegression``)."""
    for short, cls in MODELS.items():
        if name in (short, cls.__name__):
            return cls
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


__all__ = [
    "MLP",
    "Classifier",
    "LinearRegression",
    "LogisticRegression",
    "MLPClassifier",
    "Model",
    "SoftmaxRegression",
    "Torch",
    "TorchClassifier",
    "get_model",
]
