"""A key given twice in a JSON object is refused, at any depth (review: a body
``{"role": "viewer", "role": "owner"}`` made an owner; a command's second ``text`` was
the one stored)."""

from __future__ import annotations

import pytest

from parley.session.commands import CommandError, Limits, parse_command
from parley.session.errors import InvalidInput
from parley.session.unique_keys import check_unique_keys


@pytest.mark.parametrize(
    "raw",
    [
        b'{"role": "viewer", "role": "owner"}',
        b'{"a": [1, {"b": {"c": 1, "c": 2}}]}',
        b'[{"x": 1}, {"y": 1, "y": 1}]',
    ],
)
def test_a_repeated_key_at_any_depth_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="given twice in one object"):
        check_unique_keys(raw)


@pytest.mark.parametrize(
    "raw", [b'{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}', b"not json", b"", b"[" * 100_000]
)
def test_keys_once_per_object_pass_and_other_faults_are_left_to_the_parser(raw: bytes) -> None:
    check_unique_keys(raw)


def test_a_command_with_a_repeated_key_is_invalid_and_keeps_its_id() -> None:
    frame = '{"type": "message", "text": "first", "text": "second", "id": "dk2"}'
    with pytest.raises(CommandError) as caught:
        parse_command(frame, Limits())
    assert (caught.value.code, caught.value.command_id) == ("invalid", "dk2")
    assert "'text' is given twice" in caught.value.message


def test_a_repeated_id_is_named_as_json_reads_it() -> None:
    """The fuzzer: a reply names a command by the id a JSON reader takes (the last of a
    repeated key), as every other refusal does."""
    frame = '{"id": "other", "type": "pin", "id": "c8", "entry_id": "x"}'
    with pytest.raises(CommandError) as caught:
        parse_command(frame, Limits())
    assert (caught.value.code, caught.value.command_id) == ("invalid", "c8")
