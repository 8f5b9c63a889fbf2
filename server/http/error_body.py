"""The body of every error answered over HTTP, whoever answers it (a route, the app's
handlers, the HTTP parser's own refusals): ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str, **more: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **more}}


def said(message: str) -> str:
    """A validator's own words in a pydantic error's ``msg``, without the "Value error, "
    pydantic puts before them (an HTTP body's problems, a setting's)."""
    return message.removeprefix("Value error, ")
