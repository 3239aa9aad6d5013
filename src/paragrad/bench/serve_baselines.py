"""The baselines of the ``serve`` suite, each a server run in a process of its own.

``python -m paragrad.bench.serve_baselines KIND [NAME=PATH ...] [--port N]`` serves

- ``floor``: a Starlette app whose ``POST /v2/models/{name}/infer`` reads the body and
  answers a constant: the HTTP floor of the stack paragrad's server runs on;
- ``fastapi``: a FastAPI app with a pydantic model of the V2 infer body, calling a
  scikit-learn model's ``predict`` and ``predict_proba`` on each request, as a service
  written by hand does (a ``def`` handler, as FastAPI advises for blocking calls);
- ``fastapi-async``: the same with an ``async def`` handler, which predicts on the
  event loop and skips FastAPI's thread pool.

Each runs under uvicorn with the settings of ``paragrad serve`` (uvloop, httptools, log
level warning, no access log, one process) and prints ``listening on http://HOST:PORT``
once it accepts connections. The web frameworks are imported here only when a server starts.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at run
# time, and the request models are classes local to :func:`sklearn_app`.
import argparse
import json
import pickle
from pathlib import Path
from typing import Any

KINDS = ("floor", "fastapi", "fastapi-async")
READY = "serve baseline: listening on http://"
CONSTANT = json.dumps(
    {
        "model_name": "floor",
        "model_version": "1",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [0]}],
    },
    separators=(",", ":"),
).encode()


def floor_app() -> Any:
    """Starlette answering every infer request with the same bytes, after reading its body."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(CONSTANT, 200, media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])


def sklearn_app(models: dict[str, Path], blocking: bool) -> Any:
    """FastAPI predicting with pickled scikit-learn classifiers, one request at a time."""
    import numpy as np
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    loaded = {}
    for name, path in models.items():
        with open(path, "rb") as handle:
            loaded[name] = pickle.load(handle)

    class Tensor(BaseModel):
        name: str
        shape: list[int]
        datatype: str
        data: list[float]

    class InferRequest(BaseModel):
        inputs: list[Tensor]
        id: str | None = None

    def answer(name: str, request: InferRequest) -> dict[str, Any]:
        model = loaded.get(name)
        if model is None:
            raise HTTPException(404, f"no model named {name!r}")
        tensor = request.inputs[0]
        X = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
        labels, proba = model.predict(X), model.predict_proba(X)
        return {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {
                    "name": "predict",
                    "datatype": "INT64",
                    "shape": list(labels.shape),
                    "data": labels.tolist(),
                },
                {
                    "name": "proba",
                    "datatype": "FP64",
                    "shape": list(proba.shape),
                    "data": proba.ravel().tolist(),
                },
            ],
        }

    app = FastAPI()
    if blocking:

        @app.post("/v2/models/{name}/infer")
        def infer(name: str, request: InferRequest) -> dict[str, Any]:
            return answer(name, request)

    else:

        @app.post("/v2/models/{name}/infer")
        async def infer_async(name: str, request: InferRequest) -> dict[str, Any]:
            return answer(name, request)

    return app


def serve(app: Any, port: int) -> None:
    """Run ``app`` as ``paragrad serve`` runs its own, saying where once it listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                host, bound = self.servers[0].sockets[0].getsockname()[:2]
                print(f"{READY}{host}:{bound}", flush=True)

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=4096,
        lifespan="on",
    )
    Server(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paragrad.bench.serve_baselines")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("models", nargs="*", metavar="NAME=PATH", help="pickled scikit-learn models")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "floor":
        app = floor_app()
    else:
        models = dict(spec.split("=", 1) for spec in args.models)
        app = sklearn_app({name: Path(path) for name, path in models.items()}, args.kind == "fastapi")
    serve(app, args.port)


if __name__ == "__main__":
    main()
