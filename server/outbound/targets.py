"""Where Parley's outbound requests (event webhooks) may go: the target's URL is checked,
then every address its host resolves to (``authz.targets``)."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from authz.targets import refused_address, url_problem


async def target_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` may not be called now, or None. Resolves its host: a name that resolves
    to a private, loopback or link-local address is refused unless ``allow_private``.

    The HTTP client resolves the name again when it connects, so a name whose answer
    changes in between (DNS rebinding) can slip past; the check still stops every
    target that points inward all the time."""
    problem = url_problem(url)
    if problem is not None or allow_private:
        return problem
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        return f"the host {host!r} does not resolve ({exc})"
    for *_, address in found:
        refused = refused_address(str(address[0]))
        if refused is not None:
            return f"{host!r} resolves to {refused} (set PARLEY_WEBHOOK_ALLOW_PRIVATE to allow)"
    return None
