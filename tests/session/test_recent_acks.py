"""The acknowledgements a session keeps to answer resent commands (``RecentAcks``)."""

from __future__ import annotations

import pytest

from parley.session.commands import CancelCommand, MessageCommand
from parley.session.errors import DuplicateCommand
from parley.session.recent_acks import RecentAcks


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
