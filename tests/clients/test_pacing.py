"""The Python SDK's pacing of commands (``parley_client/pacing.py``), sans I/O: the time is
passed in, and each answer says how many of the commands waiting go out now."""

from __future__ import annotations

import pytest
from parley_client import Pacing
from parley_client.pacing import Pacer


def test_at_most_in_flight_are_written_to_a_socket_and_the_next_as_each_is_answered() -> None:
    pacer = Pacer(Pacing(in_flight=3, per_second=100.0, burst=100), now=0.0)
    assert pacer.take([None] * 10, socket=1, now=0.0) == (3, 0.0)
    written: list[int | None] = [1, 1, 1] + [None] * 7
    assert pacer.take(written, socket=1, now=0.0) == (0, 0.0)  # wait for a reply
    assert pacer.take(written[1:], socket=1, now=0.0) == (1, 0.0)  # one answered
    assert pacer.take([1, 1, 1], socket=1, now=0.0) == (0, 0.0)  # nothing left to write


def test_a_new_socket_gets_again_what_the_last_one_left_unanswered() -> None:
    pacer = Pacer(Pacing(in_flight=3, per_second=100.0, burst=100), now=0.0)
    assert pacer.take([1, 1, 1, None], socket=2, now=0.0) == (3, 0.0)


def test_past_the_burst_commands_go_out_at_the_rate() -> None:
    pacer = Pacer(Pacing(in_flight=8, per_second=2.0, burst=5), now=0.0)
    count, wait_s = pacer.take([None] * 20, socket=1, now=0.0)
    assert (count, wait_s) == (5, 0.5)  # one more once a whole token is back
    assert pacer.take([1] * 5 + [None] * 15, socket=1, now=0.25) == (0, 0.25)
    assert pacer.take([1] * 5 + [None] * 15, socket=1, now=0.5) == (1, 0.5)
    # Idle, it fills up to the burst and no further; the window still holds.
    assert pacer.take([None] * 20, socket=2, now=100.0) == (5, 0.5)


def test_a_pacing_that_would_never_send_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacing(in_flight=0)
    with pytest.raises(ValueError):
        Pacing(burst=0)
    with pytest.raises(ValueError):
        Pacing(per_second=0.0)


def test_a_refusal_over_the_members_budget_pauses_and_halves_the_rate() -> None:
    """Review RH-2: the member's budget spans their sockets; refused ``rate_limited`` with
    when to come back, the pacer writes nothing until then, then at half its rate, and each
    ack brings a step of the rate back."""
    pacer = Pacer(Pacing(in_flight=8, per_second=8.0, burst=20), now=0.0)
    assert pacer.take([None] * 30, socket=1, now=0.0) == (8, 0.0)
    pacer.pause(until=0.5)
    assert pacer.per_second == 4.0
    count, wait_s = pacer.take([None] * 22, socket=1, now=0.1)
    assert count == 0 and wait_s == pytest.approx(0.4 + 1 / 4.0)
    assert pacer.take([None] * 22, socket=1, now=0.75) == (1, pytest.approx(0.25))
    for _ in range(100):
        pacer.answered()
    assert pacer.per_second == 8.0
    for _ in range(10):
        pacer.pause(until=0.0)
    assert pacer.per_second == 0.5  # never stops
