"""``server.http.accept``: which of a route's media types an ``Accept`` header takes."""

from __future__ import annotations

import pytest

from parley.server.http.accept import chosen

OFFERED = ("application/json", "text/event-stream")


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/event-stream", "text/event-stream"),
        ("TEXT/EVENT-STREAM", "text/event-stream"),
        ("text/event-stream ; charset=utf-8", "text/event-stream"),
        ("application/json, text/event-stream", "application/json"),
        ("text/event-stream;q=0, application/json", "application/json"),
        ("application/json;q=0.9, text/event-stream;q=0.1", "application/json"),
        ("application/json;Q=0.1, text/event-stream", "text/event-stream"),
        ("text/*", "text/event-stream"),
        ("*/*;q=0.5, text/event-stream;q=0.6", "text/event-stream"),
        ("*/*, application/json;q=0", "text/event-stream"),  # the named range wins
        ("text/event-stream-x", None),
        ("text/event-stream;q=0", None),
        ("*/*;q=0", None),
        ("text/html, image/*", None),
        ("application/json;q=2", None),  # not a q: the range is left out
        ("application/json;q=abc, text/event-stream", "text/event-stream"),
        ("nonsense, ,/,a/", None),
        # Review I7: a tie goes to the JSON pages, whichever range gives each its q.
        ("text/event-stream;q=0.8,*/*;q=0.8", "application/json"),
        ("text/*, */*", "application/json"),
        ("text/event-stream, application/*", "application/json"),
        # A quoted parameter's comma or semicolon is not a range's or a parameter's end.
        ('text/event-stream;foo="a,b";q=0.1, application/json;q=0.5', "application/json"),
        ('text/event-stream;foo="a;q=1";q=0.1, application/json;q=0.5', "application/json"),
        ('application/json;foo="x\\",y";q=0.2, text/event-stream;q=0.3', "text/event-stream"),
    ],
)
def test_the_type_an_accept_header_takes(accept: str | None, media: str | None) -> None:
    assert chosen(accept, OFFERED) == media


def test_a_long_header_is_read_up_to_its_ranges_limit() -> None:
    many = ", ".join(["text/html"] * 1000 + ["application/json"])
    assert chosen(many, OFFERED) is None
    assert chosen("application/json, " + many, OFFERED) == "application/json"
