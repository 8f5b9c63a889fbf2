"""The one way Parley calls out (event webhooks, webhook tools): resolve the target's host
once, check every address it resolves to (``authz.targets``), and connect only to a
checked address.

Checking a name and letting the HTTP client resolve it again to connect leaves a gap: a
name that answers with a public address at the check and with ``127.0.0.1`` a moment
later (DNS rebinding) would reach inward. Here the client's network backend connects to
the addresses that were checked for this request, never to what the name resolves to by
then; the URL keeps its host name, so the ``Host`` header, the TLS server name (SNI) and
the certificate check all stay those of the name. Redirects are not followed, and one
deadline bounds the whole request: resolving, connecting, sending and reading.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from parley.authz.targets import refused_address, url_problem
from parley.server.outbound.streams import streamed

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""The addresses (IPs) a host name and port resolve to; ``OSError`` when none."""

# Addresses tried per request, at most: a name answering with hundreds of addresses must
# not turn one delivery into hundreds of connection attempts.
MAX_ADDRESSES = 8


async def system_resolver(host: str, port: int) -> list[str]:
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(address[0]) for *_, address in found))


class OutboundError(Exception):
    """A request that got no answer; ``str()`` says why (for a delivery's record or the
    model's tool result). Never leaves the server: callers turn it into their own result."""


class RefusedTarget(OutboundError):
    """The target is no target (its URL) or may not be reached (its addresses)."""


class NoAnswer(OutboundError):
    """No answer within the deadline."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A target's host and port, with the addresses it resolved to and passed the check."""

    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: bytes  # at most the bytes asked for
    too_large: bool = False  # the body went on past them


def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (with a zone, ``%25eth0`` in a URL, or not)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def parsed_target(url: str) -> tuple[str, int]:
    """``url``'s host (IDNA-encoded, as the client connects to it) and port, as every
    request parses it; ``RefusedTarget`` when the URL is no target (``url_problem``), the
    HTTP client cannot send to it (a control character, say) or its host is a name no
    lookup takes."""
    problem = url_problem(url)
    if problem is not None:
        raise RefusedTarget(problem)
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise RefusedTarget(f"malformed URL ({exc})") from None
    if not _is_ip(host):
        problem = _dns_name_problem(host)
        if problem is not None:
            raise RefusedTarget(f"the host {host[:80]!r} is no DNS name ({problem})")
    return host, parsed.port or (443 if parsed.scheme == "https" else 80)


# The longest name DNS carries, in characters (255 octets on the wire), a final dot aside.
MAX_DNS_NAME_CHARS = 253


def _dns_name_problem(host: str) -> str | None:
    """Why no lookup can take ``host``, or None: the resolver encodes it with Python's
    ``idna`` codec, which refuses an empty label or one over 63 characters, and DNS takes
    no name over ``MAX_DNS_NAME_CHARS`` (review I1: such a URL was taken, and every request
    to it failed)."""
    if len(host.removesuffix(".")) > MAX_DNS_NAME_CHARS:
        return f"over {MAX_DNS_NAME_CHARS} characters"
    try:
        host.encode("idna")
    except UnicodeError as exc:
        return str(exc)
    return None


def url_form_problem(url: str) -> str | None:
    """Why no request can ever be sent to ``url`` (``parsed_target``), or None."""
    try:
        parsed_target(url)
    except RefusedTarget as exc:
        return str(exc)
    return None


async def check_target(url: str, *, allow_private: bool, resolver: Resolver) -> Checked:
    """Resolve ``url``'s host once and check every address; ``RefusedTarget`` when the URL
    is no target or an address is private, loopback or link-local (unless
    ``allow_private``)."""
    host, port = parsed_target(url)
    try:
        addresses = tuple(await resolver(host, port))
    except (OSError, UnicodeError, ValueError) as exc:
        raise RefusedTarget(f"the host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise RefusedTarget(f"the host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            refused = refused_address(address)
            if refused is not None:
                # The address named as it is (review: ``::1`` was named as 0.0.0.1).
                where = "" if _is_ip(host) else f"{host!r} resolves to a refused address: "
                raise RefusedTarget(
                    f"{where}{refused} (set PARLEY_WEBHOOK_ALLOW_PRIVATE to allow it)"
                )
    return Checked(host, port, addresses[:MAX_ADDRESSES])


async def target_problem(
    url: str, *, allow_private: bool, resolver: Resolver = system_resolver
) -> str | None:
    """Why ``url`` may not be called now, or None (a check for input, such as a new
    subscription's URL; a request checks again, and connects to what it checked). With
    ``allow_private`` only the URL is checked, as a request parses it: any address it
    resolves to would do (review: ``url_problem`` alone let a URL with a control
    character through, which every attempt then refused)."""
    if allow_private:
        return url_form_problem(url)
    try:
        await check_target(url, allow_private=allow_private, resolver=resolver)
    except RefusedTarget as exc:
        return str(exc)
    return None


# The target checked for the request under way in this task (httpcore connects in the
# task that sends the request).
_checked: ContextVar[Checked | None] = ContextVar("parley_outbound_checked", default=None)


def _network() -> httpcore.AsyncNetworkBackend:
    """The network under the check (tests put a recorder here)."""
    return httpcore.AnyIOBackend()


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses checked for the request under way, and nowhere else."""

    def __init__(self) -> None:
        self._inner = _network()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        checked = _checked.get()
        if checked is None or (host.lower(), port) != (checked.host.lower(), checked.port):
            raise httpcore.ConnectError(f"{host}:{port} was not checked for this request")
        failed: Exception | None = None
        for address in checked.addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None  # ``check_target`` never passes no address
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound requests use TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose connections go through ``_CheckedBackend``."""

    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext) -> None:
        # ``verify``: the context given, not one httpx would build (30-50 ms) only to drop.
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx takes no network backend: its pool is replaced by one like it that has
        # ours (``tests/server/test_outbound.py`` fails if this stops connecting there).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=_CheckedBackend(),
        )


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trust store, loaded once: building a context reads every CA (about
    17 ms here), and a webhook tool opens a client per call on the sessions' loop."""
    return ssl.create_default_context()


class OutboundClient:
    """Sends Parley's outbound POSTs. One per sender (its connections are pooled per host,
    each made to a checked address); ``resolver`` is the seam tests replace."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        transport = _CheckedTransport(max_connections, ssl_context or default_tls())
        # Answers are read as sent (``aiter_raw``) and asked for uncompressed: a receiver's
        # gzip could otherwise unpack one 64 KiB read into many megabytes before the
        # length check.
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={"Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        max_body_bytes: int = 0,
    ) -> Answer:
        """POST ``body`` to ``url`` and read up to ``max_body_bytes`` of the answer (0: its
        status only), all within ``timeout_s``. ``RefusedTarget`` for a target it may not
        reach, ``NoAnswer`` past the deadline, ``OutboundError`` for any other failure."""
        try:
            async with asyncio.timeout(timeout_s):
                checked = await check_target(
                    url, allow_private=self.allow_private, resolver=self.resolver
                )
                token = _checked.set(checked)
                try:
                    return await self._send(url, body, headers, timeout_s, max_body_bytes)
                finally:
                    _checked.reset(token)
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout_s:g} s") from None

    async def _send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float, limit: int
    ) -> Answer:
        try:
            async with streamed(
                self._http, "POST", url, content=body, headers=dict(headers), timeout=timeout_s
            ) as response:
                data = bytearray()
                if limit > 0:
                    async for chunk in response.aiter_raw():
                        data += chunk
                        if len(data) > limit:
                            return Answer(response.status_code, bytes(data[:limit]), True)
                return Answer(response.status_code, bytes(data))
        except httpx.TimeoutException:
            raise NoAnswer(f"no answer within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise OutboundError(f"{type(exc).__name__}: {exc}"[:500]) from None
