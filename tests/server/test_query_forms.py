"""Query parameters as the API document says them and as the server takes them: the same
values, and a refusal that says what is wrong (review RP-1's leftovers: ``?day=0000-00-00``
matched the documented pattern and was refused 422; ``?limit=-1`` was "not a whole
number"; ``last_event_id`` was documented as any text)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import jsonschema

from parley.server.http.usage import DAY
from tests.conftest import RunningServer

YEARS = ("0000", "0001", "0004", "1900", "2000", "2024", "2025", "2100", "2400", "9999")
DAYS = (
    "2026-12-07",
    "2024-02-29",
    "2000-02-29",
    "0004-02-29",
    "0001-01-01",
    "9999-12-31",
    "0000-00-00",
    "0000-01-01",
    "2026-00-10",
    "2026-02-29",
    "1900-02-29",
    "2026-04-31",
    "2026-13-01",
    "2026-12-32",
    "2026-1-01",
    "20261207",
    "2026-W49-1",
    "\u0662\u0660\u0662\u0666-01-01",  # Arabic-Indic digits
)


def _a_date(text: str) -> bool:
    """Whether ``text`` is a day written YYYY-MM-DD (``date.fromisoformat`` takes others)."""
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_the_day_pattern_takes_exactly_the_days_of_the_calendar() -> None:
    for year in YEARS:
        for month in range(14):
            for day in range(33):
                text = f"{year}-{month:02}-{day:02}"
                assert (re.fullmatch(DAY, text) is not None) == _a_date(text), text
    for text in DAYS:
        assert (re.fullmatch(DAY, text) is not None) == _a_date(text), text


async def _document(server: RunningServer) -> dict[str, Any]:
    answer = await server.http.get("/api/v1/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def _parameter(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name
    )
    return found


def _admits(schema: dict[str, Any], value: object) -> bool:
    validator = jsonschema.Draft202012Validator
    return validator(schema, format_checker=validator.FORMAT_CHECKER).is_valid(value)


async def test_a_day_is_refused_exactly_when_the_document_refuses_it(
    sqlite_server: RunningServer,
) -> None:
    server = sqlite_server
    path = "/api/v1/sessions/{session_id}/usage"
    schema = _parameter(await _document(server), path, "day")["schema"]
    assert schema["format"] == "date"
    sid = await server.new_session({})
    for day in DAYS:
        answer = await server.http.get(f"/api/v1/sessions/{sid}/usage", params={"day": day})
        if _admits(schema, day):
            assert answer.status_code == 200 and answer.json()["day"] == day, (day, answer.text)
        else:
            assert answer.status_code == 422, (day, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid"
            assert error["message"] == "day: must be a date, YYYY-MM-DD", day


async def test_a_number_out_of_its_range_is_told_which_bound_it_passed(
    sqlite_server: RunningServer,
) -> None:
    """On every route that takes one, as the document bounds it: ``limit=-1`` is a whole
    number, below the least."""
    server = sqlite_server
    document = await _document(server)
    sid = await server.new_session({})
    checked = 0
    for path, item in document["paths"].items():
        if "get" not in item or "{" in path.replace("{session_id}", ""):
            continue
        for parameter in item["get"].get("parameters", []):
            schema = parameter["schema"]
            if parameter["in"] != "query" or schema.get("type") != "integer":
                continue
            url, name = path.replace("{session_id}", sid), parameter["name"]
            low, high = schema["minimum"], schema["maximum"]
            for value, said in (
                (low - 1, f"at least {low}"),
                (-1, f"at least {low}"),
                (high + 1, f"at most {high}"),
                (10**30, f"at most {high}"),
                (-(10**30), f"at least {low}"),
            ):
                answer = await server.http.get(url, params={name: str(value)})
                assert answer.status_code == 422, (url, name, value, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "invalid"
                assert error["message"] == f"{name}: must be {said}", (url, value)
            for text in ("1.5", "ten", "+1", ""):
                answer = await server.http.get(url, params={name: text})
                assert answer.status_code == 422, (url, name, text)
                message = answer.json()["error"]["message"]
                assert message == f"{name}: must be a whole number", (url, text)
            checked += 1
    assert checked >= 5  # sessions, events and audit, at least


async def test_an_event_id_is_refused_exactly_when_the_document_refuses_it(
    sqlite_server: RunningServer,
) -> None:
    server = sqlite_server
    path = "/api/v1/sessions/{session_id}/events"
    document = await _document(server)
    sid = await server.new_session({})
    query = _parameter(document, path, "last_event_id")["schema"]
    header = _parameter(document, path, "Last-Event-ID")["schema"]
    assert query == header and query["maxLength"] == 100
    givens = ("0", " 0\t", "00", "0.r1.0", "0.r1.01", "x", "", "0." + "r" * 64 + ".0")
    for given in (*givens, "0." + "r" * 65 + ".0", "0" + "\t" * 100):
        for headers, params in (({"Last-Event-ID": given}, {}), ({}, {"last_event_id": given})):
            if headers and (not given or given != given.strip()):
                continue  # an empty header is no header; HTTP drops a header's own blanks
            admitted = _admits(query, given)
            async with server.http.stream(
                "GET",
                f"/api/v1/sessions/{sid}/events",
                headers={"Accept": "text/event-stream", **headers},
                params=params,
            ) as answer:
                if answer.status_code == 200:  # a stream, which is not read to its end
                    assert admitted, given
                    continue
                await answer.aread()
                assert answer.status_code == 400, (given, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "bad_event_id"
                # Of the form, an id is then judged against the session's stream (none of
                # these was sent by it); not of the form, it is refused for it.
                refused_for_form = error["message"] == "Last-Event-ID: too long" or (
                    "not an id of this stream" in error["message"]
                )
                assert refused_for_form != admitted, (given, error)
