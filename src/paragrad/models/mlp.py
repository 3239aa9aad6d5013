"""A multilayer perceptron in numpy with its own backward pass."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from paragrad.errors import ConfigError
from paragrad.models.base import Classifier, Model, features_of
from paragrad.models.crossentropy import log_softmax_xent
from paragrad.models.rowwise import row_product

ACTIVATIONS = ("relu", "tanh")
TASKS = ("classification", "regression")


class MLP(Model):
    """Fully connected network: ``hidden`` layers, then a linear output layer.

    For ``task="classification"`` the output is a softmax over the classes (cross-entropy
    loss); for ``task="regression"`` it is one value (loss ``1/2 (out - y)^2``). ``l2``
    penalises the weights, not the biases. Weights start from a seeded He (relu) or
    LeCun (tanh) normal initialisation.

    An ``MLP`` itself is a regressor: ``MLP(task="classification")`` (the default) makes
    an :class:`MLPClassifier`, the subclass that adds the classes and their probabilities.
    """

    name = "mlp"
    task: str = "regression"

    def __new__(
        cls,
        hidden: tuple[int, ...] = (64,),
        activation: str = "relu",
        task: str = "classification",
        l2: float = 0.0,
    ) -> MLP:
        if cls is MLP and task == "classification":
            cls = MLPClassifier
        return super().__new__(cls)

    def __getnewargs_ex__(self) -> tuple[tuple, dict[str, Any]]:
        return (), {"task": self.task}  # so that a copy is of this class again

    def __init__(
        self,
        hidden: tuple[int, ...] = (64,),
        activation: str = "relu",
        task: str = "classification",
        l2: float = 0.0,
    ) -> None:
        super().__init__(l2=l2)
        hidden = (hidden,) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"hidden layer sizes must be positive, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if task != self.task:
            raise ConfigError(f"{type(self).__name__} does {self.task}, not {task}: use MLP(task={task!r})")
        self.hidden = hidden
        self.activation = activation

    def get_config(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "activation": self.activation,
            "task": self.task,
            "l2": self.l2,
        }

    @property
    def num_outputs(self) -> int:
        """Width of the output layer."""
        return 1

    @property
    def layer_sizes(self) -> list[int]:
        return [features_of(self), *self.hidden, self.num_outputs]

    @property
    def num_params(self) -> int:
        sizes = self.layer_sizes
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))

    def layers(self, vector: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``(W, b)`` of each layer inside a flat parameter (or gradient) vector."""
        views, offset = [], 0
        sizes = self.layer_sizes
        for fan_in, fan_out in itertools.pairwise(sizes):
            W = vector[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
            offset += fan_in * fan_out
            views.append((W, vector[offset : offset + fan_out]))
            offset += fan_out
        return views

    def weight_matrices(self) -> list[tuple[int, int, int]]:
        matrices, offset = [], 0
        for fan_in, fan_out in itertools.pairwise(self.layer_sizes):
            matrices.append((offset, fan_in, fan_out))
            offset += (fan_in + 1) * fan_out
        return matrices

    def _make_weight_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_params, dtype=bool)
        for W, _ in self.layers(mask):
            W[...] = True
        return mask

    def init_params(self, seed: int = 0) -> np.ndarray:
        """``torch.nn.Linear``'s scheme, so that this network trains as the same network in
        PyTorch does: every weight and bias uniform in +-1/sqrt(the layer's inputs)."""
        rng = np.random.default_rng(seed)
        params = np.zeros(self.num_params)
        for W, b in self.layers(params):
            bound = 1.0 / np.sqrt(W.shape[0])
            W[...] = rng.uniform(-bound, bound, W.shape)
            b[...] = rng.uniform(-bound, bound, b.shape)
        return params

    def _act(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0.0) if self.activation == "relu" else np.tanh(z)

    def _act_grad(self, activated: np.ndarray) -> np.ndarray:
        """Derivative of the activation, from its output."""
        if self.activation == "relu":
            return (activated > 0).astype(activated.dtype)
        return 1.0 - activated**2

    def _forward(
        self,
        params: np.ndarray,
        X: np.ndarray,
        product: Callable[[np.ndarray, np.ndarray], np.ndarray] = operator.matmul,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Every layer's activations and the network's outputs; predictions pass
        :func:`row_product` so that a row's outputs do not depend on the rows beside it."""
        *hidden, (W_out, b_out) = self.layers(params)
        kind = X.dtype  # weights of this type already are used as they are, not copied
        outputs = [X]
        for W, b in hidden:
            z = product(outputs[-1], W.astype(kind, copy=False)) + b.astype(kind, copy=False)
            outputs.append(self._act(z))
        W_out, b_out = W_out.astype(kind, copy=False), b_out.astype(kind, copy=False)
        return outputs, product(outputs[-1], W_out) + b_out

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self._forward(params, X, row_product)[1][:, 0]

    def output_loss(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss sum of the network's outputs ``out`` against ``y``, and dLoss/dout."""
        residual = out[:, 0] - y
        return 0.5 * float(residual @ residual), residual[:, None]

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        outputs, out = self._forward(params, X)
        loss, delta = self.output_loss(out, y)
        grad = np.empty(self.num_params)
        layers, grad_layers = self.layers(params), self.layers(grad)
        for index in range(len(layers) - 1, -1, -1):
            W, _ = layers[index]
            gW, gb = grad_layers[index]
            gW[...] = outputs[index].T @ delta
            gb[...] = delta.sum(axis=0)
            if index > 0:
                delta = (delta @ W.T.astype(delta.dtype)) * self._act_grad(outputs[index])
        return loss, grad


class MLPClassifier(MLP, Classifier):
    """An :class:`MLP` with a softmax output over the classes and cross-entropy loss."""

    task = "classification"

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self._forward(params, X, row_product)[1]

    def output_loss(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return log_softmax_xent(out, y)
