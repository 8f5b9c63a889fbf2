"""``NaN`` and ``Infinity`` are not JSON, nor is a number past a double's range read as
one: found outside strings, never inside them."""

from __future__ import annotations

import json

import pytest

from parley.session.json_constants import (
    NotJsonConstant,
    constant_in,
    finite_float,
    reject_constant,
)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_constant_outside_strings_is_named(constant: str) -> None:
    assert constant_in(f'{{"a": [1, {{"b": {constant}}}]}}'.encode()) == f"{constant} is not JSON"
    with pytest.raises(NotJsonConstant):
        json.loads(f"[{constant}]", parse_constant=reject_constant)


@pytest.mark.parametrize(
    "raw",
    [b'{"a": "NaN"}', b'{"Infinity": 1}', b'{"a": "x\\" NaN"}', b"{}", b"\xff NaN"],
)
def test_words_in_strings_and_text_that_is_not_json_for_another_reason_pass(raw: bytes) -> None:
    assert constant_in(raw) is None


OVERFLOWING = ["1e400", "-1E+400", "1" * 400 + ".5", "0.5e999"]


@pytest.mark.parametrize("number", OVERFLOWING)
def test_a_number_past_a_doubles_range_is_named(number: str) -> None:
    """Review I2-1: ``1e400`` (valid JSON) was read as Infinity, so a tool registered with
    ``"maximum": 1e400`` was stored as Infinity and every run offering it failed."""
    found = constant_in(f'{{"a": [1, {{"b": {number}}}], "c": "1e5"}}'.encode())
    assert found is not None and found.endswith("is past a number's range")
    with pytest.raises(NotJsonConstant):
        json.loads(f"[{number}]", parse_float=finite_float)


@pytest.mark.parametrize(
    "raw", [b'{"a": "1e400"}', b'{"a": 1e308, "b": 1e-400}', b"[" + b"9" * 400 + b"]"]
)
def test_numbers_in_range_and_in_strings_pass(raw: bytes) -> None:
    assert constant_in(raw) is None
