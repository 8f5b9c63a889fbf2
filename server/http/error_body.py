"""The body of every error answered over HTTP, whoever answers it (a route, the app's
handlers, the HTTP parser's own refusals): ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls, DEL, and lone surrogates: what an answer must not copy of a request.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def error_body(code: str, message: str, **more: Any) -> dict[str, Any]:
    """The error's body; each text in it (the message, each detail's texts) printable."""
    return {"error": {"code": code, "message": printable(message), **_printable(more)}}


def printable(text: str) -> str:
    """``text`` with each control character (and lone surrogate) written as JSON escapes
    it, ``\\u0000``: an error's text may quote a request (a body's key, a query
    parameter's name), and the document says no error text holds a NUL (review RY-2: a
    key's NUL was copied into ``message`` and ``details[].at``)."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


def said(message: str) -> str:
    """A validator's own words in a pydantic error's ``msg``, without the "Value error, "
    pydantic puts before them (an HTTP body's problems, a setting's)."""
    return message.removeprefix("Value error, ")
