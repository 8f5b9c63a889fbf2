"""The acknowledgements a session keeps to answer resent commands (``RecentAcks``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from parley.session.commands import (
    CancelCommand,
    Command,
    FactCommand,
    MessageCommand,
    PinCommand,
    PolicyCommand,
    PromptCommand,
)
from parley.session.errors import DuplicateCommand
from parley.session.queue import Policy
from parley.session.recent_acks import RecentAcks, asked, stored_fingerprint, stored_fingerprints
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadShareCommand,
)


def test_a_resend_gets_its_ack_another_author_or_command_does_not() -> None:
    acks = RecentAcks()
    acks.keep("ann", MessageCommand("m1", "hi"), "ack-1")
    assert acks.knows("ann", "m1") and not acks.knows("bob", "m1") and not acks.knows("ann", None)
    assert acks.answer("ann", MessageCommand("m1", "hi")) == "ack-1"
    assert acks.answer("bob", MessageCommand("m1", "hi")) is None
    with pytest.raises(DuplicateCommand):
        acks.answer("ann", MessageCommand("m1", "hello"))
    with pytest.raises(DuplicateCommand):
        acks.answer("ann", CancelCommand("m1", "p1"))


def test_only_the_last_are_kept() -> None:
    acks = RecentAcks(max_kept=3)
    for n in range(5):
        acks.keep("ann", MessageCommand(f"m{n}", "x"), f"ack-{n}")
    assert [acks.knows("ann", f"m{n}") for n in range(5)] == [False, False, True, True, True]


def test_one_author_cannot_push_out_the_others() -> None:
    acks = RecentAcks(max_kept=10, max_per_author=3)
    acks.keep("bob", MessageCommand("b", "x"), "ack-b")
    for n in range(20):
        acks.keep("mallory", MessageCommand(f"m{n}", "x"), f"ack-{n}")
    assert acks.knows("bob", "b")
    assert [acks.knows("mallory", f"m{n}") for n in (16, 17, 18, 19)] == [False, True, True, True]


def _pin_with(*extra: tuple[str, type, Any]) -> type:
    """``PinCommand`` as a later release might define it, with more optional fields."""
    return dataclasses.make_dataclass(
        "PinCommand",
        [("id", str), ("entry_id", str), ("pinned", bool), *extra],
        frozen=True,
        slots=True,
    )


def test_a_new_optional_field_leaves_what_a_command_asks_as_it_was() -> None:
    """An upgrade that gives a command a new optional field still knows the commands kept
    before it: their resends get their ack, not a conflict (the ``repr`` changed)."""
    sent = PinCommand("c1", "e1", True)
    later = _pin_with(("note", str, dataclasses.field(default="")))
    assert stored_fingerprint(later("c1", "e1", True)) == stored_fingerprint(sent)
    assert stored_fingerprint(later("c1", "e1", True, note="x")) != stored_fingerprint(sent)
    assert stored_fingerprint(PinCommand("c2", "e1", True)) == stored_fingerprint(sent)
    assert stored_fingerprint(PinCommand("c1", "e1", False)) != stored_fingerprint(sent)


def test_acks_kept_by_an_earlier_release_are_still_known() -> None:
    sent = PinCommand("c1", "e1", True)
    earlier = hashlib.sha256(repr(dataclasses.replace(sent, id="")).encode()).hexdigest()
    assert earlier in stored_fingerprints(sent)
    assert earlier not in stored_fingerprints(PinCommand("c1", "e2", True))


COMMANDS: list[Command] = [
    PromptCommand("a", "hi ✓"),
    MessageCommand("a", "hi"),
    CancelCommand("a", "p"),
    PolicyCommand("a", Policy.COALESCE),
    PinCommand("a", "e", False),
    FactCommand("a", "k", None),
    ThreadOpenCommand("a", None, "t"),
    ThreadPromptCommand("a", "t", "x", summarise=True),
    ThreadShareCommand("a", "t", None, ("u1", "u2")),
    ThreadCloseCommand("a", "t", True),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_has_what_it_asks_as_text(command: Command) -> None:
    kind, fields = json.loads(asked(command))
    assert kind == type(command).__name__ and "id" not in fields
    assert stored_fingerprint(command) != stored_fingerprint(COMMANDS[0]) or command is COMMANDS[0]
