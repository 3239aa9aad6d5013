"""Run the application under uvicorn until SIGTERM or Ctrl-C, then drain and exit cleanly.

uvicorn stops accepting connections on the signal and waits up to ``grace`` seconds for
requests in flight; this server then returns normally (exit status 0) where uvicorn would
raise the signal again once it has drained, ending the process as killed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import uvicorn

from paragrad.errors import ConfigError, setting
from paragrad.serving.app import DirectInference, build_app
from paragrad.serving.config import ServeConfig
from paragrad.serving.connections import connection_class
from paragrad.serving.log_writer import BackgroundWriter, WriterHandler
from paragrad.serving.metrics import Metrics
from paragrad.serving.models import ServedModels, load_all

if TYPE_CHECKING:
    from paragrad.serving.grpc_service import GrpcService

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn's server that says where it listens and ends normally after a stop signal;
    requests still running when the grace period ends are answered 503 by the app."""

    def __init__(self, config: uvicorn.Config, app: DirectInference) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app.stopping()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"paragrad serve: listening on http://{shown}:{port}", flush=True)


def run(paths: dict[str, Path], config: ServeConfig) -> None:
    """Bind the address and load every model (either failing is one error before serving),
    then serve them until stopped."""
    writer = _configure_logging()
    with contextlib.closing(_listening_socket(config.host, config.port)) as sock, _closing(writer):
        versions = load_all(paths)
        for version in versions:
            print(
                f"paragrad serve: model {version.name} ({version.model.name}, version {version.version}) "
                f"from {version.path}",
                flush=True,
            )
        metrics = Metrics()
        served = ServedModels(versions, config, metrics)
        grpc_service = _grpc_service(served, config, metrics)
        app = build_app(served, config, metrics, writer, grpc_service)
        metrics.log_dropped.set_function(lambda: writer.dropped + app.dropped_lines())
        uvicorn_config = uvicorn.Config(
            app,
            http=connection_class(config.header_timeout, config.body_timeout, config.max_connections),
            log_config=None,  # uvicorn's loggers write through the writer too (_configure_logging)
            log_level="warning",
            access_log=False,
            # typed as whole seconds, but handed to asyncio.wait_for, which takes any number
            timeout_graceful_shutdown=cast(int, config.grace),
            backlog=4096,
            lifespan="on",
        )
        DrainingServer(uvicorn_config, app).run(sockets=[sock])


def _grpc_service(served: ServedModels, config: ServeConfig, metrics: Metrics) -> GrpcService | None:
    """The gRPC server, bound to ``--grpc-port`` (a port in use is one error before serving)."""
    if config.grpc_port is None:
        return None
    try:
        from paragrad.serving.grpc_service import GrpcService
    except ImportError as exc:
        raise ConfigError(f"{setting('grpc_port')} needs {exc.name}: pip install 'paragrad[serve]'") from None
    service = GrpcService(served, config, metrics)
    try:
        port = service.bind(config.host, config.grpc_port)
    except RuntimeError:
        port = 0
    if not port:
        raise ConfigError(
            f"cannot listen on {config.host}:{config.grpc_port} (gRPC): choose another {setting('grpc_port')}"
        )
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"paragrad serve: gRPC on {shown}:{port}", flush=True)
    return service


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, so that a port in use is one clear error before serving."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason}; choose another {setting('port')} or {setting('host')}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _configure_logging() -> BackgroundWriter:
    """Server messages as ``paragrad serve: ...`` lines on stderr, uvicorn's and grpc's among them, all
    written by one thread that never holds up the event loop (the access log uses it too)."""
    writer = BackgroundWriter(sys.stderr.fileno())
    handler = WriterHandler(writer)
    handler.setFormatter(logging.Formatter("paragrad serve: %(message)s"))
    for name in ("paragrad.serving", "uvicorn", "grpc"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("paragrad.serving").setLevel(logging.INFO)
    return writer


@contextlib.contextmanager
def _closing(writer: BackgroundWriter) -> Iterator[None]:
    try:
        yield
    finally:
        writer.close()
