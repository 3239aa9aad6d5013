"""A fixed ONNX model run by onnxruntime, as a teacher for :func:`paragrad.distill`.

It predicts and evaluates as a paragrad model does but has no parameters to train. A
classifier's graph must have a ``proba`` output (rows x classes), as ``paragrad export``
writes; its raw scores are taken as the log-probabilities, so that softening them at a
temperature is softening the probabilities. A regression graph has one output. The
classes come from the file's ``classes`` metadata (paragrad's), else ``0..k-1``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.errors import ConfigError, ModelFileError
from paragrad.models.base import Classifier, Model


def load_onnx(path: str | os.PathLike) -> Model:
    """The ONNX file at ``path`` as a model (see the module's doc)."""
    content = Path(path).read_bytes()
    session = _session(content, path)
    outputs = [output.name for output in session.get_outputs()]
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or not isinstance(inputs[0].shape[1], int):
        raise ModelFileError(f"{path}: an ONNX model with one input of rows x features is needed")
    metadata = session.get_modelmeta().custom_metadata_map
    model: OnnxModel
    if "proba" in outputs:
        classes = json.loads(metadata.get("classes", "null"))
        width = session.get_outputs()[outputs.index("proba")].shape[1]
        if classes is None:
            if not isinstance(width, int):
                raise ModelFileError(f"{path}: the number of classes is not in the file")
            classes = list(range(width))
        model = OnnxClassifier(content)
        model.setup(inputs[0].shape[1], np.asarray(classes))
    elif len(outputs) == 1:
        model = OnnxModel(content)
        model.setup(inputs[0].shape[1])
    else:
        raise ModelFileError(
            f"{path}: a classifier's graph needs a 'proba' output; found {', '.join(outputs)}"
        )
    model.params_ = np.zeros(0)
    return model


def _session(content: bytes, path: Any = "the model") -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("an ONNX model needs onnxruntime: pip install 'paragrad[onnx]'") from None
    try:
        return onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ModelFileError(f"{path}: not an ONNX model onnxruntime can run ({exc})") from None


class OnnxModel(Model):
    """A regression model in an ONNX graph (one output)."""

    name = "onnx"

    def __init__(self, content: bytes) -> None:
        super().__init__()
        self.content = content
        self._runner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runner": None}  # a session does not pickle: made again

    def get_config(self) -> dict[str, Any]:
        return {}

    @property
    def num_params(self) -> int:
        return 0

    def _run(self, X: np.ndarray) -> list[np.ndarray]:
        if self._runner is None:
            self._runner = _session(self.content)
        session = self._runner
        dtype = np.float32 if "float)" in session.get_inputs()[0].type else np.float64
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(X, dtype=dtype)})

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(X)[0], dtype=np.float64).reshape(len(X))

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        residual = self.decision_function(params, X) - y
        return 0.5 * float(residual @ residual), np.zeros(0)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.content)


class OnnxClassifier(OnnxModel, Classifier):
    """A classifier in an ONNX graph with a ``proba`` output."""

    def decision_function(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        names = [output.name for output in _session_of(self).get_outputs()]
        proba = np.asarray(self._run(X)[names.index("proba")], dtype=np.float64)
        return np.log(np.maximum(proba, np.finfo(np.float64).tiny))

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        log_p = self.decision_function(params, X)
        return -float(log_p[np.arange(len(y)), y.astype(np.intp)].sum()), np.zeros(0)


def _session_of(model: OnnxModel) -> Any:
    if model._runner is None:
        model._runner = _session(model.content)
    return model._runner
