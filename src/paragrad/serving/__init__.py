"""Serve trained models over HTTP: the Open Inference Protocol, dynamic batching, metrics.

Needs the ``serve`` extra (uvicorn, Starlette, prometheus_client), imported only when a
server starts, so that ``import paragrad`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from paragrad.errors import ConfigError
from paragrad.serving.config import ServeConfig, model_paths, token_from_environment

__all__ = ["ServeConfig", "serve"]

DEFAULT = ServeConfig()


def serve(
    models: str | os.PathLike | Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    host: str = DEFAULT.host,
    port: int = DEFAULT.port,
    max_batch: int = DEFAULT.max_batch,
    max_wait_ms: float = DEFAULT.max_wait_ms,
    max_queue: int = DEFAULT.max_queue,
    max_rows: int = DEFAULT.max_rows,
    max_body_mb: float = DEFAULT.max_body_mb,
    token: str | None = None,
    insecure: bool = False,
    grace: float = DEFAULT.grace,
    reload_interval: float = DEFAULT.reload_interval,
    workers: int = DEFAULT.workers,
    split_rows: int = DEFAULT.split_rows,
    access_log: bool = True,
    header_timeout: float = DEFAULT.header_timeout,
    body_timeout: float = DEFAULT.body_timeout,
    max_connections: int = DEFAULT.max_connections,
    blas_threads: int = DEFAULT.blas_threads,
    allow_host: Iterable[str] = (),
    cors: Iterable[str] = (),
    grpc_port: int | None = None,
) -> None:
    """Serve model files written by ``train --out`` (or ``model.save``) until SIGTERM or Ctrl-C.

    Parameters
    ----------
    models : path, list of paths or ``NAME=PATH`` strings, or a mapping name -> path
        The models, each named by its file's stem unless named explicitly.
    host, port : str, int
        Where to listen; 127.0.0.1 by default, port 0 for a free port. Any other address
        needs ``token`` or ``insecure=True``.
    max_batch, max_wait_ms : int, float
        Concurrent requests to a model are predicted together, up to ``max_batch`` rows;
        a request waits at most ``max_wait_ms`` for others to join it.
    max_queue : int
        Requests waiting per model; more are answered 503 with ``Retry-After``.
    max_rows, max_body_mb : int, float
        Larger requests are answered 413.
    token : str, optional
        Clients must send ``Authorization: Bearer TOKEN`` (default: ``PARAGRAD_SERVE_TOKEN``).
    insecure : bool
        Serve a non-loopback address without a token.
    grace : float
        Seconds to finish requests in flight after SIGTERM before exiting.
    reload_interval : float
        Seconds between looks at the model files; a replaced file is served at once (0: never).
    workers, split_rows : int
        Requests of ``split_rows`` rows or more are predicted on ``workers`` local workers.
    access_log : bool
        One JSON line per request on stderr (written by a thread: a reader that stops
        reading costs lines, counted in the metrics, never requests).
    header_timeout : float
        Seconds a connection has to send a request's headers before it is answered 408.
    body_timeout : float
        Seconds a request's body has to arrive, once its headers have, before 408.
    max_connections : int
        Open connections; one more is answered 503 with ``Retry-After`` and closed.
    blas_threads : int
        BLAS threads the server predicts with; one (the default) leaves the other cores to
        the event loop and the clients, where a second thread would spin while it waits.
    allow_host : names
        Without a token, requests must name the server by its address (``localhost`` on
        loopback): these names are taken too (``"*"``: any), against DNS rebinding.
    cors : origins
        Pages of these origins (``https://example.org``, or ``"*"``) may call the server
        from a browser; by default no other site's page can.
    grpc_port : int, optional
        Also serve the protocol's gRPC form (``inference.GRPCInferenceService``) on this
        port of the same host (0: a free port); needs ``grpcio``.
    """
    if _in_event_loop():
        raise ConfigError(
            "pg.serve runs its own event loop and cannot start inside a running one (a notebook, "
            "say): start it in a thread, or run `paragrad serve` in a shell"
        )
    paths = model_paths(models)
    config = ServeConfig(
        host=host,
        port=port,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_rows=max_rows,
        max_body_mb=max_body_mb,
        token=token_from_environment(token),
        insecure=insecure,
        grace=grace,
        reload_interval=reload_interval,
        workers=workers,
        split_rows=split_rows,
        access_log=access_log,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
        blas_threads=blas_threads,
        allow_host=tuple([allow_host] if isinstance(allow_host, str) else allow_host),
        cors=tuple([cors] if isinstance(cors, str) else cors),
        grpc_port=grpc_port,
    )
    try:
        from paragrad.serving.server import run
    except ImportError as exc:
        raise ConfigError(f"serving needs {exc.name}: pip install 'paragrad[serve]'") from None
    run(paths, config)


def _in_event_loop() -> bool:
    import asyncio  # here: every command of the command line reads the serve options' defaults

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
