"""What keeps web pages from using a server on this machine: the Host and Origin checks,
the content types inference takes, and CORS (off unless asked for).

A page on any site can make the browser send a POST to ``127.0.0.1:8000``: a "simple"
request (a form, or ``text/plain``) needs no preflight, and a DNS name the attacker
controls can be pointed at 127.0.0.1 (DNS rebinding), making the page same-origin. So:

- without a token, the ``Host`` header must name this server (its address, ``localhost``
  on loopback, any IP address when it listens on all of them) or a name given with
  ``--allow-host``; a rebound name is refused 403;
- a request that carries an ``Origin`` (every browser's cross-site POST does) must come
  from this server's own origin or one given with ``--cors``; others are refused 403;
- inference takes only JSON or the binary tensor extension's types, never a form's or
  ``text/plain``: anything else is 415. A request with no type at all is taken (Triton's
  clients send none; a browser sending none also sends its ``Origin``).
"""

from __future__ import annotations

import ipaddress

from paragrad.serving.config import ServeConfig, is_loopback
from paragrad.serving.tensors import RequestError

JSON_TYPES = ("application/json",)
BINARY_TYPES = ("application/octet-stream", "application/vnd.triton.binary")
PREFLIGHT_HEADERS = "authorization, content-type, content-encoding, inference-header-content-length"
EXPOSED_HEADERS = "x-model-version, inference-header-content-length"
MAX_KEPT = 1000  # Host values whose answer is kept


class Guard:
    """The checks of one server, with their answers kept per header value (they repeat)."""

    def __init__(self, config: ServeConfig) -> None:
        self.check_host = config.token is None and "*" not in config.allow_host
        self._bound = config.host
        self._names = {name.lower() for name in config.allow_host}
        self.cors = tuple(config.cors)
        self._hosts: dict[str, bool] = {}

    def check(self, host: str | None, origin: str | None) -> None:
        """403 for a ``Host`` that is not this server's or an ``Origin`` not allowed."""
        if self.check_host and host is not None:
            allowed = self._hosts.get(host)
            if allowed is None:
                allowed = self._host_allowed(host)
                if len(self._hosts) < MAX_KEPT:  # a client sending many names fills no memory
                    self._hosts[host] = allowed
            if not allowed:
                raise RequestError(
                    403,
                    f"Host {_shown(host)} does not name this server: call it by its address, "
                    "or start it with --allow-host NAME (or a --token)",
                )
        if origin is not None and not self._origin_allowed(origin, host):
            raise RequestError(
                403, f"requests from {_shown(origin)} are refused: start the server with --cors ORIGIN"
            )

    def cors_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` to answer ``origin`` with, if any."""
        if origin is None or not self.cors:
            return None
        if "*" in self.cors:
            return "*"
        return origin if origin in self.cors else None

    def _host_allowed(self, host: str) -> bool:
        """Whether ``host`` names this server: its address or name, ``localhost`` where that
        reaches it, an IP address it listens on, or a name given with ``--allow-host``.
        Only a name can be rebound, so an IP address is taken wherever it may reach us."""
        name, bound = _host_name(host), self._bound.lower()
        if name in self._names or name == bound:
            return True
        bound_ip = _ip(bound)
        if name == "localhost":
            return is_loopback(bound) or (bound_ip is not None and bound_ip.is_unspecified)
        address = _ip(name)
        if address is None:
            return False
        if bound_ip is None:  # listening on a name: "localhost", or one of this machine's
            return address.is_loopback if bound == "localhost" else True
        return (
            bound_ip.is_unspecified or address == bound_ip or (bound_ip.is_loopback and address.is_loopback)
        )

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        if "*" in self.cors or origin in self.cors:
            return True
        scheme, _, rest = origin.partition("://")
        return scheme in ("http", "https") and host is not None and rest.lower() == host.lower()


def check_content_type(content_type: str | None, binary: bool) -> None:
    """415 unless an inference body is JSON, or binary tensors under their own types."""
    if content_type is None:
        return
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in JSON_TYPES or kind.endswith("+json") or (kind in BINARY_TYPES and binary):
        return
    raise RequestError(
        415,
        f"Content-Type {_shown(kind)} is not taken: send 'Content-Type: application/json' "
        "(or binary tensors with Inference-Header-Content-Length)",
    )


def _host_name(host: str) -> str:
    """The name or address in a ``Host`` header, without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")
