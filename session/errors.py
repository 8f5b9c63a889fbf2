"""One exception tree for the whole project. Each class states its error code (REST bodies
and command replies), its HTTP status, and the WebSocket close code (``session.closes``)
a socket is closed with when this error ends it (-: it never ends one).

    ParleyError                             code             HTTP  close
    ├── InvalidInput                        invalid          422   -
    │   ├── TooLarge                        too_large        413   1009
    │   ├── UnknownCommand                  unknown_command  422   -
    │   ├── UnsupportedMediaType            unsupported_media_type 415 -
    │   ├── NotAcceptable                   not_acceptable   406   -
    │   ├── MethodNotAllowed                method_not_allowed 405 -
    │   ├── BadEventId                      bad_event_id     400   -
    │   ├── BadRequest                      bad_request      400   -
    │   ├── ReservedName                    reserved_name    422   -
    │   ├── ProtocolError (yprotocol)       invalid          422   4400
    │   ├── ClockOutOfRange (yprotocol)     invalid          422   -
    │   ├── StateNotAnObject (yprotocol)    invalid          422   -
    │   └── CommandError (commands)         the code and status of the error it wraps
    ├── Unauthenticated                     unauthenticated  401   4401
    ├── Forbidden                           forbidden        403   4403
    │   └── RestrictedShare                 restricted_share 403   -
    ├── NotFound                            not_found        404   4404
    ├── Conflict                            conflict         409   -
    │   ├── Busy                            busy             409   -
    │   ├── QueueFull                       queue_full       429   -
    │   ├── DuplicateCommand                conflict         409   -
    │   ├── ThreadClosed                    thread_closed    409   -
    │   ├── ThreadLimit                     thread_limit     429   -
    │   ├── ThreadRunsBusy                  thread_runs_busy 429   -
    │   ├── SessionFull                     session_full     409   -
    │   └── IllegalTransition (lifecycle)   conflict         409   -
    ├── RateLimited                         rate_limited     429   4429
    │   ├── QuotaExceeded                   quota_exceeded   429   -
    │   └── TooManyStreams                  too_many_streams 429   -
    ├── Unavailable                         unavailable      503   1013
    │   ├── ShuttingDown                    unavailable      503   1013
    │   ├── NotHolder (server.cluster.lease) unavailable     503   1013
    │   │   └── Fenced                      unavailable      503   1013
    │   └── SequenceMoved (server.store.counters) unavailable 503   1013
    ├── ProviderError                       provider_error   502   - (a run fails with it)
    └── ConfigurationError                  internal         500   - (the server does not start)
        ├── MissingApiKey                   internal         500   -
        ├── SchemaNotCurrent                internal         500   -
        └── DatabaseInUse                   internal         500   -

On a WebSocket an error is answered with a JSON error reply and the socket stays open,
except: a malformed binary frame (4400); a refused token, membership or session at the
upgrade or later (4401, 4403, 4404); a RateLimited refusal repeated again and again
(4429, its reason saying when to come back: ``server.http.retry_hint``); a whole message
over the ASGI server's size limit (1009); a database that fails under a write (1013).
Only errors a retry cannot fix close with a 44xx code (stock Yjs clients stop
reconnecting).
"""

from __future__ import annotations

import math
from enum import StrEnum

from parley.session.closes import CloseCode


class ErrorCode(StrEnum):
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNKNOWN_COMMAND = "unknown_command"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_ACCEPTABLE = "not_acceptable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_EVENT_ID = "bad_event_id"
    BAD_REQUEST = "bad_request"
    RESERVED_NAME = "reserved_name"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    BUSY = "busy"
    THREAD_CLOSED = "thread_closed"
    THREAD_LIMIT = "thread_limit"
    THREAD_RUNS_BUSY = "thread_runs_busy"
    SESSION_FULL = "session_full"
    RESTRICTED_SHARE = "restricted_share"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"
    TOO_MANY_STREAMS = "too_many_streams"
    PROVIDER_ERROR = "provider_error"
    INTERNAL = "internal"


class ParleyError(Exception):
    """Root of every error Parley raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500
    close_code: CloseCode | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ParleyError):
    code = ErrorCode.INVALID
    http_status = 422

    def __init__(self, message: str, details: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        # Each problem found, as (where, what): a body can be wrong in several places.
        self.details = details


class TooLarge(InvalidInput):
    code = ErrorCode.TOO_LARGE
    http_status = 413
    close_code = CloseCode.TOO_LARGE


class UnknownCommand(InvalidInput):
    code = ErrorCode.UNKNOWN_COMMAND


class UnsupportedMediaType(InvalidInput):
    """A request body that is not declared ``application/json``."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    http_status = 415


class NotAcceptable(InvalidInput):
    """A request whose ``Accept`` header takes none of the types its route answers with."""

    code = ErrorCode.NOT_ACCEPTABLE
    http_status = 406


class MethodNotAllowed(InvalidInput):
    code = ErrorCode.METHOD_NOT_ALLOWED
    http_status = 405


class BadEventId(InvalidInput):
    """A ``Last-Event-ID`` this session's event stream never sent (``server.http.sse``)."""

    code = ErrorCode.BAD_EVENT_ID
    http_status = 400


class BadRequest(InvalidInput):
    """A request the HTTP layer could not parse (its line, its head past the limits), answered
    before the app (``server.ws.uvicorn_protocol``)."""

    code = ErrorCode.BAD_REQUEST
    http_status = 400


class ReservedName(InvalidInput):
    """A display name, or a new member's user id, that reads as a speaker the server itself
    names (``session.names.speaker_named``): shown, or told to the model, it would pose
    as the assistant or the server."""

    code = ErrorCode.RESERVED_NAME


class Unauthenticated(ParleyError):
    code = ErrorCode.UNAUTHENTICATED
    http_status = 401
    close_code = CloseCode.UNAUTHENTICATED


class Forbidden(ParleyError):
    code = ErrorCode.FORBIDDEN
    http_status = 403
    close_code: CloseCode | None = CloseCode.FORBIDDEN


class RestrictedShare(Forbidden):
    """What a member would share from a side-thread draws on material not every member
    may read, and the session's ``restricted_replies`` policy is ``private``."""

    code = ErrorCode.RESTRICTED_SHARE
    close_code = None  # the share is refused; the socket stays


class NotFound(ParleyError):
    code = ErrorCode.NOT_FOUND
    http_status = 404
    close_code = CloseCode.NOT_FOUND


class SessionGone(NotFound, LookupError):
    """A write found no session to write to: it was deleted meanwhile (on another node,
    say). A ``LookupError`` too, as the stores' ports have it."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r} (deleted meanwhile); nothing was stored")


class Conflict(ParleyError):
    code = ErrorCode.CONFLICT
    http_status = 409


class Busy(Conflict):
    code = ErrorCode.BUSY


class QueueFull(Conflict):
    code = ErrorCode.QUEUE_FULL
    http_status = 429


class ThreadClosed(Conflict):
    """A side-thread that was closed takes no more prompts."""

    code = ErrorCode.THREAD_CLOSED


class ThreadLimit(Conflict):
    """A member's side-threads, or a side-thread's turns, reached their limit."""

    code = ErrorCode.THREAD_LIMIT
    http_status = 429


class ThreadRunsBusy(Conflict):
    """As many side-thread runs as the session allows at once are under way, or as many of
    the member's as one member may have (their share of the session's)."""

    code = ErrorCode.THREAD_RUNS_BUSY
    http_status = 429


class SessionFull(Conflict):
    """The session's shared document reached its size limit (``max_session_bytes``): it
    takes no more messages, prompts, shares, pins, facts or policy changes. Waiting does
    not help; a new session does."""

    code = ErrorCode.SESSION_FULL


class DuplicateCommand(Conflict):
    """The (session, author, command id) was stored before: a resent command is answered
    with its original ack; a command id reused for another command is this conflict."""

    def __init__(self, command_id: str) -> None:
        super().__init__("this command id was used for another command")
        self.command_id = command_id


class RateLimited(ParleyError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429
    close_code: CloseCode | None = CloseCode.ABUSE

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        # When the budget has room again, where it is known: sent as ``Retry-After``.
        self.retry_after_s = retry_after_s


class Unavailable(ParleyError):
    code = ErrorCode.UNAVAILABLE
    http_status = 503
    close_code = CloseCode.TRY_AGAIN


SHUTTING_DOWN = "the server is shutting down; send it again after reconnecting"


class ShuttingDown(Unavailable):
    """This server drains (SIGTERM): it takes no new work, and no session over; what it
    refuses so stored nothing, and is sent again to another node, or to this one restarted."""

    def __init__(self, message: str = SHUTTING_DOWN) -> None:
        super().__init__(message)


class QuotaExceeded(RateLimited):
    """A call would pass a daily token quota; ``retry_after_s``: until the quotas start
    over (the next UTC midnight, ``session.quota.reset_in_s``), and ``retry_at`` that
    midnight itself, in milliseconds since the epoch (``session.quota.resets_at_ms``: what
    a prompt that fails with it is stored with)."""

    code = ErrorCode.QUOTA_EXCEEDED
    close_code = None  # a prompt is refused; the socket stays

    def __init__(
        self, message: str, retry_after_s: float | None = None, retry_at: int | None = None
    ) -> None:
        super().__init__(message, retry_after_s)
        self.retry_at = retry_at


class TooManyStreams(RateLimited):
    """One event stream more than a member (or a session) may hold open on one node."""

    code = ErrorCode.TOO_MANY_STREAMS
    close_code = None


class ProviderError(ParleyError):
    """The model provider failed. ``retryable`` says whether the same call may succeed
    later (429, 5xx, a dropped connection); ``retry_after_s`` is the provider's own hint.
    The message never contains credentials."""

    code = ErrorCode.PROVIDER_ERROR
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class ConfigurationError(ParleyError):
    """The server's configuration or database cannot be served: it refuses to start."""


class MissingApiKey(ConfigurationError):
    """A model names an API-key variable that is not set."""


class SchemaNotCurrent(ConfigurationError):
    """The database schema is not at the migrations' head (``parley migrate``)."""


class DatabaseInUse(ConfigurationError):
    """Another Parley process holds the database in a way that excludes this one (a server
    off-cluster holds it alone): ``server.store.claim``."""


def retry_after_ms(wait_s: float | None) -> int | None:
    """A wait as an answer tells it (``retry_after_ms``: a command's error reply, a REST
    error body): whole milliseconds, rounded up, at least 1; None when it is not known or
    never ends. ``Retry-After`` over HTTP is the same wait in whole seconds, rounded up."""
    if wait_s is None or not math.isfinite(wait_s):
        return None
    return max(1, math.ceil(wait_s * 1000))


def close_code_for(error: ParleyError, otherwise: CloseCode = CloseCode.TRY_AGAIN) -> CloseCode:
    """The code to close a socket with because of ``error``: its own, else ``otherwise``
    (an error with none that still ends a socket: the server could not serve it now)."""
    return error.close_code if error.close_code is not None else otherwise


def error_for(code: str, message: str, details: tuple[tuple[str, str], ...] = ()) -> ParleyError:
    """The error a reply with ``code`` reports (as it crossed a process boundary), with
    the problems it lists (``InvalidInput.details``) when it is an ``InvalidInput``."""
    pending: list[type[ParleyError]] = [ParleyError]
    while pending:
        kind = pending.pop()
        if kind.code.value == code:
            if issubclass(kind, InvalidInput):
                return kind(message, details)
            return kind(message)
        pending += kind.__subclasses__()
    return ParleyError(message)
