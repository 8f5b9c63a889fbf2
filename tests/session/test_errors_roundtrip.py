"""An error reported across processes (a forwarded command's reply) keeps its class."""

from __future__ import annotations

from parley.session.errors import (
    ErrorCode,
    NotFound,
    ParleyError,
    ProviderError,
    QuotaExceeded,
    TooLarge,
    error_for,
)


def test_every_code_comes_back_as_its_own_error() -> None:
    for kind in (NotFound, QuotaExceeded, TooLarge, ProviderError):
        error = error_for(kind.code.value, "why")
        assert type(error) is kind and error.message == "why"
    assert {error_for(code.value, "").code for code in ErrorCode} == set(ErrorCode)


def test_an_unknown_code_is_a_plain_parley_error() -> None:
    assert type(error_for("nonsense", "why")) is ParleyError
