"""Which addresses an outbound request (an event webhook, a webhook tool) may reach.

The check runs on every address a target's name resolves to, not on the name: a public
name may point at ``127.0.0.1`` or at a cloud's metadata service (``169.254.169.254``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

# IPv6 addresses whose last 32 bits are an IPv4 address that a translator reaches: RFC
# 6052's well-known NAT64 prefix and the deprecated IPv4-compatible ones. (RFC 8215's
# local-use NAT64 prefix, 64:ff9b:1::/48, places it where its operator chooses: refused.)
_EMBEDS_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _inner_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``ip`` stands for (mapped, 6to4, NAT64, compatible), if any."""
    if ip.ipv4_mapped is not None or ip.sixtofour is not None:
        return ip.ipv4_mapped or ip.sixtofour
    if any(ip in net for net in _EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _refused_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of inward address ``ip`` is, or None when it is public."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or not ip.is_global:  # private, shared (CGNAT), reserved, ...
        return "a private or reserved address"
    return None


def refused_address(address: str) -> str | None:
    """Why a request may not go to ``address`` (an IP), or None when it is public. The
    reason names ``address`` as given, and the IPv4 address it stands for if it carries
    one (review: ``::1`` was named as 0.0.0.1, the IPv4-compatible reading of it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address[:100]!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return f"{ip} is a private or reserved address (local-use NAT64)"
        # ``::1`` and ``::`` are IPv6's own loopback and unspecified addresses, though they
        # lie in the IPv4-compatible ``::/96``: judged as themselves.
        inner = None if ip.is_loopback or ip.is_unspecified else _inner_ipv4(ip)
        if inner is not None:
            why = _refused_ip(inner)
            return None if why is None else f"{ip} stands for {inner}, {why}"
    why = _refused_ip(ip)
    return None if why is None else f"{ip} is {why}"


def url_problem(url: str) -> str | None:
    """What makes ``url`` no target at all (scheme, host, credentials), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if port == 0:  # nothing listens there (review: taken, every delivery then failed)
        return "the URL's port must be 1 to 65535"
    if parts.scheme not in ("http", "https"):
        return "the URL must be http or https"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username or parts.password:
        return "the URL may not carry credentials"
    return None
