"""The Open Inference Protocol over gRPC (``--grpc-port``), beside the HTTP server.

Triton's and KServe's gRPC clients call ``inference.GRPCInferenceService``; its messages
come from ``protocol/open_inference.proto``. Requests are read in gRPC's own threads
(protobuf parses in C, off the event loop); their rows then join the same batches as
HTTP requests, on the event loop, and the answer goes back as raw little-endian bytes
(``raw_output_contents``), as Triton answers. Errors carry the gRPC status that matches
the HTTP one (400: INVALID_ARGUMENT, 404: NOT_FOUND, 503: UNAVAILABLE, ...) and the
same one-line message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from paragrad import __version__
from paragrad.serving.access_log import AccessLog
from paragrad.serving.batching import Outputs, QueueFull
from paragrad.serving.config import ServeConfig
from paragrad.serving.metrics import NO_MODEL, Metrics
from paragrad.serving.models import ServedModels
from paragrad.serving.protocol import open_inference_pb2 as pb
from paragrad.serving.registry import ModelVersion
from paragrad.serving.tensors import NUMERIC, Checks, RequestError, binary_output, infer_request

SERVICE = "inference.GRPCInferenceService"
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
CONTENTS = {  # where InferTensorContents holds each type's values
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT64": "uint64_contents",
    "UINT32": "uint_contents",
    "UINT16": "uint_contents",
    "UINT8": "uint_contents",
}
ANSWER_TIMEOUT_S = 600.0  # the longest a request waits for its batch
log = logging.getLogger("paragrad.serving")


class GrpcService:
    """The gRPC server: bound before serving, started and stopped with the HTTP app."""

    def __init__(
        self, served: ServedModels, config: ServeConfig, metrics: Metrics, access: AccessLog | None = None
    ) -> None:
        self.served = served
        self.config = config
        self.metrics = metrics
        self.access = access
        self.loop: asyncio.AbstractEventLoop | None = None
        limit = config.max_body_bytes
        self.server = grpc.server(
            ThreadPoolExecutor(16, thread_name_prefix="paragrad-grpc"),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)],
            maximum_concurrent_rpcs=config.max_connections,
        )
        rpcs: dict[str, tuple[Callable[[Any], Any], Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._answering(name, method),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for name, (method, request, response) in rpcs.items()
        }
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    def bind(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); the port, or RuntimeError."""
        shown = f"[{host}]" if ":" in host else host
        return self.server.add_insecure_port(f"{shown}:{port}")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.server.start()

    async def stop(self) -> None:
        """Refuse new calls; those in flight have ``grace`` seconds to finish."""
        await asyncio.to_thread(self.server.stop(self.config.grace).wait)

    def _answering(self, name: str, method: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        """``method`` with the token check, and errors as gRPC statuses with one-line messages."""

        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if name not in ("ServerLive", "ServerReady"):
                    self._check_token(context)
                return method(request)
            except RequestError as exc:
                context.abort(CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
            except QueueFull as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"the server is busy: {exc}; retry shortly")
            except concurrent.futures.TimeoutError:
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time: the server is overloaded"
                )
            except Exception as exc:  # a bug of ours: answer, log, keep serving
                log.exception("gRPC %s failed", name)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

        return answer

    def _check_token(self, context: grpc.ServicerContext) -> None:
        token = self.config.token
        if token is None:
            return
        metadata = dict(context.invocation_metadata())
        scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(401, "this server needs 'authorization: Bearer TOKEN' metadata with its token")

    def server_live(self, request: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.served.ready)

    def model_ready(self, request: Any) -> Any:
        self.served.version(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.served.ready)

    def server_metadata(self, request: Any) -> Any:
        return pb.ServerMetadataResponse(name="paragrad", version=__version__, extensions=[])

    def model_metadata(self, request: Any) -> Any:
        from paragrad.serving.app import metadata_of

        metadata = metadata_of(self.served.version(request.name, request.version or None))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]],
            outputs=[tensor(**t) for t in metadata["outputs"]],
        )

    def model_infer(self, request: Any) -> Any:
        started = time.perf_counter()
        version = self.served.version(request.model_name, request.model_version or None)
        parsed = infer_request(_as_json(request), version, Checks(self.config.max_rows, booleans=False))
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(
            self._predicted(request.model_name, parsed.X, started), self.loop
        )
        served, outputs = future.result(ANSWER_TIMEOUT_S)
        answer = pb.ModelInferResponse(model_name=served.name, model_version=served.version, id=request.id)
        for name in parsed.outputs:
            tensor, data = binary_output(name, outputs[name])
            answer.outputs.add(name=name, datatype=tensor["datatype"], shape=tensor["shape"])
            answer.raw_output_contents.append(data)
        return answer

    async def _predicted(self, name: str, X: np.ndarray, started: float) -> tuple[ModelVersion, Outputs]:
        """On the event loop: the rows in the next batch of the version served now."""
        status, version = 200, None
        try:
            version = self.served.version(name)
            batcher = self.served.batcher(version)
            batcher.expect()
            outputs = await batcher.submit(X)
            return version, outputs
        except RequestError as exc:
            status = exc.status
            raise
        except QueueFull:
            status = 503
            raise
        except Exception:
            status = 500
            raise
        finally:
            model = NO_MODEL if version is None else version.name
            seconds = time.perf_counter() - started
            self.metrics.answered(model, "grpc_infer", status, seconds)
            if self.access is not None:
                scope = {"method": "GRPC", "path": f"/{SERVICE}/ModelInfer", "client": None}
                fields = {"model": None if version is None else name, "version": None, "rows": len(X)}
                if version is not None:
                    fields["version"] = version.version
                self.access.record(scope, status, seconds, fields)


def _as_json(request: Any) -> dict[str, Any]:
    """A ModelInferRequest as the JSON form's request, each tensor's data a numpy array."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        datatype = tensor.datatype
        if datatype not in NUMERIC:
            raise RequestError(
                400, f"input {tensor.name!r}: datatype {datatype!r} is not a number type (use FP64 or FP32)"
            )
        if raw:
            dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
            if len(raw[index]) % dtype.itemsize:
                raise RequestError(
                    400, f"input {tensor.name!r}: {len(raw[index])} bytes are not whole {datatype} values"
                )
            data = np.frombuffer(raw[index], dtype)
        elif datatype in CONTENTS:
            data = np.asarray(getattr(tensor.contents, CONTENTS[datatype]), dtype=NUMERIC[datatype])
        else:
            raise RequestError(400, f"input {tensor.name!r}: send {datatype} as raw_input_contents")
        inputs.append({"name": tensor.name, "datatype": datatype, "shape": list(tensor.shape), "data": data})
    request_json: dict[str, Any] = {"inputs": inputs}
    if request.outputs:
        request_json["outputs"] = [{"name": output.name} for output in request.outputs]
    return request_json
