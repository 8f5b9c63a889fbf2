"""Semantic events as values: kinds, JSON data, decoding, membership changes."""

from __future__ import annotations

import json

import pytest

from parley.session.events import (
    KINDS,
    FactSet,
    MemberChanged,
    MemberJoined,
    MemberLeft,
    Membership,
    MessagePosted,
    PinChanged,
    PromptAccepted,
    ReplyCompleted,
    RunFailed,
    RunStarted,
    SessionEvent,
    SettingsChanged,
    StoredEvent,
    decode,
    membership_event,
)
from parley.session.reasons import Ending, ReasonCode

EXAMPLES: list[SessionEvent] = [
    PromptAccepted("p1", 3, "alice"),
    MessagePosted("m1", 4, "bob"),
    RunStarted("r1", ("p1", "p2"), ("alice", "bob")),
    ReplyCompleted("r1", ("p1", "p2")),
    RunFailed.of(("p3",), None, Ending(ReasonCode.CANCELLED, "cancelled by alice")),
    RunFailed.of(("p4",), "r2", Ending(ReasonCode.TIMEOUT, "no answer within 5 s")),
    MemberJoined("carol", "editor", ("pin",), (), "admin"),
    MemberChanged("carol", "viewer", (), ("prompt",), "alice"),
    MemberLeft("carol", "admin"),
    SettingsChanged({"model": "offline", "title": "new"}, "admin"),
    SettingsChanged({"model": None}, None),
    PinChanged("m1", True, "alice"),
    FactSet("deadline", False, "admin"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.kind)
def test_data_is_json_and_decodes_to_the_same_event(event: SessionEvent) -> None:
    data = json.loads(json.dumps(event.data()))
    assert data == event.data()
    assert decode(event.kind, data) == event


def test_every_kind_is_distinct_and_registered() -> None:
    assert {type(e) for e in EXAMPLES} == set(KINDS.values())
    assert all(KINDS[cls.kind] is cls for cls in KINDS.values())


def test_run_failed_carries_the_code_as_a_string() -> None:
    event = RunFailed.of(("p",), None, Ending(ReasonCode.SUPERSEDED, "superseded by a newer"))
    assert event.data() == {
        "prompt_ids": ["p"],
        "reply_id": None,
        "reason_code": "superseded",
        "reason": "superseded by a newer",
        "retry_at": None,
    }
    assert event.actor is None


def test_run_failed_tells_when_a_quota_starts_over_and_reads_back_without_it() -> None:
    ending = Ending(ReasonCode.QUOTA_EXCEEDED, "alice reached their quota", retry_at=86_400_000)
    event = RunFailed.of(("p",), "r", ending)
    assert event.data()["retry_at"] == 86_400_000
    assert decode("run_failed", event.data()) == event
    # Stored before it was told: read back with none.
    old = {k: v for k, v in event.data().items() if k != "retry_at"}
    assert decode("run_failed", old) == RunFailed(("p",), "r", ending.code, ending.reason)


def test_the_actor_is_the_author_or_whoever_made_the_change() -> None:
    assert PromptAccepted("p", 1, "alice").actor == "alice"
    assert MemberLeft("bob", "admin").actor == "admin"
    assert RunStarted("r", ("p",), ("alice",)).actor is None


def test_settings_events_show_only_settings_that_are_no_secret() -> None:
    with pytest.raises(ValueError, match="may not show"):
        SettingsChanged({"api_key": "sk-secret"}, "admin")
    with pytest.raises(ValueError, match="at least one"):
        SettingsChanged({}, "admin")


def test_events_carry_no_text_fields() -> None:
    # Content stays in the entries and their scoped read paths (see the module docstring).
    for cls in KINDS.values():
        names = set(cls.__dataclass_fields__)
        assert not names & {"text", "content", "value", "detail"}, cls


def test_membership_events_follow_the_change() -> None:
    editor = Membership("editor", ("pin",), ())
    assert membership_event("u", None, editor, "admin") == MemberJoined(
        "u", "editor", ("pin",), (), "admin"
    )
    assert membership_event("u", editor, None, "admin") == MemberLeft("u", "admin")
    viewer = Membership("viewer")
    assert membership_event("u", editor, viewer, "a") == MemberChanged("u", "viewer", (), (), "a")
    same = Membership("editor", ("pin",), ())
    assert membership_event("u", editor, same, "admin") is None
    assert membership_event("u", None, None, "admin") is None


def test_a_stored_event_reads_back_as_its_event() -> None:
    event = PromptAccepted("p1", 1, "alice")
    stored = StoredEvent("s", 1, 1000, event.kind, event.actor, event.data())
    assert stored.event() == event
    assert stored.to_json()["data"] == {"prompt_id": "p1", "seq": 1, "author": "alice"}


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(KeyError):
        decode("nothing_like_it", {})
