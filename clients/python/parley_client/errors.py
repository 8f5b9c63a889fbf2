"""The errors a Parley server reports, one class per error code (the error table in docs/api.md).

    ParleyError                 code of the reply, or of the close
    ├── InvalidInput            invalid
    │   ├── TooLarge            too_large
    │   ├── UnknownCommand      unknown_command
    │   ├── UnsupportedMediaType unsupported_media_type
    │   ├── NotAcceptable       not_acceptable (an event stream's Accept header)
    │   ├── MethodNotAllowed    method_not_allowed
    │   ├── BadEventId          bad_event_id (an event stream's Last-Event-ID)
    │   ├── BadRequest          bad_request (a request the server could not parse)
    │   └── ReservedName        reserved_name (a name that reads as the assistant or server)
    ├── Unauthenticated         unauthenticated
    ├── Forbidden               forbidden
    │   └── RestrictedShare     restricted_share (sharing back from a side-thread)
    ├── NotFound                not_found
    ├── Conflict                conflict
    │   ├── Busy                busy
    │   ├── QueueFull           queue_full
    │   ├── ThreadClosed        thread_closed
    │   ├── ThreadLimit         thread_limit
    │   ├── ThreadRunsBusy      thread_runs_busy
    │   └── SessionFull         session_full (the session reached its size limit)
    ├── RateLimited             rate_limited
    │   ├── QuotaExceeded       quota_exceeded
    │   └── TooManyStreams      too_many_streams
    ├── Unavailable             unavailable
    ├── ProviderError           provider_error
    ├── InternalError           internal
    ├── CommandTimeout          timeout (no reply within the time given: ``command`` to
    │                           resend by its id; also a ``TimeoutError``)
    ├── UnexpectedAnswer        unexpected_answer (a success whose body the SDK cannot read:
    │                           not JSON, or not of the shape the call answers)
    └── SessionClosed           closed (the session object was closed, or the server ended
                                the socket for good: ``close_code``, ``cause``)

Command replies, REST error bodies and final WebSocket close codes all become these, so
``except Forbidden`` catches a refusal however it arrived.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any

# The longest a command or REST call refused ``rate_limited`` waits to be sent again (past
# it, it raises), and how many times it is sent again: on a socket and over REST alike.
MAX_RETRY_AFTER_S = 60.0
MAX_RATE_RETRIES = 3


class ParleyError(Exception):
    """Root of every error the SDK raises on the server's behalf. ``code`` is the stable
    error code; ``status`` the HTTP status of a REST refusal or of a refused socket upgrade
    (None on an open socket); ``command_id`` the id of the command it answers (None: none,
    or not known), to resend by or to look up; ``retry_after`` the seconds the server asked
    to wait before trying again (its ``Retry-After``; None: it did not say)."""

    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        command_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.command_id = command_id
        self.retry_after = retry_after


class InvalidInput(ParleyError):
    code = "invalid"


class TooLarge(InvalidInput):
    code = "too_large"


class UnknownCommand(InvalidInput):
    code = "unknown_command"


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"


class NotAcceptable(InvalidInput):
    code = "not_acceptable"


class MethodNotAllowed(InvalidInput):
    code = "method_not_allowed"


class BadEventId(InvalidInput):
    code = "bad_event_id"


class BadRequest(InvalidInput):
    code = "bad_request"


class ReservedName(InvalidInput):
    code = "reserved_name"


class Unauthenticated(ParleyError):
    code = "unauthenticated"


class Forbidden(ParleyError):
    code = "forbidden"


class RestrictedShare(Forbidden):
    """What a side-thread would share draws on what not every member may read."""

    code = "restricted_share"


class NotFound(ParleyError):
    code = "not_found"


class Conflict(ParleyError):
    code = "conflict"


class Busy(Conflict):
    code = "busy"


class QueueFull(Conflict):
    code = "queue_full"


class ThreadClosed(Conflict):
    """A prompt in a closed side-thread."""

    code = "thread_closed"


class ThreadLimit(Conflict):
    """A member's side-threads, or a side-thread's turns, reached their limit."""

    code = "thread_limit"


class ThreadRunsBusy(Conflict):
    """The session's side-thread runs at once reached their limit: try again later."""

    code = "thread_runs_busy"


class SessionFull(Conflict):
    """The session's shared document reached its size limit: nothing more is posted to it
    (waiting does not help; a new session does)."""

    code = "session_full"


class RateLimited(ParleyError):
    code = "rate_limited"


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class TooManyStreams(RateLimited):
    code = "too_many_streams"


class Unavailable(ParleyError):
    code = "unavailable"


class ProviderError(ParleyError):
    code = "provider_error"


class InternalError(ParleyError):
    code = "internal"


class CommandTimeout(ParleyError, TimeoutError):
    """No reply came within the time given (``timeout_s``). The SDK does not send the
    command again, but it may have been stored: ``command`` is the command as sent (``type``,
    ``id`` and its fields), and ``Session.resend(error.command)`` sends it again by its id,
    which the server answers with its first ack (nothing is stored twice)."""

    code = "timeout"

    def __init__(self, message: str, *, command: Mapping[str, Any]) -> None:
        super().__init__(message, command_id=str(command["id"]))
        self.command: Mapping[str, Any] = MappingProxyType(dict(command))


class UnexpectedAnswer(ParleyError):
    """A REST call answered success with a body the SDK cannot read (not JSON, or JSON of
    another shape): a proxy or another service in front of the server, say. ``status`` is
    the answer's; nothing says whether a write was applied."""

    code = "unexpected_answer"


class SessionClosed(ParleyError):
    """The session object is closed: by ``close()``, or by a close code after which the
    server will not take the socket back (``cause``: the error that code stands for)."""

    code = "closed"

    def __init__(
        self, message: str, *, close_code: int | None = None, cause: ParleyError | None = None
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.cause = cause


def _by_code() -> dict[str, type[ParleyError]]:
    found: dict[str, type[ParleyError]] = {}
    pending: list[type[ParleyError]] = [ParleyError]
    while pending:
        kind = pending.pop()
        found.setdefault(kind.code, kind)
        pending += kind.__subclasses__()
    found["internal"] = InternalError
    del found["closed"], found["timeout"], found["unexpected_answer"]  # the SDK's own
    return found


ERRORS: dict[str, type[ParleyError]] = _by_code()


def error_for(
    code: str,
    message: str,
    *,
    status: int | None = None,
    command_id: str | None = None,
    retry_after: float | None = None,
) -> ParleyError:
    """The typed error for ``code`` (a code this SDK does not know: a plain ParleyError
    whose ``code`` attribute still says it)."""
    kind = ERRORS.get(code)
    options: dict[str, Any] = {"status": status, "command_id": command_id}
    error = (kind or ParleyError)(message, retry_after=retry_after, **options)
    if kind is None:
        error.code = code
    return error


# The code of an HTTP refusal whose body does not name one (a proxy's, say). A gateway's
# 502 or 504 is not ``provider_error`` (the model's API failed: the server says so in its
# body) but the server out of reach, as a 503 is.
STATUS_CODES: Mapping[int, str] = MappingProxyType(
    {
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "invalid",
        429: "rate_limited",
        502: "unavailable",
        503: "unavailable",
        504: "unavailable",
    }
)


def retry_after_seconds(header: str | None, *, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (never below 0): a number of
    seconds or an HTTP-date (RFC 9110); None when absent or neither."""
    if header is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(header), 0.0)
    try:
        when = parsedate_to_datetime(header.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is in GMT all the same
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def wait_of(reply: Mapping[str, Any]) -> float | None:
    """A refusal's ``retry_after_ms`` (a command's error reply, a REST error body) in
    seconds, or None when it has none."""
    wait = reply.get("retry_after_ms")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < math.inf:
        return None
    return float(wait) / 1000


def close_wait(reason: str) -> float | None:
    """The wait a close's reason asks for before the next socket (a 1013's or a 4429's JSON
    ``{"code", "retry_after_ms", "message"}``), in seconds; None when it says none."""
    try:
        told = json.loads(reason)
    except ValueError:
        return None
    return wait_of(told) if isinstance(told, dict) else None


def rate_wait(error: ParleyError, refusals: int) -> float | None:
    """How long to wait before sending again a command or call refused with ``error``, after
    ``refusals`` such refusals of it before: a ``rate_limited`` refusal (the member's
    budget; not a quota nor a cap on streams) says when, within ``MAX_RETRY_AFTER_S``, up
    to ``MAX_RATE_RETRIES`` times. None: not to send it again (raise ``error``)."""
    wait = error.retry_after
    if error.code != "rate_limited" or wait is None or refusals >= MAX_RATE_RETRIES:
        return None
    return wait if wait <= MAX_RETRY_AFTER_S else None


def error_of_response(
    status: int, body: bytes | bytearray | str, *, retry_after: str | None = None
) -> ParleyError:
    """The typed error of an HTTP refusal, a REST call's or a socket upgrade's: the code and
    message of its JSON error body (``{"error": {"code", "message"}}``), else its status's
    code and the body as text (a 5xx without one: ``unavailable`` for 502, 503 and 504,
    ``internal`` otherwise); ``retry_after`` its ``Retry-After`` header (seconds or a date),
    unless the body's ``retry_after_ms`` says it to the millisecond."""
    text = body.decode(errors="replace") if not isinstance(body, str) else body
    code, message = STATUS_CODES.get(status, "internal"), text or f"HTTP {status}"
    wait = retry_after_seconds(retry_after)
    try:
        error = json.loads(text)["error"]
        code, message = str(error["code"]), str(error["message"])
        wait = wait_of(error) if wait_of(error) is not None else wait
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return error_for(code, message, status=status, retry_after=wait)


# The WebSocket close codes after which the server will not take the socket back
# (docs/websocket.md: "Close codes"); stock clients stop reconnecting after them too.
# A 4429 whose reason says when to come back (``close_wait``) is not final to the SDK.
FINAL_CLOSES: dict[int, type[ParleyError]] = {
    4400: InvalidInput,
    4401: Unauthenticated,
    4403: Forbidden,
    4404: NotFound,
    4429: RateLimited,
}
