"""One exception tree for the whole project, each leaf with a stable error code.

    ParleyError                      code        HTTP  WebSocket close (when fatal)
    ├── InvalidInput                 invalid     422
    │   ├── TooLarge                 too_large   413   1009
    │   └── UnknownCommand           unknown_command 422
    ├── Unauthenticated              unauthenticated 401 4401
    ├── Forbidden                    forbidden   403   4403
    ├── NotFound                     not_found   404   4404
    ├── Conflict                     conflict    409
    │   ├── Busy                     busy        409
    │   └── QueueFull                queue_full  429
    ├── RateLimited                  rate_limited 429
    │   └── QuotaExceeded            quota_exceeded 429
    ├── Unavailable                  unavailable 503   1013
    └── ProviderError                provider_error 502 (a run fails with it; never fatal)

The WebSocket layer sends non-fatal errors as JSON error replies and keeps the socket open;
only errors a retry cannot fix close with a 44xx code (stock Yjs clients stop reconnecting).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNKNOWN_COMMAND = "unknown_command"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    BUSY = "busy"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"
    PROVIDER_ERROR = "provider_error"
    INTERNAL = "internal"


class ParleyError(Exception):
    """Root of every error Parley raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ParleyError):
    code = ErrorCode.INVALID
    http_status = 422


class TooLarge(InvalidInput):
    code = ErrorCode.TOO_LARGE
    http_status = 413


class UnknownCommand(InvalidInput):
    code = ErrorCode.UNKNOWN_COMMAND


class Unauthenticated(ParleyError):
    code = ErrorCode.UNAUTHENTICATED
    http_status = 401


class Forbidden(ParleyError):
    code = ErrorCode.FORBIDDEN
    http_status = 403


class NotFound(ParleyError):
    code = ErrorCode.NOT_FOUND
    http_status = 404


class Conflict(ParleyError):
    code = ErrorCode.CONFLICT
    http_status = 409


class Busy(Conflict):
    code = ErrorCode.BUSY


class QueueFull(Conflict):
    code = ErrorCode.QUEUE_FULL
    http_status = 429


class RateLimited(ParleyError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429


class Unavailable(ParleyError):
    code = ErrorCode.UNAVAILABLE
    http_status = 503


class QuotaExceeded(RateLimited):
    code = ErrorCode.QUOTA_EXCEEDED


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


def error_for(code: str, message: str) -> ParleyError:
    """The error a reply with ``code`` reports (as it crossed a process boundary)."""
    pending: list[type[ParleyError]] = [ParleyError]
    while pending:
        kind = pending.pop()
        if kind.code.value == code:
            return kind(message)
        pending += kind.__subclasses__()
    return ParleyError(message)
