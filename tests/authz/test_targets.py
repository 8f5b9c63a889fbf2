"""Outbound targets: only public addresses, and only plain http(s) URLs."""

from __future__ import annotations

import pytest

from parley.authz.targets import refused_address, url_problem


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1%eth0",
        "fc00::1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
        "100.64.0.1",
    ],
)
def test_inward_addresses_are_refused(address: str) -> None:
    assert refused_address(address) is not None


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052): 127.0.0.1 through the translator
        "64:ff9b::a9fe:a9fe",  # 169.254.169.254, a cloud's metadata service
        "64:ff9b:1::a00:1",  # the local-use NAT64 prefix (RFC 8215): 10.0.0.1
        "2002:7f00:1::",  # 6to4: 127.0.0.1
        "2002:a00:1::1",  # 6to4: 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "::10.0.0.1",
    ],
)
def test_ipv6_addresses_that_carry_an_inward_ipv4_address_are_refused(address: str) -> None:
    """An IPv6 address that a translator or tunnel turns into an IPv4 one is judged by it
    (on an IPv6-only host behind NAT64, 64:ff9b::a00:1 reaches 10.0.0.1)."""
    assert refused_address(address) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refused_address(address) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/", "http or https"),
        ("http:///path", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "malformed"),
        ("http://1.1.1.1:0/", "port must be 1 to 65535"),
        ("https://example.com:00/", "port must be 1 to 65535"),
    ],
)
def test_urls_that_are_no_target(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None and problem in found


def test_a_plain_url_is_a_target() -> None:
    assert url_problem("https://hooks.example.com/parley?x=1") is None


# What each refusal says (review: ``::1`` was named "0.0.0.1", its IPv4-compatible
# reading, as ``::/96`` holds it).
REASONS = {
    "::1": "::1 is a loopback address",
    "::": ":: is a private or reserved address",
    "fe80::1%eth0": "fe80::1 is a link-local address",
    "::ffff:127.0.0.1": "::ffff:7f00:1 stands for 127.0.0.1, a loopback address",
    "64:ff9b::a9fe:a9fe": "64:ff9b::a9fe:a9fe stands for 169.254.169.254, a link-local",
    "10.1.2.3": "10.1.2.3 is a private or reserved address",
}


@pytest.mark.parametrize("address", sorted(REASONS))
def test_a_refusal_names_the_address_and_what_it_stands_for(address: str) -> None:
    refused = refused_address(address)
    assert refused is not None and refused.startswith(REASONS[address]), refused
