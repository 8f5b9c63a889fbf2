"""The error table: each class of the tree with its error code, HTTP status and close code.

These are wire values (REST bodies, command replies, WebSocket close frames): a change
here is a change of the protocol, and the README's tables say the same.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from parley import authz, server, session
from parley.session.closes import CloseCode
from parley.session.errors import (
    ConfigurationError,
    Forbidden,
    InvalidInput,
    NotFound,
    ParleyError,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
    close_code_for,
)

# class name: (error code, HTTP status, close code or None)
TABLE: dict[str, tuple[str, int, int | None]] = {
    "ParleyError": ("internal", 500, None),
    "InvalidInput": ("invalid", 422, None),
    "TooLarge": ("too_large", 413, 1009),
    "UnknownCommand": ("unknown_command", 422, None),
    "UnsupportedMediaType": ("unsupported_media_type", 415, None),
    "NotAcceptable": ("not_acceptable", 406, None),
    "MethodNotAllowed": ("method_not_allowed", 405, None),
    "BadEventId": ("bad_event_id", 400, None),
    "BadRequest": ("bad_request", 400, None),
    "ReservedName": ("reserved_name", 422, None),
    "ProtocolError": ("invalid", 422, 4400),
    "ClockOutOfRange": ("invalid", 422, None),
    "StateNotAnObject": ("invalid", 422, None),
    "CommandError": ("invalid", 422, None),
    "Unauthenticated": ("unauthenticated", 401, 4401),
    "Forbidden": ("forbidden", 403, 4403),
    "NotFound": ("not_found", 404, 4404),
    "SessionGone": ("not_found", 404, 4404),
    "Conflict": ("conflict", 409, None),
    "Busy": ("busy", 409, None),
    "QueueFull": ("queue_full", 429, None),
    "DuplicateCommand": ("conflict", 409, None),
    "ThreadClosed": ("thread_closed", 409, None),
    "ThreadLimit": ("thread_limit", 429, None),
    "ThreadRunsBusy": ("thread_runs_busy", 429, None),
    "SessionFull": ("session_full", 409, None),
    "RestrictedShare": ("restricted_share", 403, None),
    "IllegalTransition": ("conflict", 409, None),
    "RateLimited": ("rate_limited", 429, 4429),
    "PresenceDropped": ("rate_limited", 429, None),
    "QuotaExceeded": ("quota_exceeded", 429, None),
    "TooManyStreams": ("too_many_streams", 429, None),
    "Unavailable": ("unavailable", 503, 1013),
    "ShuttingDown": ("unavailable", 503, 1013),
    "NotHolder": ("unavailable", 503, 1013),
    "Fenced": ("unavailable", 503, 1013),
    "MembersMoved": ("unavailable", 503, 1013),
    "SequenceMoved": ("unavailable", 503, 1013),
    "ProviderError": ("provider_error", 502, None),
    "ConfigurationError": ("internal", 500, None),
    "MissingApiKey": ("internal", 500, None),
    "SchemaNotCurrent": ("internal", 500, None),
    "DatabaseInUse": ("internal", 500, None),
}

CLOSE_CODES = {
    "NORMAL": 1000,
    "GOING_AWAY": 1001,
    "TOO_LARGE": 1009,
    "INTERNAL": 1011,
    "TRY_AGAIN": 1013,
    "PROTOCOL": 4400,
    "UNAUTHENTICATED": 4401,
    "FORBIDDEN": 4403,
    "NOT_FOUND": 4404,
    "GONE": 4410,
    "ABUSE": 4429,
}

# Exceptions the project defines outside the tree, and why.
OUTSIDE_THE_TREE = {
    # A driver error on purpose: the store maps every sqlite3 error to ``Unavailable``.
    "LockTimeout",
    # Control flow inside the room's writer: a command the core refuses on a second look
    # under the lock rolls the write back; its ParleyError is answered afterwards.
    "_Refused",
    # Control flow inside an event stream: it ends with its ``end`` event, never raised out.
    "_Ended",
    # Stops httptools' parser from a callback: uvicorn answers 400 (server.ws.uvicorn_protocol).
    "HeadTooLarge",
    # An outbound request that got no answer (server.outbound.targets): never leaves the
    # server, its callers turn it into a delivery's record or the model's tool result.
    "OutboundError",
    "RefusedTarget",
    "NoAnswer",
    # A webhook tool's answer with a key twice (server.runtime.tools): caught where the
    # answer is read, which makes it the tool's error result.
    "_KeyTwice",
    # Control flow inside ``json.loads`` (session.json_constants): a ``ValueError``, as any
    # malformed JSON is, caught where the text is parsed and answered ``invalid``.
    "NotJsonConstant",
}


def _every_module() -> None:
    for package in (session, authz, server):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)


def _tree() -> list[type[ParleyError]]:
    _every_module()
    found: list[type[ParleyError]] = []
    pending: list[type[ParleyError]] = [ParleyError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending += kind.__subclasses__()
    return found


def test_every_error_class_has_its_code_status_and_close_code() -> None:
    tree = {kind.__name__: kind for kind in _tree()}
    assert set(tree) == set(TABLE)
    for name, kind in tree.items():
        close = None if kind.close_code is None else int(kind.close_code)
        assert (kind.code.value, kind.http_status, close) == TABLE[name], name


def test_close_codes_are_the_ones_on_the_wire() -> None:
    assert {code.name: int(code) for code in CloseCode} == CLOSE_CODES


def test_every_exception_the_project_defines_is_in_the_tree() -> None:
    _every_module()
    outside = set()
    for name, module in list(sys.modules.items()):
        if name.split(".")[:2] not in (["parley", p] for p in ("session", "authz", "server")):
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, ParleyError)
            ):
                outside.add(value.__name__)
    assert outside == OUTSIDE_THE_TREE


def test_a_socket_closes_with_the_code_of_the_error_that_ended_it() -> None:
    assert close_code_for(Unauthenticated("x")) is CloseCode.UNAUTHENTICATED
    assert close_code_for(Forbidden("x")) is CloseCode.FORBIDDEN
    assert close_code_for(NotFound("x")) is CloseCode.NOT_FOUND
    assert close_code_for(RateLimited("x")) is CloseCode.ABUSE
    assert close_code_for(Unavailable("x")) is CloseCode.TRY_AGAIN
    # No close code of its own: the caller's fallback (the server cannot serve it now).
    assert close_code_for(InvalidInput("x")) is CloseCode.TRY_AGAIN
    assert close_code_for(QuotaExceeded("x"), CloseCode.ABUSE) is CloseCode.ABUSE
    assert close_code_for(ConfigurationError("x"), CloseCode.INTERNAL) is CloseCode.INTERNAL
