"""``NaN`` and ``Infinity`` are not JSON: found outside strings, never inside them."""

from __future__ import annotations

import json

import pytest

from parley.session.json_constants import NotJsonConstant, constant_in, reject_constant


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
