"""The batching rule of a streamed reply: backpressure first, the interval as a ceiling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.session.pacing import ReplyPacer

INTERVAL = 0.015


def batch(pacer: ReplyPacer, now: float, *, waiting: bool, full: bool = False) -> float:
    """One batch through the rule: its hold, then taken after it."""
    hold = pacer.hold(now, waiting=waiting, full=full, ended=False)
    pacer.sent(now + hold)
    return hold


def test_text_that_finds_the_writer_idle_goes_at_once() -> None:
    pacer = ReplyPacer(INTERVAL)
    # A token every 5 ms, each stored and sent before the next: never held for the
    # interval, though each comes sooner than it after the one before.
    for n in range(50):
        assert batch(pacer, n * 0.005, waiting=False) == 0.0


def test_text_merged_behind_one_batch_in_flight_goes_right_after_it() -> None:
    pacer = ReplyPacer(INTERVAL)
    assert batch(pacer, 0.0, waiting=False) == 0.0
    # Text came while that batch was stored: it goes as soon as the writer is back.
    assert batch(pacer, 0.001, waiting=True) == 0.0
    # The writer was idle again when the next text came.
    assert batch(pacer, 0.020, waiting=False) == 0.0


def test_a_writer_busy_batch_after_batch_is_paced_by_the_interval() -> None:
    pacer = ReplyPacer(INTERVAL)
    assert batch(pacer, 0.0, waiting=False) == 0.0
    assert batch(pacer, 0.002, waiting=True) == 0.0
    # The second batch in a row that found text waiting: saturated, held until an
    # interval after the one before.
    assert batch(pacer, 0.004, waiting=True) == pytest.approx(INTERVAL - 0.002)
    assert pacer.last_sent == pytest.approx(0.002 + INTERVAL)
    # Still saturated: on the same grid.
    assert batch(pacer, 0.019, waiting=True) == pytest.approx(0.002 + 2 * INTERVAL - 0.019)


def test_a_late_wake_up_does_not_push_later_batches_back() -> None:
    pacer = ReplyPacer(INTERVAL)
    batch(pacer, 0.0, waiting=False)
    batch(pacer, 0.001, waiting=True)
    hold = pacer.hold(0.002, waiting=True, full=False, ended=False)
    assert hold == pytest.approx(0.001 + INTERVAL - 0.002)
    pacer.sent(0.002 + hold + 0.007)  # the wait ran 7 ms over
    assert pacer.last_sent == pytest.approx(0.001 + INTERVAL)


def test_a_batch_overdue_goes_now_and_the_next_waits_a_whole_interval() -> None:
    """A batch whose store and broadcast outlasted the interval: the next is taken at
    once, and the grid starts again from it (counting from the slot it missed would send
    every batch after a slow one at once, each a few tokens)."""
    pacer = ReplyPacer(INTERVAL)
    batch(pacer, 0.0, waiting=False)
    batch(pacer, 0.001, waiting=True)
    assert batch(pacer, 0.040, waiting=True) == 0.0  # the broadcast took 39 ms
    assert pacer.last_sent == 0.040
    assert batch(pacer, 0.042, waiting=True) == pytest.approx(0.040 + INTERVAL - 0.042)


def test_a_full_batch_and_the_end_go_at_once_even_when_saturated() -> None:
    pacer = ReplyPacer(INTERVAL)
    for n in range(5):
        batch(pacer, n * 0.001, waiting=n > 0, full=True)
    assert pacer.hold(0.006, waiting=True, full=True, ended=False) == 0.0
    assert pacer.hold(0.006, waiting=True, full=False, ended=True) == 0.0
    assert pacer.hold(0.006, waiting=True, full=False, ended=False) > 0.0


def test_an_idle_writer_ends_saturation() -> None:
    pacer = ReplyPacer(INTERVAL)
    for n in range(5):
        batch(pacer, n * 0.001, waiting=n > 0)
    assert pacer.backlog == 4
    assert batch(pacer, 1.0, waiting=False) == 0.0
    assert pacer.backlog == 0
    assert batch(pacer, 1.001, waiting=True) == 0.0


def test_no_interval_never_holds() -> None:
    pacer = ReplyPacer(0.0)
    for n in range(20):
        assert batch(pacer, n * 0.001, waiting=True) == 0.0


@given(
    st.lists(
        st.tuples(st.floats(0, 0.05), st.booleans(), st.booleans(), st.booleans()),
        max_size=60,
    )
)
def test_no_batch_is_held_past_the_interval(steps: list[tuple[float, bool, bool, bool]]) -> None:
    """Whatever the pattern: a hold never passes the interval after the batch before, and
    only a writer that found text waiting batch after batch holds at all."""
    pacer = ReplyPacer(INTERVAL)
    now = 0.0
    for gap, waiting, full, ended in steps:
        now += gap
        before = pacer.last_sent
        hold = pacer.hold(now, waiting=waiting, full=full, ended=ended)
        assert 0.0 <= hold <= INTERVAL + 1e-12
        if hold:
            assert before is not None and now + hold <= before + INTERVAL + 1e-12
            assert waiting and not full and not ended
            assert pacer.backlog >= pacer.saturated_after
        pacer.sent(now + hold)
        now += hold
