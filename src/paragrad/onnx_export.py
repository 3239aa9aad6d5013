"""ONNX export of the numpy models, and of Torch models read from their files (the
module's own graph, kept there by ``Torch.save``): a graph that predicts as ``model.predict`` does.

The graph takes one input ``X`` (rows x features, the model's numeric features after any
one-hot encoding) and applies the training standardisation as paragrad does,
``(X - mean) / scale`` in float64. Its outputs are ``predict`` (values, or the labels in
their own type) and, for classifiers, ``proba`` (rows x classes, in ``classes_`` order).
The ``onnx`` package is imported only when a model is exported.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from paragrad import __version__
from paragrad.core.atomic import atomic_write
from paragrad.errors import ConfigError
from paragrad.models import MLP, Classifier, Model, Torch
from paragrad.models.linear_layout import LinearLayout
from paragrad.models.logistic import LogisticRegression
from paragrad.models.torch_graph import TorchGraph

OPSET = 17  # what onnxruntime 1.18 and later run
IR_VERSION = 8  # the IR version of opset 17, so that older runtimes load the file
DTYPES = ("float64", "float32")
ROWS = "N"  # the symbolic row count of the input and the outputs

Layer = tuple[np.ndarray, np.ndarray | None]
# A layer's int8 weights and their scale per output unit, from the model file's arrays.
Quantized = tuple[np.ndarray, np.ndarray]


def export_onnx(model: Model, path: str | os.PathLike, *, dtype: str = "float64") -> None:
    """Write the trained ``model`` to ``path`` as an ONNX model, atomically.

    ``dtype`` is the float type of the input, the weights and the outputs: ``float64``
    reproduces ``model.predict`` to round-off; ``float32`` halves the weights' size.
    """
    onnx = import_onnx()
    proto = to_onnx(model, dtype=dtype)
    onnx.checker.check_model(proto)
    with atomic_write(path) as handle:
        handle.write(proto.SerializeToString())


def import_onnx() -> Any:
    """The ``onnx`` module, or a clear error that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("export needs onnx: pip install 'paragrad[onnx]'") from None
    return onnx


def to_onnx(model: Model, *, dtype: str = "float64") -> Any:
    """The ONNX ``ModelProto`` that computes ``model``'s predictions (see the module's doc)."""
    onnx = import_onnx()
    _check_exportable(model, dtype)
    graph = _Graph(onnx, np.dtype(dtype))
    features = _standardised(graph, model)
    if isinstance(model, TorchGraph):
        scores = _module(graph, features, model)
    else:
        scores = _network(graph, features, *_layers(model), _quantized(model))
    if isinstance(model, LogisticRegression):
        _binary_outputs(graph, model, scores)
    elif isinstance(model, Classifier):
        _multiclass_outputs(graph, model, scores)
    else:
        graph.node("Reshape", [scores, graph.constant(np.array([-1]))], output="predict")
        graph.output("predict", graph.float_type, [ROWS])
    graph.inputs.append(
        onnx.helper.make_tensor_value_info("X", graph.float_type, [ROWS, model.num_features_])
    )
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, model.name, graph.inputs, graph.outputs, graph.constants),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="paragrad",
        producer_version=__version__,
        doc_string=f"paragrad {type(model).__name__}: predict(X), as model.predict does",
    )
    onnx.helper.set_model_props(proto, metadata(model))
    return proto


def metadata(model: Model) -> dict[str, str]:
    """What other tools may want to know, as the file's metadata_props (JSON values)."""
    classes = model.classes_
    return {
        "paragrad_version": __version__,
        "family": model.name,
        "model": repr(model),
        "feature_names": json.dumps(None if model.feature_names_ is None else list(model.feature_names_)),
        "target_name": json.dumps(model.target_name_),
        "classes": json.dumps(None if classes is None else classes.tolist()),
        "standardized": json.dumps(model.standardizer_ is not None),
        # one-hot columns: each text column's categories, the first the reference (no column)
        "encoding": json.dumps(None if model.encoding_ is None else model.encoding_.to_json()),
    }


def _check_exportable(model: Model, dtype: str) -> None:
    """Refuse what the graph cannot express: Torch models, untrained models, other types."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(model, Torch):
        raise ConfigError(
            "export a Torch model from its file: model.save(path), then export_onnx(load_model(path), ...)"
        )
    if not isinstance(model, (LinearLayout, MLP, TorchGraph)):
        raise ConfigError(f"cannot export a {type(model).__name__} to ONNX")
    model._check_trained()


def _layers(model: Model) -> tuple[list[Layer], str | None]:
    """The model's dense layers ``(W, b)`` (b None without an intercept) and the
    activation between them (None for the linear models, which have one layer)."""
    if isinstance(model, MLP):
        return [(W, b) for W, b in model.layers(model.params)], model.activation
    assert isinstance(model, LinearLayout)
    W, b = model.split(model.params)
    return [(W, b if isinstance(b, np.ndarray) else None)], None


class _Graph:
    """The nodes, constants, inputs and outputs of a graph being built, with fresh names."""

    def __init__(self, onnx: Any, float_dtype: np.dtype) -> None:
        self.onnx = onnx
        self.float_dtype = float_dtype
        self.float_type: int = onnx.helper.np_dtype_to_tensor_dtype(float_dtype)
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, array: np.ndarray, stem: str = "const") -> str:
        """A constant tensor in the graph (an initializer); returns its name."""
        name = self._name(stem)
        values = np.asarray(array)
        if values.dtype.kind in "UO":  # text: an ONNX STRING tensor
            values = values.astype(object)
        self.constants.append(self.onnx.numpy_helper.from_array(values, name))
        return name

    def weights(self, array: np.ndarray, stem: str) -> str:
        """A constant in the graph's float type."""
        return self.constant(np.asarray(array, dtype=self.float_dtype), stem)

    def node(self, op: str, inputs: list[str], *, output: str | None = None, **attributes: Any) -> str:
        """Add an ``op`` node; returns the name of its (one) output."""
        output = output or self._name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], **attributes))
        return output

    def output(self, name: str, elem_type: int, shape: list[str | int]) -> None:
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))


def _standardised(graph: _Graph, model: Model) -> str:
    """``X``, standardised as ``Model.prepare`` does: in float64, then in the input's type."""
    standardizer = model.standardizer_
    if standardizer is None:
        return "X"
    double = graph.onnx.TensorProto.DOUBLE
    x = "X" if graph.float_dtype == np.float64 else graph.node("Cast", ["X"], to=double)
    x = graph.node("Sub", [x, graph.constant(np.asarray(standardizer.mean, np.float64), "mean")])
    x = graph.node("Div", [x, graph.constant(np.asarray(standardizer.scale, np.float64), "scale")])
    return x if graph.float_dtype == np.float64 else graph.node("Cast", [x], to=graph.float_type)


def _module(graph: _Graph, x: str, model: TorchGraph) -> str:
    """The Torch module's own graph, kept in its file, inlined after the standardisation:
    its names prefixed, its input cast to the module's float type, its scores cast back."""
    onnx = graph.onnx
    inner = onnx.compose.add_prefix(onnx.load_from_string(model.graph), "module/")
    (entry,), (exit_,) = inner.graph.input, inner.graph.output
    x = graph.node("Cast", [x], to=entry.type.tensor_type.elem_type)
    graph.node("Identity", [x], output=entry.name)
    graph.nodes.extend(inner.graph.node)
    graph.constants.extend(inner.graph.initializer)
    return graph.node("Cast", [exit_.name], to=graph.float_type)


def _quantized(model: Model) -> list[Quantized] | None:
    """An int8 model's weights as its file stores them (int8 codes, float32 scales), else None."""
    if model.storage_ != "int8" or model.stored_ is None:
        return None
    codes, scales = model.stored_["int8_weights"], model.stored_["int8_scales"]
    layers, used_codes, used_scales = [], 0, 0
    for _, rows, cols in model.weight_matrices():
        layers.append(
            (
                codes[used_codes : used_codes + rows * cols].reshape(rows, cols),
                scales[used_scales : used_scales + cols],
            )
        )
        used_codes, used_scales = used_codes + rows * cols, used_scales + cols
    return layers


def _dequantized(graph: _Graph, codes: np.ndarray, scales: np.ndarray, index: int) -> str:
    """``DequantizeLinear`` of int8 weights with a float32 scale per column (output unit),
    cast to the graph's float type: the weights ``model.params`` holds, bit for bit."""
    zero = np.zeros(len(scales), dtype=np.int8)
    weights = graph.node(
        "DequantizeLinear",
        [
            graph.constant(codes, f"W{index}_int8"),
            graph.constant(scales, f"W{index}_scale"),
            graph.constant(zero),
        ],
        axis=1,
    )
    if graph.float_dtype == np.float32:
        return weights
    return graph.node("Cast", [weights], to=graph.float_type)


def _network(
    graph: _Graph,
    x: str,
    layers: list[Layer],
    activation: str | None,
    quantized: list[Quantized] | None = None,
) -> str:
    """``x @ W + b`` for each layer, the activation between layers; returns the scores.
    With ``quantized``, the weights are stored as int8 and dequantized in the graph."""
    for index, (W, b) in enumerate(layers):
        if quantized is None:
            weights = graph.weights(W, f"W{index}")
        else:
            weights = _dequantized(graph, *quantized[index], index)
        x = graph.node("MatMul", [x, weights])
        if b is not None:
            x = graph.node("Add", [x, graph.weights(b, f"b{index}")])
        if activation is not None and index < len(layers) - 1:
            x = graph.node("Relu" if activation == "relu" else "Tanh", [x])
    return x


def _binary_outputs(graph: _Graph, model: Classifier, logit: str) -> None:
    """Logistic regression: proba ``[1 - p, p]`` with ``p = sigmoid(z)``, and the label
    ``classes_[z > 0]``, decided on the logit as ``LogisticRegression.labels_from`` does."""
    p = graph.node("Sigmoid", [logit])
    q = graph.node("Sub", [graph.weights(np.array(1.0), "one"), p])
    graph.node("Concat", [q, p], output="proba", axis=1)
    positive = graph.node("Greater", [logit, graph.weights(np.array(0.0), "zero")])
    codes = graph.node("Cast", [positive], to=graph.onnx.TensorProto.INT64)
    codes = graph.node("Squeeze", [codes, graph.constant(np.array([1]))])
    _labels(graph, model, codes)


def _multiclass_outputs(graph: _Graph, model: Classifier, scores: str) -> None:
    """Softmax over the scores as proba; the label of the largest score (the first on a tie)."""
    graph.node("Softmax", [scores], output="proba", axis=1)
    codes = graph.node("ArgMax", [scores], axis=1, keepdims=0)
    _labels(graph, model, codes)


def _labels(graph: _Graph, model: Classifier, codes: str) -> None:
    """The ``predict`` output, ``classes_[codes]`` in the classes' own type, and the
    ``proba`` output's declaration."""
    classes = _classes_array(model.classes_)
    graph.node("Gather", [graph.constant(classes, "classes"), codes], output="predict", axis=0)
    graph.output("predict", graph.onnx.helper.np_dtype_to_tensor_dtype(classes.dtype), [ROWS])
    graph.output("proba", graph.float_type, [ROWS, len(classes)])


def _classes_array(classes: np.ndarray | None) -> np.ndarray:
    """The classes as ONNX holds them: booleans, int64, float64 or text."""
    assert classes is not None
    kind = classes.dtype.kind
    if kind == "b":
        return classes.astype(bool)
    if kind in "iu":
        return classes.astype(np.int64)
    if kind == "f":
        return classes.astype(np.float64)
    return np.array([str(label) for label in classes], dtype=object)
