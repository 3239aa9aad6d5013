"""Any ``torch.nn.Module`` as a paragrad model: one flat parameter vector, autograd gradients.

Needs PyTorch (``pip install 'paragrad[torch]'``; a CPU build is enough). The module's
parameters travel as one float64 vector and are copied into the module (in its own float
type) for every evaluation; gradients are sums over the rows, as for every model.

The loss may be one of two names, a ``torch.nn`` loss module or a function, and is
always applied as a *sum* over the rows: workers' sums add up to the sum over all rows,
whereas means taken on shards of different sizes would not.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from paragrad.core.model_file import standardizer_arrays, write_arrays
from paragrad.data import take_rows
from paragrad.data.checks import Features
from paragrad.errors import ConfigError, ModelFileError
from paragrad.models.base import Classifier, Model, features_of

if TYPE_CHECKING:
    from torch import Tensor

LOSSES = ("cross_entropy", "mse")
TASKS = ("classification", "regression")
PROBE_RTOL = 1e-4  # float32 rounding of a two-row sum, with room to spare


def _torch() -> ModuleType:
    try:
        import torch
    except ImportError:
        raise ConfigError("pg.models.Torch needs PyTorch: pip install 'paragrad[torch]'") from None
    return torch


def _tensor_over(X: np.ndarray) -> Tensor:
    """A tensor over ``X``'s memory. Shared shards are read-only, which torch warns of;
    paragrad's tensors over them are only read."""
    torch = _torch()
    if X.flags.writeable:  # a batch's rows, gathered
        return torch.from_numpy(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(X)


class Torch(Model):
    """Train a ``torch.nn.Module`` with paragrad's strategies and engines.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a float tensor of shape (rows, features) to outputs (rows, classes) for
        classification or (rows,) / (rows, 1) for regression.
    loss : "cross_entropy", "mse", torch.nn loss module or callable
        ``"cross_entropy"``: summed cross-entropy over integer labels 0..k-1;
        ``"mse"``: ``1/2 (out - y)^2`` summed. Otherwise a loss module such as
        ``torch.nn.HuberLoss()`` or a function ``(output, target) -> tensor``. It is
        applied as a sum over the rows, since paragrad adds the workers' sums: a module
        with a ``reduction`` attribute is copied with ``reduction="sum"``, and a function
        that takes a ``reduction`` keyword (as ``torch.nn.functional``'s losses do) is
        called with ``reduction="sum"``. Any other function must return the sum over the
        rows; :meth:`setup` checks this on two probe rows, because a mean would train
        with a step scaled by the batch size without any error. Regression outputs of
        shape (rows, 1) reach the loss as (rows,), the target's shape, so that
        element-wise losses do not broadcast. For worker processes, a function must be
        importable (defined with ``def`` at a module's top level), not a lambda.
    l2 : float
        L2 penalty on every parameter.
    task : {"classification", "regression"}, optional
        What the loss trains. By default ``"cross_entropy"``, ``torch.nn.CrossEntropyLoss``
        and ``torch.nn.NLLLoss`` mean classification (integer labels), anything else
        regression.

    Notes
    -----
    A ``Torch`` model itself is a regressor: a classification loss (the default) makes a
    :class:`TorchClassifier`, the subclass that adds the classes and their probabilities.
    A custom loss is not saved with the parameters; :meth:`load` takes it again.
    """

    name = "torch"
    task: ClassVar[str] = "regression"
    thread_safe: ClassVar[bool] = False  # the module holds the parameters a worker sets

    def __new__(
        cls, module: Any = None, loss: Any = "cross_entropy", l2: float = 0.0, *, task: str | None = None
    ) -> Torch:
        # Only picks the class (a copy gives just its task); __init__ checks the pair.
        if cls is Torch and (task or _task_of(loss, None)) == "classification":
            cls = TorchClassifier
        return super().__new__(cls)

    def __getnewargs_ex__(self) -> tuple[tuple, dict[str, Any]]:
        return (), {"task": self.task}  # so that a copy is of this class again

    def __init__(
        self, module: Any, loss: Any = "cross_entropy", l2: float = 0.0, *, task: str | None = None
    ) -> None:
        super().__init__(l2=l2)
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        wanted = _task_of(loss, task)
        if wanted != self.task:
            raise ConfigError(
                f"{type(self).__name__} is for {self.task}, but loss={_describe(loss)} trains "
                f"{wanted}: use Torch(module, loss=..., task={wanted!r})"
            )
        self.loss_name = loss if isinstance(loss, str) else _describe(loss)
        self._criterion = None if isinstance(loss, str) else _summed(loss)
        self.module = copy.deepcopy(module)
        self._dtype = next(self.module.parameters()).dtype

    def get_config(self) -> dict[str, Any]:
        config = {"loss": self.loss_name, "l2": self.l2, "module": repr(self.module)}
        if self._criterion is not None:  # a name implies the task; older runs' configs stay equal
            config["task"] = self.task
        return config

    def setup(self, num_features: int, labels: np.ndarray | None = None, **names: Any) -> None:
        """Fix the shapes, then check on two probe rows that a custom loss returns sums."""
        super().setup(num_features, labels, **names)
        if self._criterion is not None:
            self._check_sum_over_rows()

    def _check_sum_over_rows(self) -> None:
        """Refuse a loss whose value on two rows is not the sum of its values row by row."""
        torch = _torch()
        generator = torch.Generator().manual_seed(0)
        X = torch.randn(2, self.num_features_, generator=generator, dtype=torch.float64).numpy()
        y = np.zeros(2) if self.is_classifier else np.array([0.5, -1.5])
        with torch.no_grad():
            out = self._outputs(X)
            both = self._loss(out, y)
            if both.numel() != 1:
                raise ConfigError(
                    f"loss={self.loss_name} must return one number, the sum over the rows; "
                    f"it returned shape {tuple(both.shape)}"
                )
            one_by_one = float(self._loss(out[:1], y[:1])) + float(self._loss(out[1:], y[1:]))
        if not np.isclose(float(both), one_by_one, rtol=PROBE_RTOL, atol=1e-12):
            raise ConfigError(
                f"loss={self.loss_name} must return the sum over the rows (paragrad adds the "
                f"workers' sums), but on two rows it gave {float(both):.6g}, not the sum of the "
                f"rows' losses {one_by_one:.6g}: give it a reduction='sum' keyword or sum it"
            )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def init_params(self, seed: int = 0) -> np.ndarray:
        """The module's own initial parameters (seed the module's construction for repeats)."""
        torch = _torch()
        return torch.nn.utils.parameters_to_vector(self.module.parameters()).detach().double().numpy().copy()

    def _flat(self) -> tuple[Any, Any]:
        """One tensor holding every parameter and one every gradient, in the module's
        dtype: the parameters and their ``.grad`` become views into them (made once per
        process), so a round loads the parameters with one copy and reads the gradient
        with none, whatever the number of parameter tensors."""
        torch = _torch()
        flat = self.__dict__.get("_flat_tensors")
        parameters = list(self.module.parameters())
        # A copy of the module (pickled to a worker, deep-copied) has no .grad views yet.
        if flat is None or (parameters and parameters[0].grad is None):
            values = torch.nn.utils.parameters_to_vector(parameters).detach().clone()
            grads = torch.zeros_like(values)
            offset = 0
            for parameter in parameters:
                size = parameter.numel()
                parameter.data = values[offset : offset + size].view_as(parameter)
                parameter.grad = grads[offset : offset + size].view_as(parameter)
                offset += size
            flat = self.__dict__["_flat_tensors"] = (values, grads)
        return flat

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_flat_tensors"}

    def _load(self, params: np.ndarray) -> Tensor:
        """Set the module's parameters to ``params``; returns the tensor of their gradients."""
        values, grads = self._flat()
        values.numpy()[:] = params  # one copy, in the module's dtype
        return grads

    def take_rows(self, X: Features, rows: slice | np.ndarray) -> Features:
        """A batch's rows, gathered by torch where it has several threads (in the caller's
        process it runs each batch on every core; numpy's gather takes one), the same rows
        as numpy's gather bit for bit; numpy's gather for any other rows or arrays."""
        torch = _torch()
        plain = isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] > 1 and X.flags.c_contiguous
        plain = plain and min(X.strides) > 0 and X.dtype in (np.float32, np.float64) and X.dtype.isnative
        if not (plain and isinstance(rows, np.ndarray) and torch.get_num_threads() > 1):
            return take_rows(X, rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or (len(rows) and rows.min() < 0):
            return take_rows(X, rows)  # numpy's rules for other row numbers
        index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        return _tensor_over(X).index_select(0, index).numpy()

    def _inputs(self, X: Features) -> Tensor:
        if hasattr(X, "toarray"):
            X = X.toarray()
        return _tensor_over(np.ascontiguousarray(X)).to(self._dtype)

    def _outputs(self, X: Features) -> Tensor:
        out = self.module(self._inputs(X))
        return out.reshape(len(out))

    def _loss(self, out: Tensor, y: np.ndarray) -> Tensor:
        """The loss sum, as a tensor, of the module's outputs ``out`` against ``y``."""
        torch = _torch()
        target = torch.from_numpy(np.asarray(y)).to(self._dtype)
        if self._criterion is not None:
            return self._criterion(out, target)
        return 0.5 * torch.sum((out - target) ** 2)

    def loss_grad(self, params: np.ndarray, X: Features, y: np.ndarray) -> tuple[float, np.ndarray]:
        grads = self._load(params)
        grads.zero_()
        loss = self._loss(self._outputs(X), y)
        loss.backward()  # adds into the parameters' .grad, views of ``grads``
        return float(loss.detach()), grads.to(_torch().float64, copy=True).numpy()

    def decision_function(self, params: np.ndarray, X: Features) -> np.ndarray:
        torch = _torch()
        self._load(params)
        with torch.no_grad():
            return self._outputs(X).double().numpy()

    # -- saving: plain arrays, never a pickled module --------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained parameters (and classes) as a ``.npz``, with the trained module
        as an ONNX graph when the ``onnx`` package is installed.

        The module's code cannot travel without pickle: :meth:`load` takes the module again
        to train on. The graph is data, not code: :func:`paragrad.load_model` reads it to
        predict (and ``paragrad serve`` and ``paragrad export`` with it) without the module.
        """
        arrays = {
            "params": self.params,
            "classes": np.array([] if self.classes_ is None else self.classes_),
            "num_features": np.array(self.num_features_),
            **standardizer_arrays(self.standardizer_),
        }
        graph = self._graph()
        if graph is not None:
            arrays["graph"] = np.frombuffer(graph, dtype=np.uint8)
        write_arrays(path, arrays)

    def _graph(self) -> bytes | None:
        """The trained module as ONNX bytes; None (and a warning) where it cannot be exported."""
        from paragrad.models.torch_graph import module_graph

        try:
            import onnx  # noqa: F401  (torch.onnx.export writes through it)
        except ImportError:
            return None
        self._load(self.params)
        try:
            return module_graph(self.module, features_of(self), self._dtype)
        except Exception as exc:  # a module torch cannot export: the parameters are still saved
            warnings.warn(
                f"the module could not be exported to ONNX ({type(exc).__name__}: {exc}); the file "
                "holds its parameters only, for Torch.load(path, module)",
                stacklevel=3,
            )
            return None

    @classmethod
    def load(
        cls, path: str | os.PathLike, module: Any, loss: Any = "cross_entropy", *, task: str | None = None
    ) -> Torch:
        """The model saved by :meth:`save`, with its parameters loaded into ``module``.

        ``loss`` and ``task`` are those given to the constructor: a custom loss is code,
        which the file does not hold.
        """
        from paragrad.data import Standardizer, open_numpy

        model = cls(module, loss, task=task)
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
        model.setup(num_features, classes if len(classes) else None)  # labels in their own type
        if params.shape != (model.num_params,):
            raise ModelFileError(
                f"{path}: {params.size} parameters stored, but the module has {model.num_params}"
            )
        model.params_ = params
        model._load(params)
        return model


class TorchClassifier(Torch, Classifier):
    """A :class:`Torch` model whose outputs are class scores, trained with cross-entropy."""

    task = "classification"

    def _outputs(self, X: Features) -> Tensor:
        return self.module(self._inputs(X))

    def _loss(self, out: Tensor, y: np.ndarray) -> Tensor:
        torch = _torch()
        target = torch.from_numpy(np.asarray(y)).long()
        if self._criterion is not None:
            return self._criterion(out, target)
        return torch.nn.functional.cross_entropy(out, target, reduction="sum")


def _task_of(loss: Any, task: str | None) -> str:
    """Classification or regression: ``task`` when given, else what the loss implies."""
    if not isinstance(loss, str) and not callable(loss):
        raise ConfigError(
            f"loss= must be 'cross_entropy', 'mse', a torch.nn loss module or a function "
            f"(output, target) -> tensor, got {type(loss).__name__}"
        )
    if isinstance(loss, str) and loss not in LOSSES:
        raise ConfigError(f"loss= must be one of {', '.join(LOSSES)} or a callable, got {loss!r}")
    if task is not None and task not in TASKS:
        raise ConfigError(f"task= must be one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(loss, str):
        implied = "classification" if loss == "cross_entropy" else "regression"
        if task is not None and task != implied:
            raise ConfigError(f"loss={loss!r} is for {implied}, but task={task!r}")
        return implied
    if task is not None:
        return task
    nn = _torch().nn
    return "classification" if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) else "regression"


def _summed(loss: Callable) -> Callable:
    """``loss`` with a sum reduction where it has a setting for it (checked in ``setup``)."""
    if hasattr(loss, "reduction") and isinstance(loss, _torch().nn.Module):
        summed = copy.deepcopy(loss)
        summed.reduction = "sum"
        return summed
    try:
        takes_reduction = "reduction" in inspect.signature(loss).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        takes_reduction = False
    return functools.partial(loss, reduction="sum") if takes_reduction else loss


def _describe(loss: Any) -> str:
    """A short name for a loss in messages and the run's configuration."""
    if isinstance(loss, str):
        return repr(loss)
    return getattr(loss, "__qualname__", None) or repr(loss)
