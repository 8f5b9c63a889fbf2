"""Echo credit: the presence bytes a socket may send back free (``server.ws.admission``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from parley.server.ws.admission import (
    ECHO_CREDIT_MAX,
    ECHO_WEIGHT,
    _spend_echo_credit,
    credit_echo,
)


def socket_and_fanout() -> tuple[Any, Any]:
    connection = SimpleNamespace(echo_credit=0, echo_mark=0, echo_own_mark=0, user_id="alice")
    return connection, SimpleNamespace(sent_bytes=0, member_bytes={})


def test_a_greeting_past_the_credit_cap_may_be_echoed_whole() -> None:
    """Review (stock clients): a stock client echoes the greeting in one frame; a greeting
    worth more credit than ``ECHO_CREDIT_MAX`` was paid in part from its member's presence
    budget, and its echo refused. Its credit holds the whole echo, and no more."""
    connection, fanout = socket_and_fanout()
    greeting = ECHO_CREDIT_MAX  # echoed up to ECHO_WEIGHT times as long
    credit_echo(connection, greeting)
    for _ in range(3):  # asked for again (query-awareness): the credit does not pile up
        credit_echo(connection, greeting)
    assert connection.echo_credit == ECHO_WEIGHT * greeting
    fanout.sent_bytes = 1000  # the next flush: fresh credit, not past the cap
    echo = ECHO_WEIGHT * greeting
    assert _spend_echo_credit(connection, fanout, echo) == echo
    assert connection.echo_credit == 0


def test_fresh_credit_stays_within_the_cap() -> None:
    connection, fanout = socket_and_fanout()
    credit_echo(connection, 10)
    fanout.sent_bytes = 10 * ECHO_CREDIT_MAX  # a quiet socket, a busy room
    assert _spend_echo_credit(connection, fanout, 1) == 1
    assert connection.echo_credit == ECHO_CREDIT_MAX - 1
    credit_echo(connection, 10)
    assert connection.echo_credit == ECHO_CREDIT_MAX
