"""Outbound requests (event webhooks, webhook tools) over loopback receivers, with the DNS
answers given by a resolver seam: refused targets, one resolution per request whose
checked address is the one connected to (DNS rebinding), no redirects, one deadline,
and the host name kept for ``Host`` and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from parley.server.outbound import targets as outbound
from parley.server.outbound.targets import NoAnswer, OutboundClient, RefusedTarget
from tests.conftest import serve_asgi

PUBLIC = "93.184.216.34"  # never connected to: the tests record the attempt instead


class Resolver:
    """Answers from a script, one answer per call (the last one repeats), and counts."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Receiver:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self.gate = asyncio.Event()

    async def endpoint(self, request: Request) -> Response:
        await request.body()
        assert request.client is not None
        headers = {**request.headers, "x-client-port": str(request.client.port)}
        self.seen.append((request.url.path, headers))
        if request.url.path == "/moved":
            return RedirectResponse("/elsewhere", status_code=307)
        if request.url.path == "/slow":
            await self.gate.wait()
        if request.url.path == "/bomb":  # compressed though not asked for: 8 MiB of zeros
            packed = gzip.compress(bytes(8 * 1024 * 1024))
            return Response(packed, headers={"content-encoding": "gzip"})
        return Response(b"ok", status_code=200)


@contextlib.asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    paths = ("/hook", "/moved", "/slow", "/elsewhere", "/bomb")
    app = Starlette(routes=[Route(p, receiver.endpoint, methods=["POST"]) for p in paths])
    async with serve_asgi(app, **config) as receiver.port:
        try:
            yield receiver
        finally:
            receiver.gate.set()  # before the server waits for its requests to end


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the network under the checked backend: records where it was asked
    to connect and refuses, so no packet leaves the machine."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append((host, port))
        raise httpcore.ConnectError("recorded, not connected")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = RecordingBackend()
    monkeypatch.setattr(outbound, "_network", lambda: recorded)
    async with serving() as receiver:
        # Public at the check, the receiver's loopback address at any later lookup.
        resolver = Resolver([PUBLIC], ["127.0.0.1"])
        client = OutboundClient(allow_private=False, resolver=resolver)
        try:
            with pytest.raises(outbound.OutboundError, match="ConnectError"):
                await client.post(f"http://hooks.test:{receiver.port}/hook", b"{}", {}, timeout_s=5)
        finally:
            await client.aclose()
        assert resolver.asked == [("hooks.test", receiver.port)]  # resolved once
        assert recorded.asked == [(PUBLIC, receiver.port)]  # to the checked address only
        assert receiver.seen == []


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], [PUBLIC, "127.0.0.1"], ["169.254.169.254"], ["10.1.2.3"], ["::1"]],
)
async def test_any_private_address_in_the_answer_refuses_the_target(
    monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    recorded = RecordingBackend()
    monkeypatch.setattr(outbound, "_network", lambda: recorded)
    client = OutboundClient(allow_private=False, resolver=Resolver(answer))
    try:
        with pytest.raises(RefusedTarget, match="PARLEY_WEBHOOK_ALLOW_PRIVATE"):
            await client.post("http://hooks.test/hook", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert recorded.asked == []  # refused before any connection


@pytest.mark.parametrize(
    ("url", "answer", "reason"),
    [
        # Review: "'::1' resolves to 0.0.0.1 is a private or reserved address".
        ("http://[::1]/", ["::1"], "::1 is a loopback address (set"),
        # A literal written otherwise than the resolver gives it back is still no name.
        ("http://[::7f00:1]/", ["::127.0.0.1"], "::7f00:1 stands for 127.0.0.1, a loopback"),
        ("http://[fe80::1%25eth0]/", ["fe80::1%eth0"], "fe80::1 is a link-local address"),
        (
            "http://hooks.test/",
            [PUBLIC, "127.0.0.1"],
            "'hooks.test' resolves to a refused address: 127.0.0.1 is a loopback address",
        ),
    ],
)
async def test_a_refused_target_names_the_address_refused(
    url: str, answer: list[str], reason: str
) -> None:
    problem = await outbound.target_problem(url, allow_private=False, resolver=Resolver(answer))
    assert problem is not None and problem.startswith(reason), problem


# URLs no request can be sent to, and why: a control character (review I1: with
# ``allow_private`` the check for input looked at ``url_problem`` only, so such a URL was
# taken and every request then refused it as malformed), or a host that is no DNS name (review
# I1 again: an empty label, a label over 63 characters or a name over 253 passed the check
# for input with ``allow_private``, and a tool's URL always, while every request failed to
# encode or resolve it).
UNSENDABLE = [
    *((f"http://hooks.test/ok{bad}", "malformed URL") for bad in ("\x07", "\x7f", "\x00", "\x1b")),
    ("http://a..b/", "the host 'a..b' is no DNS name"),
    ("http://.hooks.test/", "the host '.hooks.test' is no DNS name"),
    ("http://" + "a" * 64 + ".test/", "the host 'aaaa"),
    ("http://" + ".".join(["abcdefghi"] * 26) + "/", "the host 'abcdefghi."),  # 259 characters
]


@pytest.mark.parametrize("allow_private", [True, False])
@pytest.mark.parametrize(("url", "reason"), UNSENDABLE)
async def test_a_url_no_request_can_be_sent_to_is_refused_at_its_check(
    allow_private: bool, url: str, reason: str
) -> None:
    """The check for input and the request parse the URL alike, in either mode, and refuse
    it before any lookup."""
    resolver = Resolver([PUBLIC])
    problem = await outbound.target_problem(url, allow_private=allow_private, resolver=resolver)
    assert problem is not None and problem.startswith(reason), problem
    assert outbound.url_form_problem(url) == problem
    client = OutboundClient(allow_private=allow_private, resolver=resolver)
    try:
        with pytest.raises(RefusedTarget) as refused:
            await client.post(url, b"{}", {}, timeout_s=1.0, max_body_bytes=16)
    finally:
        await client.aclose()
    assert str(refused.value) == problem
    assert resolver.asked == []  # refused before any lookup


def test_dns_names_up_to_their_limits_and_ip_literals_are_targets() -> None:
    longest = "http://" + ".".join(["a" * 63] * 3 + ["a" * 61]) + "./"  # 253 and a dot
    for fine in (longest, "http://" + "a" * 63 + ".test/", "http://[::1]:8080/", "http://ok/"):
        assert outbound.url_form_problem(fine) is None, fine


async def test_the_checked_address_is_connected_to_with_the_host_name_kept() -> None:
    async with serving() as receiver:
        resolver = Resolver(["127.0.0.1"])
        client = OutboundClient(allow_private=True, resolver=resolver)
        try:
            for _ in range(2):
                url = f"http://hooks.test:{receiver.port}/hook"
                answer = await client.post(url, b"{}", {"x-one": "1"}, timeout_s=5)
                assert answer.status_code == 200 and answer.body == b""  # status only
        finally:
            await client.aclose()
    assert [path for path, _ in receiver.seen] == ["/hook", "/hook"]
    assert {h["host"] for _, h in receiver.seen} == {f"hooks.test:{receiver.port}"}
    assert len(resolver.asked) == 2  # once per request


async def test_redirects_are_not_followed() -> None:
    async with serving() as receiver:
        client = OutboundClient(allow_private=True)
        try:
            answer = await client.post(
                f"http://127.0.0.1:{receiver.port}/moved", b"{}", {}, timeout_s=5
            )
        finally:
            await client.aclose()
    assert answer.status_code == 307
    assert [path for path, _ in receiver.seen] == ["/moved"]


async def test_one_deadline_bounds_the_lookup_and_the_answer() -> None:
    async def stuck(host: str, port: int) -> Sequence[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    client = OutboundClient(allow_private=True, resolver=stuck)
    async with serving() as receiver:
        try:
            async with asyncio.timeout(10):
                with pytest.raises(NoAnswer, match=r"0\.2 s"):
                    await client.post("http://hooks.test/hook", b"{}", {}, timeout_s=0.2)
                client.resolver = outbound.system_resolver
                with pytest.raises(NoAnswer):
                    await client.post(
                        f"http://127.0.0.1:{receiver.port}/slow", b"{}", {}, timeout_s=0.2
                    )
        finally:
            await client.aclose()
        assert [path for path, _ in receiver.seen] == ["/slow"]


async def test_the_body_is_read_up_to_its_limit() -> None:
    async with serving() as receiver:
        client = OutboundClient(allow_private=True)
        try:
            url = f"http://127.0.0.1:{receiver.port}/hook"
            whole = await client.post(url, b"{}", {}, timeout_s=5, max_body_bytes=10)
            cut = await client.post(url, b"{}", {}, timeout_s=5, max_body_bytes=1)
        finally:
            await client.aclose()
    assert (whole.body, whole.too_large) == (b"ok", False)
    assert (cut.body, cut.too_large) == (b"o", True)


async def test_a_compressed_answer_is_neither_asked_for_nor_unpacked() -> None:
    async with serving() as receiver:
        client = OutboundClient(allow_private=True)
        try:
            url = f"http://127.0.0.1:{receiver.port}/bomb"
            answer = await client.post(url, b"{}", {}, timeout_s=5, max_body_bytes=1000)
        finally:
            await client.aclose()
    assert answer.too_large and len(answer.body) == 1000  # the bytes as sent, cut
    assert answer.body[:2] == b"\x1f\x8b"  # still gzip: nothing was unpacked
    assert receiver.seen[-1][1]["accept-encoding"] == "identity"


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_to_the_checked_address_verifies_the_host_name(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, "hooks.test")
    trusted = ssl.create_default_context(cafile=str(cert))
    async with serving(ssl_certfile=str(cert), ssl_keyfile=str(key)) as receiver:
        client = OutboundClient(
            allow_private=True, resolver=Resolver(["127.0.0.1"]), ssl_context=trusted
        )
        try:
            url = f"https://hooks.test:{receiver.port}/hook"
            assert (await client.post(url, b"{}", {}, timeout_s=5)).status_code == 200
            # The same server by its address: the certificate names hooks.test, not it.
            with pytest.raises(outbound.OutboundError, match="ConnectError"):
                await client.post(f"https://127.0.0.1:{receiver.port}/hook", b"{}", {}, timeout_s=5)
        finally:
            await client.aclose()
    assert [h["host"] for _, h in receiver.seen] == [f"hooks.test:{receiver.port}"]


async def test_a_connection_serves_the_next_request_once_its_answer_is_read() -> None:
    async with serving() as receiver:
        resolver = Resolver(["127.0.0.1"])
        client = OutboundClient(allow_private=True, resolver=resolver)
        try:
            for _ in range(3):
                url = f"http://hooks.test:{receiver.port}/hook"
                answer = await client.post(url, b"{}", {}, timeout_s=5, max_body_bytes=64)
                assert answer.status_code == 200
        finally:
            await client.aclose()
    assert len({h["x-client-port"] for _, h in receiver.seen}) == 1  # one connection
    assert len(resolver.asked) == 3  # each request still checked its target
