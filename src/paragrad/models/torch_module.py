"""Any ``torch.nn.Module`` as a paragrad model: one flat parameter vector, autograd gradients.

Needs PyTorch (``pip install 'paragrad[torch]'``; a CPU build is enough). The module's
parameters travel as one float64 vector and are copied into the module (in its own float
type) for every evaluation; gradients are sums over the rows, as for every model.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.errors import ConfigError, ModelFileError
from paragrad.model_file import standardizer_arrays, write_arrays
from paragrad.models.base import Classifier, Model, softmax

LOSSES = ("cross_entropy", "mse")


def _torch():
    try:
        import torch
    except ImportError:
        raise ConfigError("pg.models.Torch needs PyTorch: pip install 'paragrad[torch]'") from None
    return torch


class Torch(Model):
    """Train a ``torch.nn.Module`` with paragrad's strategies and engines.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a float tensor of shape (rows, features) to outputs (rows, classes) for
        ``loss="cross_entropy"`` or (rows,) / (rows, 1) for ``loss="mse"``.
    loss : {"cross_entropy", "mse"}
        Summed cross-entropy over integer labels 0..k-1, or ``1/2 (out - y)^2``.
    l2 : float
        L2 penalty on every parameter.

    A ``Torch`` model itself is a regressor: ``loss="cross_entropy"`` (the default) makes
    a :class:`TorchClassifier`, the subclass that adds the classes and their probabilities.
    """

    name = "torch"
    loss_name: str = "mse"

    def __new__(cls, module: Any = None, loss: str = "cross_entropy", l2: float = 0.0) -> Torch:
        if cls is Torch and loss == "cross_entropy":
            cls = TorchClassifier
        return super().__new__(cls)

    def __getnewargs_ex__(self) -> tuple[tuple, dict[str, Any]]:
        return (), {"loss": self.loss_name}  # so that a copy is of this class again

    def __init__(self, module: Any, loss: str = "cross_entropy", l2: float = 0.0) -> None:
        super().__init__(l2=l2)
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if loss != self.loss_name:
            raise ConfigError(
                f"{type(self).__name__} has loss {self.loss_name!r}: use Torch(module, loss={loss!r})"
            )
        self.module = copy.deepcopy(module)
        self._dtype = next(self.module.parameters()).dtype

    def get_config(self) -> dict[str, Any]:
        return {"loss": self.loss_name, "l2": self.l2, "module": repr(self.module)}

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def init_params(self, seed: int = 0) -> np.ndarray:
        """The module's own initial parameters (seed the module's construction for repeats)."""
        torch = _torch()
        return torch.nn.utils.parameters_to_vector(self.module.parameters()).detach().double().numpy().copy()

    def _load(self, params: np.ndarray) -> None:
        torch = _torch()
        vector = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float64)).to(self._dtype)
        torch.nn.utils.vector_to_parameters(vector, self.module.parameters())

    def _inputs(self, X):
        torch = _torch()
        if hasattr(X, "toarray"):
            X = X.toarray()
        with warnings.catch_warnings():  # shared shards are read-only; torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(X)).to(self._dtype)

    def _outputs(self, X):
        out = self.module(self._inputs(X))
        return out.reshape(len(out))

    def _loss(self, out, y: np.ndarray):
        """The loss sum, as a tensor, of the module's outputs ``out`` against ``y``."""
        torch = _torch()
        target = torch.from_numpy(np.asarray(y)).to(self._dtype)
        return 0.5 * torch.sum((out - target) ** 2)

    def loss_grad(self, params: np.ndarray, X, y: np.ndarray) -> tuple[float, np.ndarray]:
        torch = _torch()
        self._load(params)
        self.module.zero_grad(set_to_none=True)
        loss = self._loss(self._outputs(X), y)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.module.parameters()]
        return float(loss.detach()), torch.nn.utils.parameters_to_vector(grads).double().numpy()

    def decision_function(self, params: np.ndarray, X) -> np.ndarray:
        torch = _torch()
        self._load(params)
        with torch.no_grad():
            return self._outputs(X).double().numpy()

    # -- saving: plain arrays, never a pickled module --------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained parameters (and classes) as a ``.npz``; the module's code stays yours.

        Not a full model file: a module's code cannot travel without pickle, so
        :meth:`load` takes the module again.
        """
        self._check_trained()
        arrays = {
            "params": self.params_,
            "classes": np.array([] if self.classes_ is None else self.classes_),
            "num_features": np.array(self.num_features_),
            **standardizer_arrays(self.standardizer_),
        }
        write_arrays(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, module, loss: str = "cross_entropy") -> Torch:
        """The model saved by :meth:`save`, with its parameters loaded into ``module``."""
        from paragrad.data import Standardizer, open_numpy

        model = cls(module, loss)
        with open_numpy(
            Path(path), "npz", what="a paragrad Torch model file", error=ModelFileError
        ) as archive:
            if "params" not in archive.files:
                raise ModelFileError(f"{path}: not a paragrad Torch model file")
            params, classes = archive["params"], archive["classes"]
            num_features = int(archive["num_features"])
            if "standardizer_mean" in archive.files:
                model.standardizer_ = Standardizer(
                    archive["standardizer_mean"], archive["standardizer_scale"]
                )
        model.setup(num_features, classes.astype(np.float64) if len(classes) else None)
        if params.shape != (model.num_params,):
            raise ModelFileError(
                f"{path}: {params.size} parameters stored, but the module has {model.num_params}"
            )
        model.params_ = params
        model._load(params)
        return model


class TorchClassifier(Torch, Classifier):
    """A :class:`Torch` model whose outputs are class scores, trained with cross-entropy."""

    loss_name = "cross_entropy"

    def _outputs(self, X):
        return self.module(self._inputs(X))

    def _loss(self, out, y: np.ndarray):
        torch = _torch()
        return torch.nn.functional.cross_entropy(out, torch.from_numpy(y).long(), reduction="sum")

    def proba(self, params: np.ndarray, X) -> np.ndarray:
        return softmax(self.decision_function(params, X))
