"""This process's connection to Ray: join a cluster, or start a local instance on 127.0.0.1.

``address`` (or ``RAY_ADDRESS``) joins an existing cluster, after a quick check that
something listens there. Without one, a Ray instance already connected in this process
is used as it is; otherwise a local instance is started, bound to 127.0.0.1 with no
dashboard, and shut down when the last engine using it closes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import threading
from types import ModuleType

from paragrad.engines import ray_reaper
from paragrad.errors import ConfigError

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a clear error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray engine needs Ray: pip install 'paragrad[ray]'") from None
    return ray


class Connection:
    """This process's connection to Ray, shared by its engines and closed by the last one.

    ``ray.shutdown`` is called only when an engine opened the connection: a local
    instance started here stops with it, a joined cluster keeps running, and a connection
    the program made itself (``ray.init``) is left as it is.
    """

    users = 0
    opened_here = False
    reaper: subprocess.Popen[bytes] | None = None  # for a local instance started here

    @classmethod
    def open(cls, address: str | None, num_cpus: int) -> None:
        ray = import_ray()
        address = address or os.environ.get("RAY_ADDRESS") or None
        if ray.is_initialized():
            _check_same_cluster(ray, address)
        else:
            on_sigterm = signal.getsignal(signal.SIGTERM)
            if address is None:
                _start_local_instance(ray, num_cpus)
                cls.reaper = ray_reaper.start()  # stops Ray's agents if this process is killed
            else:
                _join(ray, address)
            if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaced the caller's handler
            cls.opened_here = True
        cls.users += 1

    @classmethod
    def close(cls) -> None:
        cls.users = max(cls.users - 1, 0)
        if cls.users == 0 and cls.opened_here:
            import_ray().shutdown()
            cls.opened_here = False
            if cls.reaper is not None:
                ray_reaper.done(cls.reaper)
                cls.reaper = None


QUIET = {"logging_level": logging.ERROR, "log_to_driver": False}


def _start_local_instance(ray: ModuleType, num_cpus: int) -> None:
    """A new Ray instance on this machine that listens on 127.0.0.1 alone, no dashboard.

    On Linux, Ray moves 127.0.0.1 to the host's address unless its "local only" setting
    is off, which it reads from the environment when imported: so the setting is switched
    in this process for the start, and in the environment the instance's processes inherit.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **QUIET
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot start a local Ray instance: {first_line(exc)}") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env
    host = ray.get_runtime_context().gcs_address.rpartition(":")[0]
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        ray.shutdown()
        raise ConfigError(f"the local Ray instance listened on {host}, not on 127.0.0.1; it was stopped")


def _join(ray: ModuleType, address: str) -> None:
    """Connect to a running cluster; fail at once when nothing listens at its address."""
    check_reachable(address)
    try:
        ray.init(address=address, **QUIET)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = first_line(exc)
        if "RAY_AUTH_MODE" not in os.environ:
            reason += " (a cluster that requires a token needs RAY_AUTH_MODE=token and its token here)"
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, with the reason, when nothing listens at a ``HOST:PORT`` address.

    Ray itself retries an unreachable address for many minutes before giving up.
    """
    host, port = _host_and_port(address)
    if host is None:
        return  # "auto", "ray://...": Ray resolves those itself
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def _check_same_cluster(ray: ModuleType, address: str | None) -> None:
    """Refuse an address other than the cluster this process is already connected to."""
    host, port = _host_and_port(address or "")
    if host is None:
        return
    current = ray.get_runtime_context().gcs_address
    try:
        wanted = f"{socket.gethostbyname(host)}:{port}"
    except OSError:
        wanted = f"{host}:{port}"
    if wanted != current:
        raise ConfigError(
            f"this process is already connected to the Ray cluster at {current}, not {address}: "
            "call ray.shutdown() first to join another"
        )


def _host_and_port(address: str) -> tuple[str | None, int]:
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return None, 0
    return host.strip("[]"), int(port)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
