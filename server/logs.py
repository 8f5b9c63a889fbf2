"""Structured logs: one JSON object per line, with the ids that tie events together.

Prompt and reply text never goes into a log line; ids, codes and timings do. Every line of
``parley serve`` (Parley's own, uvicorn's, alembic's, asyncio's, SQLAlchemy's) goes through
the one handler ``configure_logging`` installs on the root logger, and every text of it
through ``Redactor`` first: client tokens travel in query strings (``?token=``) and
``Authorization`` headers, and libraries log both (uvicorn's WebSocket handshake line names
the full URL).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}
REDACTED = "[redacted]"
# A secret shorter than this is not looked for literally (it would blot out common words).
MIN_LITERAL_CHARS = 8

_PATTERNS = (
    # Query parameters, headers and JSON fields that name a secret: token=…, "api_key": "…"
    (
        re.compile(
            r"(?i)(\b\w*(?:token|secret|password|api_?key)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\"'&\s,;{}\[\]()\\]+"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;\\]+"), rf"\1 {REDACTED}"),
    # Anything JWT-shaped (client tokens): base64url of '{"' starts every segment's JSON.
    (re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*)*"), REDACTED),
)


class Redactor:
    """The one place log text is cleaned of secrets: token and key shapes, plus the
    literal secrets the server holds (admin key, signing key, model API keys)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.literals = sorted(
            {s for s in secrets if s and len(s) >= MIN_LITERAL_CHARS}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for literal in self.literals:
            text = text.replace(literal, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


@dataclass(slots=True)
class _Held:
    logged_at: float
    left_out: int = 0


class LogThrottle:
    """At most one log line per key every ``every_s``: a flood of one event (a database
    refusing every token of twenty replies, a client typing into a document it may not
    write) must not write a line for each. Keys are few (kinds of event), so none is
    forgotten."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._keys: dict[str, _Held] = {}

    def admit(self, key: str) -> int | None:
        """The number of lines of ``key`` left out since its last one when a line may go
        out now; None (and it is counted as left out) when not."""
        now = self.clock()
        held = self._keys.get(key)
        if held is not None and now - held.logged_at < self.every_s:
            held.left_out += 1
            return None
        self._keys[key] = _Held(now)
        return 0 if held is None else held.left_out


class LogFormatter(logging.Formatter):
    """A record as one JSON object (or, for ``text``, one plain line), every text redacted."""

    def __init__(self, redact: Redactor, *, as_json: bool = True) -> None:
        super().__init__()
        self.redact = redact
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        event = {k: self.redact(v) if isinstance(v, str) else v for k, v in event.items()}
        if self.as_json:
            return json.dumps(event, separators=(",", ":"))
        extra = " ".join(f"{k}={v}" for k, v in list(event.items())[4:])
        return f"{event['level']} {event['logger']} {event['event']} {extra}".rstrip()


# Libraries whose lower levels dump what Parley keeps out of its logs: websockets (under
# uvicorn's loggers) logs every frame and handshake header at debug, SQLAlchemy every
# statement with its parameters (prompt text) at info.
LIBRARY_FLOORS = {"uvicorn": logging.INFO, "sqlalchemy": logging.WARNING}


def configure_logging(level: str, fmt: str, secrets: Iterable[str | None] = ()) -> None:
    """Send every logger's records, warnings included, to stderr through one formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(Redactor(secrets), as_json=fmt != "text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, floor in LIBRARY_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.captureWarnings(True)
    logging.Formatter.converter = time.gmtime
