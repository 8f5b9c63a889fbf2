"""Origins compared as scheme, host and port; the server's own from its local address."""

from __future__ import annotations

import pytest

from parley.authz.origins import (
    check_allowed_origins,
    normalise_origin,
    origin_allowed,
    own_origins,
)


def test_origins_normalise_to_scheme_host_and_port() -> None:
    assert normalise_origin("HTTPS://App.Example") == "https://app.example:443"
    assert normalise_origin("http://app.example:80/") == "http://app.example:80"
    assert normalise_origin("http://[::1]:8765") == "http://[::1]:8765"
    for bad in (
        "null",
        "",
        "app.example",
        "ftp://x",
        "http://u:p@x",
        "http://x/path",
        "http://x:99999",
    ):
        assert normalise_origin(bad) is None, bad


def test_an_allow_list_entry_must_be_an_origin() -> None:
    assert check_allowed_origins(["*", "https://a.example"]) == ["*", "https://a.example:443"]
    with pytest.raises(ValueError, match="not an origin"):
        check_allowed_origins(["a.example"])


def test_own_origins_come_from_the_local_address() -> None:
    assert own_origins(False, "10.0.0.5", 8765) == {"http://10.0.0.5:8765"}
    assert own_origins(True, "10.0.0.5", 443) == {"https://10.0.0.5:443"}
    assert own_origins(False, "127.0.0.1", 80) == {
        "http://127.0.0.1:80",
        "http://localhost:80",
        "http://[::1]:80",
    }
    assert own_origins(False, "::1", 80) == own_origins(False, "127.0.0.1", 80)
    assert own_origins(False, None, None) == frozenset()


def test_the_decision() -> None:
    own = own_origins(False, "127.0.0.1", 8765)
    assert origin_allowed(None, [], own)  # not a browser
    assert origin_allowed("http://localhost:8765", [], own)
    assert not origin_allowed("http://evil.example:8765", [], own)  # rebinding: Host agrees
    assert not origin_allowed("https://127.0.0.1:8765", [], own)
    assert not origin_allowed("http://127.0.0.1:8766", [], own)
    assert not origin_allowed("http://anything", [], frozenset())
    listed = check_allowed_origins(["https://app.example"])
    assert origin_allowed("https://app.example", listed, own)
    assert not origin_allowed("http://localhost:8765", listed, own)  # the list replaces own
    assert origin_allowed("http://whatever.example", ["*"], own)
    assert not origin_allowed("null", listed, own)
