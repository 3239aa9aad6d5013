"""The Open Inference Protocol's tensors (KServe V2 REST) to and from numpy.

A request holds one FP32/FP64 tensor of shape [rows, features] (any name), or one tensor
of shape [rows] or [rows, 1] per named feature. Every way a request can be wrong is a
:class:`RequestError` with the status to answer and one line saying what to fix.
"""

from __future__ import annotations

import array
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

# The protocol's numeric types, as numpy reads their JSON numbers; FP32 is rounded to
# float32 first, as the client meant it, then predicted in float64.
NUMERIC: dict[str, type[np.generic]] = {
    "FP64": np.float64,
    "FP32": np.float32,
    "FP16": np.float16,
    **{f"INT{bits}": np.dtype(f"int{bits}").type for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": np.dtype(f"uint{bits}").type for bits in (8, 16, 32, 64)},
}


NON_FINITE = re.compile(rb"\bNaN\b|\bInfinity\b")


class RequestError(Exception):
    """A request the server cannot answer: ``status`` and a one-line reason for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str]]:  # from the parsing process
        return type(self), (self.status, str(self))


class Signature(Protocol):
    """What parsing needs of a model version (a :class:`ModelVersion` is one)."""

    @property
    def num_features(self) -> int: ...

    @property
    def feature_names(self) -> tuple[str, ...] | None: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Checks:
    """What a request's tensors are checked against: the row limit, and whether the body
    may hold booleans among its numbers."""

    max_rows: int
    booleans: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: the rows, and what to send back (``binary``: the outputs
    asked for as raw bytes after the JSON, Triton's binary tensor extension)."""

    X: np.ndarray
    id: str | None
    outputs: tuple[str, ...]
    binary: frozenset[str] = frozenset()


def read_json(body: bytes) -> Any:
    """The request body as JSON (strict: NaN, Infinity and numbers beyond float64 are refused)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if NON_FINITE.search(body):
            raise RequestError(
                400, "the request holds NaN or Infinity, which JSON has not: send finite numbers"
            ) from None
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None


def parse_infer(
    body: bytes, version: Signature, max_rows: int, header_length: int | None = None
) -> InferRequest:
    """An ``/infer`` request body as rows in the model's feature order; with
    ``header_length`` (``Inference-Header-Content-Length``), the JSON is that many bytes
    and the tensors' raw data follows it (Triton's binary tensor extension)."""
    binary = b""
    if header_length is not None:
        if header_length > len(body):
            raise RequestError(
                400, f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes"
            )
        body, binary = body[:header_length], body[header_length:]
    request = read_json(body)
    if header_length is not None and isinstance(request, dict) and isinstance(request.get("inputs"), list):
        _attach_binary(request["inputs"], binary)
    return infer_request(request, version, Checks(max_rows, booleans=_may_hold_booleans(body)))


def infer_request(request: Any, version: Signature, checks: Checks) -> InferRequest:
    """A request read from JSON (or built from gRPC's message), each tensor's 'data' a list
    of numbers or a numpy array, as rows in the model's feature order."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the request needs 'inputs': a list of tensors")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "'id' must be a string")
    if request.get("parameters") is not None and not isinstance(request["parameters"], dict):
        raise RequestError(400, "'parameters' must be an object")
    inputs = request["inputs"]
    if _one_matrix(inputs, version):
        X = _matrix(inputs[0], version.num_features, checks)
    else:
        X = _columns(inputs, version, checks)
    outputs = _requested_outputs(request.get("outputs"), version)
    return InferRequest(X, request_id, outputs, _binary_outputs(request, outputs))


def _attach_binary(inputs: list, binary: bytes) -> None:
    """Each input's raw data, cut from ``binary`` in order by its ``binary_data_size``, as its 'data'."""
    start = 0
    for tensor in inputs:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        name = tensor.get("name")
        datatype = tensor.get("datatype")
        if type(size) is not int or size < 0 or start + size > len(binary):
            raise RequestError(400, f"input {name!r}: binary_data_size {size!r} runs past the binary data")
        if datatype not in NUMERIC:
            raise RequestError(
                400, f"input {name!r}: datatype {datatype!r} is not a number type (use FP64 or FP32)"
            )
        dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
        if size % dtype.itemsize:
            raise RequestError(400, f"input {name!r}: {size} bytes are not whole {datatype} values")
        tensor["data"] = np.frombuffer(binary, dtype, size // dtype.itemsize, start)
        start += size
    if start != len(binary):
        raise RequestError(400, f"the body has {len(binary) - start} bytes of binary data no input claims")


def _binary_outputs(request: dict, outputs: tuple[str, ...]) -> frozenset[str]:
    """The outputs to send as raw bytes: all with ``binary_data_output``, else those asked one by one."""
    parameters = request.get("parameters") or {}
    if parameters.get("binary_data_output") is True:
        return frozenset(outputs)
    asked = request.get("outputs") or ()
    return frozenset(
        o["name"]
        for o in asked
        if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True
    )


def parse_instances(
    body: bytes, version: Signature, max_rows: int, header_length: int | None = None
) -> InferRequest:
    """The older ``{"instances": [[...], ...]}`` body as rows."""
    if header_length is not None:
        raise RequestError(400, "binary tensor data is for /v2 .../infer; send 'instances' as JSON here")
    request = read_json(body)
    if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
        raise RequestError(400, "the request needs 'instances': a list of rows")
    rows = request["instances"]
    if not rows:
        raise RequestError(400, "'instances' holds no rows")
    _check_rows(len(rows), max_rows)
    X = _numbers(rows, np.float64, "instances", None, _may_hold_booleans(body))
    if X.ndim == 1 and version.num_features == len(X) and not isinstance(rows[0], list):
        X = X[None, :]
    if X.ndim != 2:
        raise RequestError(400, f"'instances' must be rows of {version.num_features} numbers")
    _check_width(X.shape[1], version, "instances")
    return InferRequest(X, None, version.output_names)


def _one_matrix(inputs: list, version: Signature) -> bool:
    """Whether the inputs are one [rows, features] tensor rather than one tensor per feature."""
    if len(inputs) != 1:
        return False
    name = inputs[0].get("name") if isinstance(inputs[0], dict) else None
    return version.num_features == 1 or name not in (version.feature_names or ())


def _tensor_parts(tensor: Any) -> tuple[str, list[int], type[np.generic], Any]:
    """A request tensor's name, shape, numpy type and data, each checked."""
    if not isinstance(tensor, dict):
        raise RequestError(400, "each input must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise RequestError(400, "each input needs a 'name'")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMERIC:
        raise RequestError(
            400, f"input {name!r}: datatype {datatype!r} is not a number type (use FP64 or FP32)"
        )
    if "data" not in tensor:
        raise RequestError(400, f"input {name!r} has no 'data'")
    return name, shape, NUMERIC[datatype], tensor["data"]


def _matrix(tensor: Any, num_features: int, checks: Checks) -> np.ndarray:
    """One tensor of shape [rows, features] (or [features] for one row)."""
    name, shape, kind, data = _tensor_parts(tensor)
    declared = shape
    if len(shape) == 1:  # one row, or one feature's rows
        shape = [shape[0], 1] if num_features == 1 else [1, *shape]
    if len(shape) != 2:
        raise RequestError(400, f"input {name!r}: shape {shape} must be [rows, {num_features}]")
    _check_rows(shape[0], checks.max_rows)
    X = _numbers(data, kind, name, declared, checks.booleans)
    if X.size != shape[0] * shape[1]:
        raise RequestError(
            400, f"input {name!r}: shape {shape} needs {shape[0] * shape[1]} values, got {X.size}"
        )
    if shape[1] != num_features:
        raise RequestError(400, f"input {name!r} has {shape[1]} features, but the model takes {num_features}")
    if shape[0] == 0:
        raise RequestError(400, f"input {name!r} holds no rows")
    return X.reshape(shape)


def _columns(inputs: list, version: Signature, checks: Checks) -> np.ndarray:
    """One tensor per named feature, each of shape [rows] or [rows, 1], in the model's order."""
    names = version.feature_names
    if names is None:
        raise RequestError(
            400,
            f"the model knows no feature names: send one input of shape [rows, {version.num_features}]",
        )
    columns: dict[str, np.ndarray] = {}
    for tensor in inputs:
        name, shape, kind, data = _tensor_parts(tensor)
        if name in columns:
            raise RequestError(400, f"input {name!r} is given twice")
        if name not in names:
            raise RequestError(
                400, f"input {name!r} is not a feature of the model (features: {', '.join(names)})"
            )
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(
                400, f"input {name!r}: a feature's shape must be [rows] or [rows, 1], got {shape}"
            )
        _check_rows(shape[0], checks.max_rows)
        values = _numbers(data, kind, name, shape, checks.booleans).reshape(-1)
        if values.size != shape[0]:
            raise RequestError(
                400, f"input {name!r}: shape {shape} needs {shape[0]} values, got {values.size}"
            )
        columns[name] = values
    missing = [name for name in names if name not in columns]
    if missing:
        raise RequestError(400, f"features missing from the request: {', '.join(missing)}")
    if len({len(column) for column in columns.values()}) != 1:
        raise RequestError(400, "the feature inputs hold different numbers of rows")
    if len(columns[names[0]]) == 0:
        raise RequestError(400, "the request holds no rows")
    return np.column_stack([columns[name] for name in names])


def _numbers(
    data: Any, kind: type[np.generic], name: str, shape: list[int] | None, booleans: bool
) -> np.ndarray:
    """``data`` (flat in row-major order, or nested as ``shape``) as float64, after checking
    that every value is a finite number the declared type holds as it is."""
    if isinstance(data, np.ndarray):  # raw binary data, already of its type
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise RequestError(400, f"input {name!r} holds NaN or infinity: send finite numbers")
        return data.astype(np.float64)
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: 'data' must be a list of numbers")
    if booleans and _holds_booleans(data):  # numpy would read true and false as 1 and 0
        raise RequestError(400, f"input {name!r} holds true or false, which are not numbers")
    if kind is np.float64:
        flat = _flat_floats(data)
        if flat is not None:
            return flat
    try:
        raw = np.asarray(data)
    except ValueError:
        raise RequestError(
            400, f"input {name!r}: 'data' is nested unevenly; send it flat, row after row"
        ) from None
    if raw.dtype.kind not in "iuf":
        raise RequestError(
            400, f"input {name!r} holds values that are not numbers (text, true/false or null)"
        )
    if shape is not None and raw.ndim > 1 and list(raw.shape) != shape:
        raise RequestError(
            400, f"input {name!r}: 'data' is nested as {list(raw.shape)}, but its shape is {shape}"
        )
    values = raw.astype(np.float64, copy=False)
    if kind is not np.float64:  # the client's type: a value it cannot hold is refused, not changed
        with np.errstate(over="ignore", invalid="ignore"):
            typed = raw.astype(kind).astype(np.float64)
        if np.dtype(kind).kind in "iu" and not np.array_equal(typed, values):
            raise RequestError(
                400, f"input {name!r} holds values that are not {np.dtype(kind).name} integers"
            )
        if not np.isfinite(typed).all():
            raise RequestError(400, f"input {name!r} holds values beyond the range of {np.dtype(kind).name}")
        values = typed
    return values


def _flat_floats(data: list) -> np.ndarray | None:
    """``data`` as float64 when it is a flat list of numbers, the usual case, else None.

    Read in one pass that refuses anything but a number (text, null, a list) with TypeError:
    ``np.asarray`` first looks at every value for a common type, which took a third of a
    100-row request's parsing. True and false pass as 1 and 0: they are looked for before."""
    try:
        return np.frombuffer(array.array("d", data), dtype=np.float64)
    except (TypeError, OverflowError):
        return None


def _may_hold_booleans(body: bytes) -> bool:
    """Whether the body has a ``true`` or ``false`` anywhere; only then are values checked one by one.

    Looked for by a letter that numbers never hold ('u' of true, 'l' of false), then the word
    around it: a one-byte search runs at memory speed, where ``b"true" in body`` took a fifth
    of a 100-row request's time."""
    return _has_word(body, b"true", b"u", 2) or _has_word(body, b"false", b"l", 2)


def _has_word(body: bytes, word: bytes, letter: bytes, offset: int) -> bool:
    """Whether ``word`` is in ``body``, found from each ``letter``, ``offset`` bytes into it
    (past a few letters that start no word, by a plain search: a body full of them costs no more)."""
    at = body.find(letter, offset)
    for _ in range(16):
        if at < 0:
            return False
        if body.startswith(word, at - offset):
            return True
        at = body.find(letter, at + 1)
    return at >= 0 and body.find(word, at - offset) >= 0


def _holds_booleans(data: list) -> bool:
    return any(v is True or v is False or (isinstance(v, list) and _holds_booleans(v)) for v in data)


def _check_rows(rows: Any, max_rows: int) -> None:
    if isinstance(rows, int) and rows > max_rows:
        raise RequestError(
            413, f"the request has {rows} rows; this server takes at most {max_rows} per request"
        )


def _check_width(width: int, version: Signature, name: str) -> None:
    if width != version.num_features:
        raise RequestError(
            400, f"{name} rows have {width} features, but the model takes {version.num_features}"
        )


def _requested_outputs(outputs: Any, version: Signature) -> tuple[str, ...]:
    if outputs is None:
        return version.output_names
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
        raise RequestError(400, "'outputs' must be a list of objects with a 'name'")
    names = tuple(o["name"] for o in outputs)
    if not names or len(set(names)) != len(names):
        raise RequestError(400, "'outputs' must name each output it asks for once (or be left out for all)")
    unknown = [n for n in names if n not in version.output_names]
    if unknown:
        raise RequestError(
            400,
            f"output {unknown[0]!r} is not one the model gives (outputs: {', '.join(version.output_names)})",
        )
    return names


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for values of ``dtype``: labels in their own type, text as BYTES."""
    return {"U": "BYTES", "S": "BYTES", "b": "BOOL", "i": "INT64", "u": "UINT64"}.get(dtype.kind, "FP64")


def binary_output(name: str, values: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """A response tensor without its data, and the data as raw little-endian bytes (text as
    Triton's BYTES: each value's length in 4 bytes, then its UTF-8)."""
    datatype = datatype_of(values.dtype)
    flat = values.ravel()
    if datatype == "FP64" and not np.isfinite(flat).all():
        raise RequestError(
            400, f"the model's {name} is not finite for these rows: are their features far too large?"
        )
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in flat]
        data = b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    else:
        kind = {"FP64": "<f8", "INT64": "<i8", "UINT64": "<u8", "BOOL": "?"}[datatype]
        data = np.ascontiguousarray(flat, dtype=kind).tobytes()
    tensor = {"name": name, "datatype": datatype, "shape": list(values.shape)}
    return tensor | {"parameters": {"binary_data_size": len(data)}}, data


def output_tensor(name: str, values: np.ndarray) -> dict[str, Any]:
    """A response tensor of ``values`` (numbers go to JSON as they are, text as a list)."""
    datatype = datatype_of(values.dtype)
    if datatype == "FP64" and not np.isfinite(values).all():
        raise RequestError(
            400, f"the model's {name} is not finite for these rows: are their features far too large?"
        )
    data = values.ravel()
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(values.shape),
        "data": data.tolist() if datatype == "BYTES" else np.ascontiguousarray(data),
    }
