"""The HTTP interface: the Open Inference Protocol (KServe V2 REST), the older
``/v1/models/NAME:predict``, Prometheus metrics, and a page to try the models.

Every answer to a bad request is ``{"error": "..."}`` with a 4xx status and one line
saying what to fix; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send
from threadpoolctl import threadpool_limits

from paragrad import __version__
from paragrad.serving.access_log import AccessLog, Stream
from paragrad.serving.batching import Outputs, QueueFull
from paragrad.serving.config import ServeConfig
from paragrad.serving.encodings import MIN_COMPRESSED, compressed, content_encoding
from paragrad.serving.guard import EXPOSED_HEADERS, PREFLIGHT_HEADERS, Guard, check_content_type
from paragrad.serving.metrics import NO_MODEL, Metrics
from paragrad.serving.models import ServedModels
from paragrad.serving.parsing import BodyParser
from paragrad.serving.registry import ModelVersion
from paragrad.serving.tensors import (
    InferRequest,
    RequestError,
    binary_output,
    datatype_of,
    output_tensor,
    parse_infer,
    parse_instances,
)

if TYPE_CHECKING:
    from paragrad.serving.grpc_service import GrpcService

log = logging.getLogger("paragrad.serving")
JSON = "application/json"
CLIENT_CLOSED = 499  # the client left before its answer (nginx's code for it)
Handler = Callable[[Request], Awaitable[Response]]
PAGE = resources.files("paragrad.serving").joinpath("page.html")


class Outcome:
    """One request as its handler sees it: its headers, read once, and what the access log
    and the metrics record of it, filled in as it goes."""

    __slots__ = ("headers", "model", "rows", "version")

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.model = NO_MODEL
        self.version: str | None = None
        self.rows = 0

    def served(self, version: ModelVersion) -> None:
        self.model, self.version = version.name, version.version

    def fields(self) -> dict[str, Any]:
        return {
            "model": None if self.model == NO_MODEL else self.model,
            "version": self.version,
            "rows": self.rows,
        }


def json_response(status: int, payload: Any, version: str | None = None) -> Response:
    """``payload`` as JSON; numpy arrays in it are written as they are, to the last digit."""
    headers = {"x-model-version": version} if version else None
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


class Endpoints:
    """The handlers, each given the request and the :class:`Outcome` it fills in."""

    def __init__(
        self, served: ServedModels, config: ServeConfig, metrics: Metrics, access: AccessLog | None
    ) -> None:
        self.served = served
        self.config = config
        self.metrics = metrics
        self.access = access
        self.stopping = False  # set at a stop signal: requests cancelled then are answered 503
        self.parser = BodyParser(config.max_body_bytes)
        self.guard = Guard(config)
        # Built once: the inference routes (which DirectInference also tries first), then
        # the rest; not_found looks through them all for a path taken by other methods.
        self.inference_routes = [
            Route("/v2/models/{name}/infer", self._wrap(self.infer), methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self._wrap(self.infer), methods=["POST"]),
            Route("/v1/models/{name}:predict", self._wrap(self.predict_v1), methods=["POST"]),
        ]
        self.known_routes = [*self.inference_routes, *self._other_routes()]
        everything = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        self.routes = [
            *self.known_routes,
            Route("/{path:path}", self._wrap(self.not_found), methods=everything),
        ]

    def _other_routes(self) -> list[Route]:
        model, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/", self._wrap(self.page, open_to_all=True), methods=["GET"]),
            Route("/v2/health/live", self._wrap(self.live, open_to_all=True), methods=["GET"]),
            Route("/v2/health/ready", self._wrap(self.ready, open_to_all=True), methods=["GET"]),
            Route("/v2", self._wrap(self.server_metadata), methods=["GET"]),
            Route("/v2/models", self._wrap(self.models_index), methods=["GET"]),
            Route("/metrics", self._wrap(self.metrics_text), methods=["GET"]),
        ]
        routes.append(Route("/v1/models/{name}", self._wrap(self.model_ready_v1), methods=["GET"]))
        for prefix in (model, versioned):
            routes += [
                Route(prefix, self._wrap(self.model_metadata), methods=["GET"]),
                Route(prefix + "/ready", self._wrap(self.model_ready), methods=["GET"]),
            ]
        return routes

    def _wrap(
        self, handler: Callable[[Request, Outcome], Awaitable[Response]], open_to_all: bool = False
    ) -> Handler:
        """The handler with the token check, error answers, metrics and the access log."""

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            headers = read_headers(request.scope)
            outcome = Outcome(headers)
            origin = headers.get("origin")
            try:
                self.guard.check(headers.get("host"), origin)
                if not open_to_all:
                    _check_token(headers.get("authorization"), self.config.token)
                response = await handler(request, outcome)
            except RequestError as exc:
                response = json_response(exc.status, {"error": str(exc)}, outcome.version)
                if exc.status == 401:
                    response.headers["www-authenticate"] = "Bearer"
            except QueueFull as exc:
                response = json_response(
                    503, {"error": f"the server is busy: {exc}; retry shortly"}, outcome.version
                )
                response.headers["retry-after"] = "1"
            except ClientDisconnect:  # nobody to answer; counted as nginx counts it
                response = Response(status_code=CLIENT_CLOSED)
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                # cut off at the end of --grace: the client learns it, as from a full queue
                message = "the server stopped before this request was answered; retry"
                response = json_response(503, {"error": message}, outcome.version)
                response.headers["retry-after"] = "1"
            except Exception as exc:  # a bug of ours: answer, log, keep serving
                log.exception("%s %s failed", request.method, request.url.path)
                error = {"error": f"internal error: {type(exc).__name__}: {exc}"}
                response = json_response(500, error, outcome.version)
            accepted = headers.get("accept-encoding")
            if accepted is not None and len(response.body) >= MIN_COMPRESSED:
                response = await compressed(response, accepted)
            allowed = self.guard.cors_origin(origin)
            if allowed is not None:
                response.headers["access-control-allow-origin"] = allowed
                response.headers["access-control-expose-headers"] = EXPOSED_HEADERS
                response.headers["vary"] = "Origin"
            seconds = time.perf_counter() - started
            if outcome.model != NO_MODEL or response.status_code != 200:
                self.metrics.answered(outcome.model, handler.__name__, response.status_code, seconds)
            if self.access is not None:
                self.access.record(request.scope, response.status_code, seconds, outcome.fields())
            return response

        return run

    async def infer(self, request: Request, outcome: Outcome) -> Response:
        version, parsed, outputs = await self._predicted(request, parse_infer, outcome)
        payload: dict[str, Any] = {"model_name": version.name, "model_version": version.version}
        if parsed.id is not None:
            payload["id"] = parsed.id
        payload["parameters"] = {"rows": len(parsed.X)}
        if not parsed.binary:
            payload["outputs"] = [output_tensor(name, outputs[name]) for name in parsed.outputs]
            return json_response(200, payload, version.version)
        tensors, raw = [], []
        for name in parsed.outputs:  # Triton's binary extension: the JSON, then each output's bytes
            if name in parsed.binary:
                tensor, data = binary_output(name, outputs[name])
                raw.append(data)
            else:
                tensor = output_tensor(name, outputs[name])
            tensors.append(tensor)
        payload["outputs"] = tensors
        header = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"x-model-version": version.version, "inference-header-content-length": str(len(header))}
        return Response(b"".join([header, *raw]), 200, headers, "application/octet-stream")

    async def predict_v1(self, request: Request, outcome: Outcome) -> Response:
        version, _, outputs = await self._predicted(request, parse_instances, outcome)
        payload: dict[str, Any] = {"model_name": version.name, "model_version": version.version}
        payload["predictions"] = output_tensor("predict", outputs["predict"])["data"]
        if "proba" in outputs:
            payload["probabilities"] = np.ascontiguousarray(outputs["proba"])
        return json_response(200, payload, version.version)

    async def _predicted(
        self, request: Request, parse: Callable[..., InferRequest], outcome: Outcome
    ) -> tuple[ModelVersion, InferRequest, Outputs]:
        """The request's rows parsed and predicted in the next batch of the version served
        once its body has arrived."""
        self._version(request, outcome)  # an unknown model is 404 before its body is read
        headers = outcome.headers
        header_length = _header_length(headers.get("inference-header-content-length"))
        check_content_type(headers.get("content-type"), header_length is not None)
        body = await _body(request.receive, headers.get("content-length"), self.config.max_body_bytes)
        version = self._version(request, outcome)
        batcher = self.served.batcher(version)
        batcher.expect()  # only now: a body still on the network holds back no batch
        try:
            encoding = content_encoding(headers)
            parsed = await self.parser.parse(
                parse, body, encoding, version, self.config.max_rows, header_length
            )
        except BaseException:
            batcher.forget()
            raise
        outcome.rows = len(parsed.X)
        return version, parsed, await batcher.submit(parsed.X)

    def _version(self, request: Request, outcome: Outcome) -> ModelVersion:
        version = self.served.version(request.path_params["name"], request.path_params.get("version"))
        outcome.served(version)
        return version

    async def model_metadata(self, request: Request, outcome: Outcome) -> Response:
        version = self._version(request, outcome)
        return json_response(200, metadata_of(version), version.version)

    async def model_ready(self, request: Request, outcome: Outcome) -> Response:
        version = self._version(request, outcome)
        return json_response(200, {"name": version.name, "ready": self.served.ready}, version.version)

    async def model_ready_v1(self, request: Request, outcome: Outcome) -> Response:
        """KServe's V1 readiness: ``{"name": ..., "ready": true}``."""
        if request.path_params["name"].endswith(":predict"):
            return await self.not_found(request, outcome)
        version = self._version(request, outcome)
        return json_response(200, {"name": version.name, "ready": self.served.ready}, version.version)

    async def models_index(self, request: Request, outcome: Outcome) -> Response:
        slots = self.served.slots.values()
        return json_response(200, {"models": [metadata_of(slot.current) for slot in slots]})

    async def live(self, request: Request, outcome: Outcome) -> Response:
        return json_response(200, {"live": True})

    async def ready(self, request: Request, outcome: Outcome) -> Response:
        return json_response(200 if self.served.ready else 503, {"ready": self.served.ready})

    async def server_metadata(self, request: Request, outcome: Outcome) -> Response:
        return json_response(
            200, {"name": "paragrad", "version": __version__, "extensions": ["models_index"]}
        )

    async def metrics_text(self, request: Request, outcome: Outcome) -> Response:
        return Response(self.metrics.text(), 200, media_type="text/plain; version=0.0.4")

    async def page(self, request: Request, outcome: Outcome) -> Response:
        return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8")

    async def not_found(self, request: Request, outcome: Outcome) -> Response:
        """404, or 405 naming the methods when the path exists for other methods."""
        allowed = sorted(
            {
                method
                for route in self.known_routes
                if route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
        )
        if not allowed:
            raise RequestError(404, f"no such endpoint: {request.method} {request.url.path}")
        if request.method == "OPTIONS" and self.guard.cors_origin(outcome.headers.get("origin")):
            return Response(  # a CORS preflight from an origin given with --cors
                status_code=204,
                headers={
                    "access-control-allow-methods": ", ".join(allowed),
                    "access-control-allow-headers": PREFLIGHT_HEADERS,
                    "access-control-max-age": "600",
                },
            )
        response = json_response(
            405, {"error": f"{request.url.path} takes {', '.join(allowed)}, not {request.method}"}
        )
        response.headers["allow"] = ", ".join(allowed)
        return response


def build_app(
    served: ServedModels,
    config: ServeConfig,
    metrics: Metrics,
    log_stream: Stream,
    grpc_service: GrpcService | None = None,
) -> DirectInference:
    """The ASGI application serving ``served``: batchers, the file watcher and the gRPC
    server (if any) run with it; the access log goes to ``log_stream``."""

    access = AccessLog(log_stream) if config.access_log else None
    if grpc_service is not None:
        grpc_service.access = access

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        served.start()
        blas = threadpool_limits(config.blas_threads, user_api="blas")
        # What start-up made (modules, models, the app) lives as long as the server: full
        # collections need not walk it again and again (see ServedModels._reload).
        gc.freeze()
        watcher = served.start_watching()
        if grpc_service is not None:
            grpc_service.start(asyncio.get_running_loop())
        writer = asyncio.get_running_loop().create_task(access.run()) if access is not None else None
        try:
            yield
        finally:
            watcher.cancel()
            if grpc_service is not None:
                await grpc_service.stop()
            await served.close()
            endpoints.parser.close()
            blas.restore_original_limits()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    endpoints = Endpoints(served, config, metrics, access)
    app = DirectInference(Starlette(routes=endpoints.routes, lifespan=lifespan), endpoints)
    app.dropped_lines = lambda: 0 if access is None else access.dropped
    return app


class DirectInference:
    """Inference requests go straight to their handler, everything else through Starlette.

    Starlette's middleware and router wrap every request in several more calls; the
    inference handlers answer every error themselves, so the hot path skips them (about a
    fifth of the server's time per one-row request, measured with ``bench --suite serve``).
    """

    def __init__(self, app: Starlette, endpoints: Endpoints) -> None:
        self.app = app
        self.routes = endpoints.inference_routes
        self.endpoints = endpoints
        self.dropped_lines: Callable[[], int] = lambda: 0  # access log lines not kept

    def stopping(self) -> None:
        """The server is stopping: requests cancelled from now on are answered 503."""
        self.endpoints.stopping = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    response = await route.endpoint(Request(scope, receive))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def read_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by (lower-case) name, the first of a repeated one as Starlette
    takes it; read once, where each ``request.headers.get`` decodes them all again (seven
    such looks cost a one-row request more than parsing its JSON)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


def _check_token(authorization: str | None, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise RequestError(401, "this server needs 'Authorization: Bearer TOKEN' with its token")


async def _body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body from its ASGI messages (as ``request.stream()`` reads it, without an
    async generator per request), refused with 413 as soon as it is known to exceed ``limit``
    bytes (``declared``: its Content-Length)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"the request body has {int(declared)} bytes; this server takes at most {limit}"
        )
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body exceeds {limit} bytes, the most this server takes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header_length(value: str | None) -> int | None:
    """``Inference-Header-Content-Length``: the JSON's length in a binary tensor request."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise RequestError(400, f"Inference-Header-Content-Length must be a byte count, got {value[:40]!r}")
    return int(value)


def metadata_of(version: ModelVersion) -> dict[str, Any]:
    """The protocol's model metadata, with the model's description under ``parameters``."""
    labels = "FP64" if version.classes is None else datatype_of(version.classes.dtype)
    outputs = [{"name": "predict", "datatype": labels, "shape": [-1]}]
    if version.classes is not None:
        outputs.append({"name": "proba", "datatype": "FP64", "shape": [-1, len(version.classes)]})
    return {
        "name": version.name,
        "versions": [version.version],
        "platform": "paragrad_numpy",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, version.num_features]}],
        "outputs": outputs,
        "parameters": version.describe(),
    }
