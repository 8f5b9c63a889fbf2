"""``NaN`` and ``Infinity`` are not JSON, nor is a number past a double's range read as
one: found outside strings, never inside them."""

from __future__ import annotations

import json

import pytest

from parley.session.json_constants import (
    NotJsonConstant,
    NumbersRead,
    constant_in,
    finite_float,
    read_numbers,
    reject_constant,
    whole_denoted,
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


@pytest.mark.parametrize(
    ("number", "whole"),
    [
        ("100.00000000000000001", None),
        ("1.0000000000000000001e2", None),
        ("1e-400", None),
        ("-1e-99999999999999999999", None),  # past Decimal's exponents
        ("0.0e-99999999999999999999", 0),
        ("1.5e1", 15),
        ("-0.0", 0),
        ("123456789012345678.0", 123456789012345678),  # its double is ...680
        ("100.000000000000000000", 100),
    ],
)
def test_the_integer_a_number_denotes(number: str, whole: int | None) -> None:
    assert whole_denoted(number) == whole


def test_a_number_read_as_a_whole_double_it_is_not_is_named_by_its_key() -> None:
    """Review B2-4: a double holds about 16 digits, so ``86400.000000000001`` is read as
    86400.0: the key it is at is told with the integer it denotes, None for a fraction."""
    raw = (
        b'{"a": 86400.000000000001, "b": [123456789012345678.0, 5.5], "c": 1e-400,'
        b' "d": 100.0, "e": 1.5e1, "f": "86400.000000000001"}'
    )
    assert read_numbers(raw) == NumbersRead(
        read_as_whole={
            ("a", 86400.0): None,
            ("b", 123456789012345680.0): 123456789012345678,
            ("c", 0.0): None,
        }
    )
    # The same double at one key twice is taken only if both denote the same integer.
    twice = read_numbers(b'[{"a": 1e-400}, {"a": 0e-400}, {"b": 1e-400}, {"b": 2e-400}]')
    assert twice.read_as_whole == {("a", 0.0): None, ("b", 0.0): None}


@pytest.mark.parametrize("raw", [b'{"a": 100.0, "b": 0.1, "c": 1e5}', b'{"a": "1e400"}', b"{"])
def test_numbers_read_as_what_they_are_are_not_named(raw: bytes) -> None:
    assert read_numbers(raw) == NumbersRead()
