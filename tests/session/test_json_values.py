"""json_values_refusal: how many values a JSON text holds, told without parsing it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session.errors import ErrorCode
from parley.session.json_values import MAX_JSON_DEPTH, MAX_JSON_VALUES, json_values_refusal


def counted(value: Any) -> int:
    """What the rule counts: every value, and once more each empty array or object (its
    opening bracket is followed by no value)."""
    if isinstance(value, dict):
        return 1 + (not value) + sum(counted(item) for item in value.values())
    if isinstance(value, list):
        return 1 + (not value) + sum(counted(item) for item in value)
    return 1


# Strings full of what would count outside one: quotes, backslashes, brackets, commas.
texts = st.text(alphabet=st.sampled_from('"\\,[]{}:a\u00e9\U0001f600\ud800 '), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(
    values,
    st.integers(min_value=1, max_value=60),
    st.booleans(),
    st.sampled_from([None, 1]),  # whitespace between values changes nothing
    st.booleans(),
)
def test_a_text_is_refused_exactly_when_it_counts_more_than_the_limit(
    value: Any, limit: int, ascii_only: bool, indent: int | None, as_bytes: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    raw: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    refused = json_values_refusal(raw, limit)
    assert (refused is not None) == (counted(value) > limit), text


def test_the_limit_itself_is_taken() -> None:
    at = [0] * (MAX_JSON_VALUES - 1)  # the array and its items
    assert json_values_refusal(json.dumps(at)) is None
    refused = json_values_refusal(json.dumps([*at, 0]))
    assert refused is not None and refused.code is ErrorCode.INVALID


@pytest.mark.parametrize(
    "text",
    [
        '"' + "\\\\" * 10_000 + '"',  # escaped backslashes: none escapes the closing quote
        '"' + '\\"' * 10_000 + '"',  # escaped quotes: one string
        '"' + ",[{" * 10_000 + '"',
    ],
)
def test_what_a_string_holds_is_not_counted(text: str) -> None:
    assert json_values_refusal(text) is None
    assert json_values_refusal(f'{{"text": {text}, "n": [1, 2]}}'.encode()) is None


def test_many_strings_are_refused_before_they_are_cut_apart() -> None:
    refused = json_values_refusal("[" + ",".join(['""'] * 100_000) + "]")
    assert refused is not None and refused.code is ErrorCode.INVALID


def test_text_that_is_not_json_may_pass_for_its_parser_to_refuse() -> None:
    for raw in ("", "not json", "{", '"unclosed', "[1,2", b"\xff\xfe"):
        assert json_values_refusal(raw) is None


def depth(value: Any) -> int:
    """How many arrays and objects nest, one in another, in ``value``."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=3), texts)
def test_a_text_is_refused_exactly_when_it_nests_past_the_limit(
    extra: int, wide: int, text: str
) -> None:
    """Review FX36: a frame of a thousand ``[`` ended in the parser's ``RecursionError``."""
    for levels in (MAX_JSON_DEPTH - extra, MAX_JSON_DEPTH + extra):
        value: Any = [text] * wide
        for level in range(levels - 1):
            value = {text: value} if level % 2 else [value, text]
        raw = json.dumps(value)
        refused = json_values_refusal(raw)
        assert (refused is not None) == (depth(value) > MAX_JSON_DEPTH), raw
        if refused is not None:
            assert refused.code is ErrorCode.INVALID
            assert "nested too deeply" in refused.message


@pytest.mark.parametrize("levels", [1_000, 4_000, 100_000])
def test_a_text_nested_past_what_the_parser_takes_is_refused_unparsed(levels: int) -> None:
    for raw in ("[" * levels + "]" * levels, '{"a":' * levels + "1" + "}" * levels, "[" * levels):
        refused = json_values_refusal(raw)
        assert refused is not None and refused.code is ErrorCode.INVALID, raw[:20]


def test_brackets_in_strings_and_after_a_fault_are_not_depth() -> None:
    inside = json.dumps({"text": "[" * 10_000 + '\\"' + "{" * 100})
    assert json_values_refusal(inside) is None
    assert json_values_refusal("]" * 500 + "[" * 500) is None  # not JSON: the parser's to say
