"""Every REST body field takes exactly its JSON type (review: ``ttl_seconds: true`` made a
token that lived a second; ``"100"``, ``100.0`` and ``"1_000"`` were read as numbers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from parley.server.app import API_OPERATIONS
from parley.server.http.models import EntryPost, TokenCreate
from parley.server.http.rest import parsed_body
from parley.session.errors import InvalidInput
from parley.session.json_values import MAX_JSON_VALUES

BODIES = sorted({op.body for op in API_OPERATIONS if op.body is not None}, key=lambda m: m.__name__)


def _fields_typed(model: type[BaseModel], json_type: str) -> list[str]:
    """The top-level fields of ``model`` the OpenAPI document declares of ``json_type``."""
    found = []
    for name, prop in model.model_json_schema()["properties"].items():
        types = {prop.get("type"), *(each.get("type") for each in prop.get("anyOf", ()))}
        if json_type in types:
            found.append(name)
    return found


def _problems_at(model: type[BaseModel], name: str, value: Any) -> list[str]:
    """What the body ``{name: value}`` is refused for at ``name`` (other fields it lacks
    are refused too, and ignored here)."""
    try:
        parsed_body(model, json.dumps({name: value}).encode())
    except InvalidInput as exc:
        return [what for at, what in exc.details if at == name]
    return []


NOT_AN_INTEGER = "Input should be a valid integer"
INTEGERS = [(m, name) for m in BODIES for name in _fields_typed(m, "integer")]
NUMBERS = [(m, name) for m in BODIES for name in _fields_typed(m, "number")]


def test_the_bodies_have_integer_and_number_fields() -> None:
    names = {f"{m.__name__}.{name}" for m, name in INTEGERS}
    assert {"TokenCreate.ttl_seconds", "InviteCreate.max_uses"} <= names
    assert {"QuotasPut.session_tokens_per_day"} <= names
    assert NUMBERS, "ToolCreate.timeout_s is a number"


@pytest.mark.parametrize("not_an_integer", [True, False, "100", "  100 ", 100.5, "1_000"])
@pytest.mark.parametrize(("model", "name"), INTEGERS, ids=lambda v: getattr(v, "__name__", v))
def test_an_integer_field_takes_only_a_json_integer(
    model: type[BaseModel], name: str, not_an_integer: object
) -> None:
    assert _problems_at(model, name, not_an_integer) == [NOT_AN_INTEGER]
    assert NOT_AN_INTEGER not in _problems_at(model, name, 5)  # a bound may refuse 5


@pytest.mark.parametrize("whole", [b"100.0", b"1e2", b"1.00E+2", b"100"])
@pytest.mark.parametrize(("model", "name"), INTEGERS, ids=lambda v: getattr(v, "__name__", v))
def test_an_integer_field_takes_a_whole_number_written_as_a_decimal(
    model: type[BaseModel], name: str, whole: bytes
) -> None:
    """Review I2: the OpenAPI document (JSON Schema 2020-12) says ``"type": "integer"``,
    which any number with a zero fraction satisfies; the server refused ``100.0`` for its
    form. It takes it as the integer 100."""
    others = b'"user_id": "u", ' if "user_id" in model.model_fields else b""  # required
    parsed = parsed_body(model, b'{%s"%s": %s}' % (others, name.encode(), whole))
    value = getattr(parsed, name)
    assert value == 100 and type(value) is int
    below = _problems_at(model, name, 0.0)  # its bounds hold for a decimal too
    assert below and NOT_AN_INTEGER not in below, below


def _problems_in(model: type[BaseModel], name: str, literal: bytes) -> list[str]:
    """What the body holding the JSON text ``literal`` at ``name`` is refused for there."""
    others = b'"user_id": "u", ' if "user_id" in model.model_fields else b""  # required
    try:
        parsed_body(model, b'{%s"%s": %s}' % (others, name.encode(), literal))
    except InvalidInput as exc:
        return [what for at, what in exc.details if at == name]
    return []


# Each denotes a number with a fraction that is not zero, read as the double 100.0 (the
# fraction is past a double's precision) or 0.0 (the number is below its range).
INEXACT = [b"100.00000000000000001", b"1.0000000000000000001e2", b"-1e-400"]


@pytest.mark.parametrize("inexact", INEXACT)
@pytest.mark.parametrize(("model", "name"), INTEGERS, ids=lambda v: getattr(v, "__name__", v))
def test_an_integer_field_refuses_a_fraction_a_double_cannot_hold(
    model: type[BaseModel], name: str, inexact: bytes
) -> None:
    """Review B2-4: ``86400.000000000001`` was read as the double 86400.0, whose fraction
    is zero, so an integer field took it as 86400; it is refused as ``100.5`` is. A
    fraction of zeros, however long, is still a whole number."""
    assert _problems_in(model, name, inexact) == [NOT_AN_INTEGER]
    assert _problems_in(model, name, b"100.5") == [NOT_AN_INTEGER]
    assert _problems_in(model, name, b"100.000000000000000000") == []
    assert _problems_in(model, name, b"1.000000000000000000000000e2") == []


def test_an_integer_field_takes_the_integer_a_decimal_denotes_not_its_double() -> None:
    """``123456789012345678.0`` is read as the double 123456789012345680.0; the field
    takes the integer the body wrote."""
    parsed = parsed_body(TokenCreate, b'{"user_id": "u", "ttl_seconds": 123456789012345678.0}')
    assert parsed.model_dump()["ttl_seconds"] == 123456789012345678


@pytest.mark.parametrize(("model", "name"), NUMBERS, ids=lambda v: getattr(v, "__name__", v))
def test_a_number_field_takes_integers_and_floats_only(model: type[BaseModel], name: str) -> None:
    assert _problems_at(model, name, 5) == _problems_at(model, name, 5.5) == []
    assert _problems_at(model, name, "5") == _problems_at(model, name, True) != []
    # A number field takes the double nearest (a fraction past its precision is lost).
    assert [_problems_in(model, name, inexact) for inexact in INEXACT[:2]] == [[], []]


def _refused_unparsed(monkeypatch: pytest.MonkeyPatch, body: bytes) -> InvalidInput:
    """The refusal of ``body`` as an ``EntryPost``, which must come before any parse."""

    def parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed")

    monkeypatch.setattr(EntryPost, "model_validate_json", parse)
    monkeypatch.setattr(json, "loads", parse)
    with pytest.raises(InvalidInput) as refused:
        parsed_body(EntryPost, body)
    assert refused.value.code.value == "invalid"
    return refused.value


def test_a_body_of_more_values_than_any_holds_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: a 1 MB body of 350,000 empty lists in a field no body has was parsed whole
    (190 ms of the loop) to be refused; now unparsed, as a socket's command frame is."""
    body = b'{"text":"hi","x":[' + b",".join([b"[]"] * 200_000) + b"]}"
    refused = _refused_unparsed(monkeypatch, body)
    assert f"more than {MAX_JSON_VALUES} JSON values" in refused.message


def test_a_body_nested_too_deeply_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review FX36: nested past the parser's recursion limit, it was its ``RecursionError``."""
    body = b'{"text":"hi","x":' + b"[" * 2_000 + b"]" * 2_000 + b"}"
    refused = _refused_unparsed(monkeypatch, body)
    assert refused.message.startswith("JSON nested too deeply")


def _refusal(model: type[BaseModel], raw: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    with pytest.raises(InvalidInput) as refused:
        parsed_body(model, raw)
    return refused.value.code.value, refused.value.details


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("model", BODIES, ids=lambda m: m.__name__)
def test_nan_and_infinity_are_malformed_json_in_every_body(
    model: type[BaseModel], constant: str
) -> None:
    """Review I3: they are not JSON (RFC 8259) and the socket refuses the frame, but REST
    parsed them: ``"id": NaN`` was judged a wrong type, and a tool's ``"maximum": Infinity``
    was stored as ``null``. Anywhere in a body they are refused as malformed JSON is; so is
    a number past a double's range, which was read as Infinity (review I2-1)."""
    malformed = _refusal(model, b'{"x": }')
    for raw in (f'{{"x": {constant}}}', f'{{"x": {{"y": [1, {constant}]}}, "z": "NaN"}}'):
        code, details = _refusal(model, raw.encode())
        assert code == malformed[0] == "invalid"
        assert [at for at, _ in details] == [at for at, _ in malformed[1]] == ["body"], details
        assert details[0][1].startswith("Invalid JSON") and constant.lstrip("-") in details[0][1]


def test_the_words_nan_and_infinity_in_a_string_are_text() -> None:
    body = parsed_body(EntryPost, b'{"text": "NaN, Infinity and -Infinity", "id": "NaN"}')
    assert body.model_dump()["text"] == "NaN, Infinity and -Infinity"
