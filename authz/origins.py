"""Which browser origins may open a session socket (against cross-site WebSocket hijacking).

An origin is compared as scheme, host and port, never against the handshake's ``Host``
header: a page of a domain that an attacker points at this server's address (DNS
rebinding) sends a ``Host`` that matches its own ``Origin``, so "same host as Host" admits
it. With no allow-list, the only origins admitted are the server's own: the address and
port the connection was accepted on (``own_origins``), which a rebound domain cannot be.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
ANY = "*"


def normalise_origin(origin: str) -> str | None:
    """``scheme://host:port`` (lower case, default port made explicit), or None when
    ``origin`` is not an http(s) origin (a path, credentials, ``null``, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORTS[parts.scheme]}"


def check_allowed_origins(entries: Iterable[str]) -> list[str]:
    """The allow-list as set by the operator, normalised; ``ValueError`` names a bad entry."""
    checked = []
    for entry in entries:
        normal = ANY if entry.strip() == ANY else normalise_origin(entry)
        if normal is None:
            raise ValueError(f"{entry!r} is not an origin: scheme://host[:port], or '*'")
        checked.append(normal)
    return checked


def own_origins(secure: bool, host: str | None, port: int | None) -> frozenset[str]:
    """The origins of pages this server serves itself, from the local address a connection
    was accepted on (a loopback address also under its other loopback names)."""
    if not host or port is None:
        return frozenset()
    scheme = "https" if secure else "http"
    bracketed = f"[{host}]" if ":" in host else host
    hosts = LOOPBACK_HOSTS if bracketed.lower() in LOOPBACK_HOSTS else {bracketed}
    return frozenset(f"{scheme}://{h.lower()}:{port}" for h in hosts)


def origin_allowed(origin: str | None, allowed: Sequence[str], own: Iterable[str]) -> bool:
    """Decide from the handshake's ``Origin`` header.

    No ``Origin``: not a browser (browsers always send one on a WebSocket handshake), so no
    page can ride on a visitor's access: allowed. ``allowed`` (normalised, see
    ``check_allowed_origins``) containing ``*`` admits any origin; otherwise the origin must
    be listed, scheme, host and port alike. An empty list admits ``own`` alone.
    """
    if origin is None:
        return True
    if ANY in allowed:
        return True
    normal = normalise_origin(origin)
    return normal is not None and normal in (allowed or frozenset(own))
