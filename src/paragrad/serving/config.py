"""What a server serves and how: the model files by name, and the limits it keeps.

Checked once, before anything binds a port, so that a mistake is one line naming the
setting instead of a server that starts and then fails its first request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from paragrad.errors import ConfigError, ModelFileError, check_positive_int, setting

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TOKEN_VARIABLE = "PARAGRAD_SERVE_TOKEN"  # a token here stays out of the process list


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches and protects itself (see ``paragrad serve --help``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 256  # rows predicted at once
    max_wait_ms: float = 2.0  # longest a request waits for others to share its batch
    max_queue: int = 512  # requests waiting per model before 503
    max_rows: int = 100_000  # rows per request before 413
    max_body_mb: float = 64.0  # request body size before 413
    token: str | None = None
    insecure: bool = False
    grace: float = 30.0  # seconds to finish in-flight requests after SIGTERM
    reload_interval: float = 1.0  # seconds between looks at the model files
    workers: int = 1  # local engine workers for large requests; 1: all in the server
    split_rows: int = 20_000  # rows from which a request goes to the workers
    access_log: bool = True
    header_timeout: float = 10.0  # seconds for a request's headers to arrive before 408
    body_timeout: float = 60.0  # seconds for a request's body to arrive, after its headers
    max_connections: int = 1000  # open connections; more are answered 503 and closed
    allow_host: tuple[str, ...] = ()  # Host names taken besides the address ("*": any)
    cors: tuple[str, ...] = ()  # origins whose pages may call the server ("*": any)
    grpc_port: int | None = None  # the protocol's gRPC form on this port too (0: any free one)
    # BLAS threads the server predicts with: one leaves the other cores to the event loop and
    # the clients (a second thread spins while it waits, for little gain on a batch's rows).
    blas_threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"{_named('port')} must be a port number from 0 to 65535, got {self.port!r}")
        if self.grpc_port is not None and (
            not isinstance(self.grpc_port, int) or not 0 <= self.grpc_port <= 65535
        ):
            raise ConfigError(
                f"{_named('grpc_port')} must be a port number from 0 to 65535, got {self.grpc_port!r}"
            )
        positive = (
            "max_batch",
            "max_queue",
            "max_rows",
            "workers",
            "split_rows",
            "max_connections",
            "blas_threads",
        )
        for name in positive:
            check_positive_int(_named(name), getattr(self, name))
        for name in (
            "max_wait_ms",
            "grace",
            "reload_interval",
            "max_body_mb",
            "header_timeout",
            "body_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{_named(name)} must be a non-negative number, got {value!r}")
        for name in ("header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_named(name)} must be above 0, got {getattr(self, name)!r}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"{_named('max_body_mb')} must be above 0, got {self.max_body_mb!r}")
        if self.token is not None and not self.token.strip():
            raise ConfigError(f"{_named('token')} must not be empty")
        for origin in self.cors:
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (scheme not in ("http", "https") or not sep or not rest or "/" in rest):
                raise ConfigError(
                    f"{_named('cors')} takes an origin such as https://example.org:8080 (or *), "
                    f"got {origin!r}"
                )
        for name in self.allow_host:
            if not name or "/" in name or " " in name:
                raise ConfigError(
                    f"{_named('allow_host')} takes a host name such as models.lan, got {name!r}"
                )
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ConfigError(
                f"binding {self.host} lets other machines reach the models: give {_named('token')} "
                f"(or set {TOKEN_VARIABLE}) so that clients must send 'Authorization: Bearer TOKEN', "
                f"or {_named('insecure')} to serve anyone"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def _named(keyword: str) -> str:
    """A setting's name as the caller wrote it: ``--max-batch`` or ``max_batch``."""
    return setting(keyword).rstrip("=")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_from_environment(token: str | None) -> str | None:
    """The token given, else the one in ``PARAGRAD_SERVE_TOKEN`` (None when neither)."""
    return token if token is not None else os.environ.get(TOKEN_VARIABLE) or None


def model_paths(
    models: str | os.PathLike | Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
) -> dict[str, Path]:
    """Model files by the name clients use: ``NAME=PATH``, or the file's stem for a bare path."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    pairs = list(models.items()) if isinstance(models, Mapping) else [_name_and_path(m) for m in models]
    if not pairs:
        raise ConfigError("give at least one model file to serve")
    named: dict[str, Path] = {}
    for name, path in pairs:
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
        if name in named:
            raise ConfigError(f"two models are named {name!r}: name them with NAME=PATH")
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        named[name] = path
    return named


def _name_and_path(spec: str | os.PathLike) -> tuple[str, Path]:
    text = os.fspath(spec)
    name, sep, path = text.partition("=")
    if sep and not Path(text).is_file():
        return name, Path(path)
    return Path(text).stem, Path(text)
