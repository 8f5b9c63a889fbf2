"""``FairTurns``: a shared budget goes round the users waiting for it, a turn each."""

from __future__ import annotations

from parley.session.fair_turns import FairTurns


def rounds(turns: FairTurns, taken: int) -> list[str]:
    """Who takes the next ``taken`` turns, each waiter waiting again after its turn (a
    replaying stream, event after event)."""
    order = []
    for _ in range(taken):
        user_id = turns.waiting()[0]
        assert turns.is_turn(user_id)
        assert not any(turns.is_turn(u) for u in turns.waiting()[1:])
        turns.leave(user_id, took_turn=True)
        turns.wait(user_id)
        order.append(user_id)
    return order


def test_nobody_waiting_anyone_may_go() -> None:
    turns = FairTurns()
    assert turns.first() is None and turns.is_turn("vera") and turns.is_turn("alice")


def test_many_waiters_of_one_user_take_one_turn_a_round() -> None:
    turns = FairTurns()
    for _ in range(16):
        turns.wait("vera")
    assert turns.is_turn("vera") and not turns.is_turn("alice")  # one who does not wait
    turns.wait("alice")
    assert turns.waiting() == ["vera", "alice"]
    assert rounds(turns, 6) == ["vera", "alice"] * 3


def test_a_newcomer_goes_after_those_already_waiting_then_in_turn() -> None:
    turns = FairTurns()
    turns.wait("vera")
    turns.wait("bob")
    turns.wait("alice")
    assert rounds(turns, 4) == ["vera", "bob", "alice", "vera"]


def test_a_waiter_that_leaves_without_its_turn_keeps_its_users_place() -> None:
    turns = FairTurns()
    turns.wait("vera")
    turns.wait("vera")
    turns.wait("alice")
    turns.leave("vera", took_turn=False)  # one of vera's streams ended while it waited
    assert turns.waiting() == ["vera", "alice"]
    turns.leave("vera", took_turn=False)
    assert turns.waiting() == ["alice"] and turns.is_turn("alice")
    turns.leave("alice", took_turn=True)
    assert turns.waiting() == [] and turns.is_turn("vera")
