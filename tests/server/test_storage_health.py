"""The pieces of storage-fault handling that need no database: the refusal log's rate
limit, the retry hints, and start-up's wait for the database."""

from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from parley.server.cli import FIRST_RETRY_S, MAX_RETRY_S, wait_for_database
from parley.server.http.rest import error_response
from parley.server.http.retry_hint import MAX_CLOSE_REASON_BYTES, close_reason, retry_reason
from parley.server.store.health import LockTimeout, StorageHealth, fault_kind
from parley.session.errors import RateLimited, Unavailable


def _sqlite_error(code: int, name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("boom")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


def test_fault_kinds_name_the_cause() -> None:
    assert fault_kind(LockTimeout("held")) == "locked"
    readonly = OperationalError("UPDATE", {}, _sqlite_error(8, "SQLITE_READONLY"))
    assert fault_kind(readonly) == "readonly"
    assert fault_kind(_sqlite_error(13, "SQLITE_FULL")) == "full"
    assert fault_kind(ConnectionRefusedError()) == "unreachable"


def test_refusals_are_logged_once_per_kind_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    counted: list[str] = []
    health = StorageHealth(log_every_s=10, clock=lambda: now[0], on_refused=counted.append)
    caplog.set_level(logging.WARNING, logger="parley.storage")
    logged = [health.refuse(LockTimeout("held"), "write") for _ in range(5)]
    assert logged == [True, False, False, False, False]
    assert health.refuse(ConnectionRefusedError(), "write")  # another kind: its own line
    assert health.failing == "unreachable" and health.refused == 6
    now[0] += 10
    assert health.refuse(LockTimeout("held"), "write")
    lines = [r for r in caplog.records if r.getMessage() == "database write refused"]
    assert [(r.kind, r.suppressed) for r in lines] == [  # type: ignore[attr-defined]
        ("locked", 0),
        ("unreachable", 0),
        ("locked", 4),
    ]
    assert counted == ["locked"] * 5 + ["unreachable", "locked"]  # the metric misses none
    health.wrote()
    assert health.failing is None


def test_a_retry_reason_is_json_that_fits_a_close_frame() -> None:
    reason = retry_reason("the database is unavailable " * 20, 2.5)
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    parsed = json.loads(reason)
    assert parsed["code"] == "unavailable" and parsed["retry_after_ms"] == 2500
    assert parsed["message"].startswith("the database is unavailable")


@given(st.text())
def test_a_close_reason_fits_a_close_frame_cut_on_a_character(text: str) -> None:
    """Review RV41-F2: a reason cut to 120 characters of non-ASCII text (an id echoed) ran
    past the frame's 123 bytes, no close frame was sent, and a stock client saw 1006."""
    reason = close_reason(text)
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    assert text.startswith(reason)
    assert reason == text or len(reason.encode()) > MAX_CLOSE_REASON_BYTES - 4


def test_a_refused_upgrade_says_when_to_come_back() -> None:
    response = error_response(Unavailable("the database is unavailable"), 2.2)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert json.loads(response.body)["error"]["code"] == "unavailable"
    assert json.loads(response.body)["error"]["retry_after_ms"] == 2200


def test_a_rate_refusal_says_when_in_its_header_and_its_body_from_one_wait() -> None:
    """FX59: a REST 429 had ``Retry-After`` alone; its body says when as a socket's refusal
    does (``retry_after_ms``), each rounded up from the same wait, and a wait that never
    ends (a cost past the budget's burst) is said in neither."""
    response = error_response(RateLimited("too many commands; slow down", 1.0004))
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert json.loads(response.body)["error"]["retry_after_ms"] == 1001
    never = error_response(RateLimited("over the budget", math.inf))
    assert "Retry-After" not in never.headers
    assert "retry_after_ms" not in json.loads(never.body)["error"]


def test_start_up_retries_an_unreachable_database_with_back_off() -> None:
    tries: list[int] = []
    slept: list[float] = []

    def attempt() -> None:
        tries.append(1)
        if len(tries) < 7:
            raise ConnectionRefusedError("not yet")

    wait_for_database(attempt, timeout_s=3600, sleep=slept.append)
    assert len(tries) == 7
    assert slept[0] == FIRST_RETRY_S
    assert all(b == min(a * 2, MAX_RETRY_S) for a, b in itertools.pairwise(slept))
    assert max(slept) == MAX_RETRY_S


def test_start_up_gives_up_after_its_time_and_never_retries_other_errors() -> None:
    def unreachable() -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        wait_for_database(unreachable, timeout_s=0, sleep=lambda _: None)

    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bad URL is no outage")

    with pytest.raises(ValueError):
        wait_for_database(broken, timeout_s=3600, sleep=lambda _: None)
    assert calls == [1]
