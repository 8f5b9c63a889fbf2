"""A ``model_call`` record's sizes (its token counts and what it drew on) are shown only to a
reader who may read all the call drew on, of a side-thread call only to its owner, and all
to the admin key (review RC-1); other records are shown whole."""

from __future__ import annotations

from typing import Any

from parley.authz.policy import Readers, Subject, restriction_to_json
from parley.authz.roles import Capability
from parley.session.core.audit_view import SIZE_FIELDS, shown_record

VAULT = Readers("doc:vault", users=frozenset({"alice"}))
READS = frozenset({Capability.READ_SESSION, Capability.READ_AUDIT})
ALICE = Subject("alice", "editor", READS)
BOB = Subject("bob", "owner", READS)


def call(drew_on: list[dict[str, Any]] | None, **more: Any) -> dict[str, Any]:
    issuers = [{"user_id": "alice", "role": "editor"}]
    return {
        "issuers": issuers,
        "drew_on": drew_on,
        "input_tokens": 224,
        "output_tokens": 9,
        "ms": 812.5,
        "started_at": 1_700_000_000_000,
        **more,
    }


def sizes(data: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(data[name] for name in SIZE_FIELDS)


def test_a_call_that_drew_on_nothing_restricted_is_shown_whole() -> None:
    for reader in (ALICE, BOB, None):
        shown = shown_record("model_call", call([]), reader)
        assert shown.withheld == () and sizes(shown.data) == ([], 224, 9, 812.5, 1_700_000_000_000)


def test_a_call_that_drew_on_what_the_reader_may_not_read_has_no_sizes() -> None:
    record = call(restriction_to_json((VAULT,)))
    bob = shown_record("model_call", record, BOB)
    assert bob.withheld == SIZE_FIELDS and sizes(bob.data) == (None,) * 5
    assert bob.data["issuers"] == record["issuers"]  # the rest is whole
    assert shown_record("model_call", record, ALICE).withheld == ()
    assert shown_record("model_call", record, None).data == record
    granted = Subject("bob", "owner", READS | {"read:doc:vault"})
    assert shown_record("model_call", record, granted).withheld == ()
    denied = Subject("alice", "editor", READS, frozenset({"read:doc:vault"}))
    assert shown_record("model_call", record, denied).withheld == SIZE_FIELDS


def test_a_side_thread_call_is_its_owners_alone() -> None:
    record = call([], thread_id="t1")
    assert shown_record("model_call", record, BOB).withheld == SIZE_FIELDS
    assert shown_record("model_call", record, ALICE).withheld == ()
    assert shown_record("model_call", record, None).withheld == ()


def test_a_reader_who_may_not_read_the_session_reads_no_sizes() -> None:
    auditor = Subject("carl", "auditor", frozenset({Capability.READ_AUDIT}))
    assert shown_record("model_call", call([]), auditor).withheld == SIZE_FIELDS


def test_a_record_that_does_not_say_what_it_drew_on_tells_no_counts() -> None:
    """Written before calls recorded it: unknown, so withheld from members."""
    old = call(None)
    del old["drew_on"]
    bob = shown_record("model_call", old, BOB)
    assert bob.withheld == ("input_tokens", "output_tokens", "ms", "started_at")
    assert bob.data["drew_on"] is None
    whole = (None, 224, 9, 812.5, 1_700_000_000_000)
    assert sizes(shown_record("model_call", old, None).data) == whole
    cut_off = {**call(None), "input_tokens": None, "output_tokens": None, "ms": None}
    cut_off["started_at"] = None
    assert shown_record("model_call", cut_off, BOB).withheld == ()  # nothing to withhold


def test_other_records_are_shown_whole() -> None:
    record = {"reply_id": "r", "drew_on": restriction_to_json((VAULT,))}
    assert shown_record("reply_shared", record, BOB).data == record


def test_a_withheld_calls_start_is_withheld_with_its_time() -> None:
    """Review RG-1: with ``ms`` withheld, the record's ``at`` (the call's end) less its
    ``started_at`` was the call's time to within a millisecond."""
    bob = shown_record("model_call", call([], thread_id="t1"), BOB)
    assert "started_at" in bob.withheld and bob.data["started_at"] is None
