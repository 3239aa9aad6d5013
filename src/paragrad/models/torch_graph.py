"""A Torch model read back from its file without the code that built the module.

``Torch.save`` keeps the trained module in the file as an ONNX graph (``torch.onnx.export``,
plain bytes: loading it runs no code), beside the parameters that ``Torch.load`` puts back
into a module for more training. :func:`paragrad.load_model` reads such a file as a
:class:`TorchGraph`, which predicts with onnxruntime as the module does (in the module's
float type), so that ``paragrad serve`` and ``paragrad export`` take Torch models too.
It only predicts: training goes on with ``Torch.load(path, module)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.errors import ConfigError, ModelFileError
from paragrad.models.base import Classifier, Model

GRAPH_INPUT = "X"
GRAPH_OUTPUT = "scores"


class TorchGraph(Model):
    """A trained Torch regressor, predicting through its module's ONNX graph."""

    name = "torch"

    def __init__(self, graph: bytes) -> None:
        super().__init__()
        self.graph = bytes(graph)
        self._session: Any = None

    def get_config(self) -> dict[str, Any]:
        return {"graph_bytes": len(self.graph)}

    def __getstate__(self) -> dict[str, Any]:  # a session does not travel to workers
        return {key: value for key, value in self.__dict__.items() if key != "_session"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = None

    @property
    def num_params(self) -> int:
        return 0 if self.params_ is None else len(self.params_)

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        raise ConfigError(
            "a Torch model read with load_model only predicts: train it further with "
            "pg.models.Torch.load(path, module)"
        )

    def scores(self, X: np.ndarray) -> np.ndarray:
        """The module's outputs for prepared rows ``X``, as float64."""
        session = self._started()
        kind = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
        (out,) = session.run([GRAPH_OUTPUT], {GRAPH_INPUT: np.ascontiguousarray(X, dtype=kind)})
        return np.asarray(out, dtype=np.float64)

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        out = self.scores(X)
        return out.reshape(len(out))

    def _started(self) -> Any:
        if self._session is None:
            try:
                import onnxruntime
            except ImportError:
                raise ConfigError(
                    "a Torch model file predicts with onnxruntime: pip install 'paragrad[onnx]'"
                ) from None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # as numpy's models predict: one thread a process
            options.inter_op_num_threads = 1
            try:
                self._session = onnxruntime.InferenceSession(
                    self.graph, options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:
                raise ModelFileError(f"the Torch model's graph cannot be read: {exc}") from None
        return self._session


class TorchGraphClassifier(TorchGraph, Classifier):
    """A trained Torch classifier: labels and probabilities from its module's class scores."""

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.scores(X)


def module_graph(module: Any, num_features: int, dtype: Any, opset: int = 17) -> bytes:
    """``module`` (with its trained parameters) as ONNX bytes: input ``X`` (rows x features,
    in the module's float type), output ``scores``."""
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    example = torch.zeros(2, num_features, dtype=dtype)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, and kept
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter (dynamo=False) takes a file object
            input_names=[GRAPH_INPUT],
            output_names=[GRAPH_OUTPUT],
            dynamic_axes={GRAPH_INPUT: {0: "N"}, GRAPH_OUTPUT: {0: "N"}},
            opset_version=opset,
            dynamo=False,
        )
    return buffer.getvalue()
