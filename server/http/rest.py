"""A small route table for the JSON API: validation, errors and OpenAPI from one declaration.

Each operation names its body and response models; the wrapper authenticates the caller,
authorizes it, enforces the request size limit, validates the body and query, and maps every
``ParleyError`` to ``{"error": {"code", "message"}}`` with its status.

Callers: the admin key may do everything. A member's client token may call the routes of
its own session that declare a ``capability``, when ``authz.policy.decide`` allows the member
that capability now and the token is not revoked (401); every refusal is audited.
"""

from __future__ import annotations

import hmac
import inspect
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from parley.authz.policy import Decision, Do, decide
from parley.authz.tokens import ADMIN_ACTOR, ClientClaims, verify_token
from parley.server.http.bounded import BoundedJSONResponse
from parley.server.http.error_body import error_body, said
from parley.server.http.models import READ_AS_WHOLE, ErrorBody
from parley.server.http.sse_cursor import EVENT_ID_GIVEN, MAX_EVENT_ID_CHARS, check_event_id
from parley.server.state import AppState
from parley.session.commands import MAX_ENTRY_ID_CHARS, unstorable
from parley.session.errors import (
    ErrorCode,
    Forbidden,
    InvalidInput,
    NotFound,
    ParleyError,
    RateLimited,
    TooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    retry_after_ms,
)
from parley.session.json_constants import read_numbers
from parley.session.json_values import json_values_refusal
from parley.session.ratelimit import command_bytes_refusal
from parley.session.unique_keys import check_unique_keys

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom


@dataclass(frozen=True, slots=True)
class Encoded:
    """A handler's answer already encoded as JSON (of the operation's response model)."""

    body: bytes


Handler = Callable[..., Awaitable[BaseModel | Encoded | None]]

ERROR_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or wrong admin key or client token",
    403: "Forbidden",
    404: "Not found",
    406: "The Accept header takes no type the route answers with",
    409: "Conflict",
    413: "Body too large",
    415: "Body not declared application/json",
    422: "Invalid input",
    429: "Too many requests",
    503: "Database unavailable",
}


MAX_ROW_ID = 2**63 - 1  # the largest id a row's 64-bit id column holds


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    minimum: int
    maximum: int
    default: int


@dataclass(frozen=True, slots=True)
class QueryStr:
    """A string query parameter (None when optional and absent), matching ``pattern``."""

    name: str
    max_length: int = 200
    required: bool = True
    pattern: str | None = None
    # The handler is given ``read(value)``, which raises ``InvalidInput`` for a value it
    # refuses: judged with the query, before anything is read from the store.
    read: Callable[[str], object] | None = None
    # JSON Schema's name for the form (``"date"``), in the document; and what a value must
    # be, said in a refusal instead of the pattern (one too long to read there).
    format: str | None = None
    form: str | None = None

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON Schema, in the OpenAPI document: with no pattern of its
        own, any text but a NUL, which ``check_text`` refuses (review RC-1: ``?user_id=a%00b``
        was admitted, refused 422)."""
        return text_schema(self.max_length, self.pattern or ANY_BUT_NUL, self.format)


@dataclass(frozen=True, slots=True)
class PathForm:
    """What a path parameter takes: the document says it, and ``route`` refuses any other
    value ``invalid`` before its handler reads it, so an id no row can have is answered
    alike on every route that names one (review RL-2)."""

    max_length: int = 200
    pattern: str | None = None

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON Schema, in the OpenAPI document: with no pattern of its
        own, any text but a NUL, as a query parameter's (``check_path`` refuses one
        ``invalid``; FX54: the document admitted ``/sessions/a%00b``)."""
        return text_schema(self.max_length, self.pattern or ANY_BUT_NUL)


# A path or query parameter's pattern where it has none of its own: any text but a NUL
# (ECMA-262's form, as JSON Schema patterns are read), which no database stores.
ANY_BUT_NUL = "[^\\u0000]*"


def text_schema(max_length: int, pattern: str | None, format: str | None = None) -> dict[str, Any]:
    """The JSON Schema of a path or query parameter's text, as ``check_text`` takes it: 1 to
    ``max_length`` characters matching ``pattern``."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        **({"format": format} if format else {}),
        **({"pattern": f"^{pattern}$"} if pattern else {}),
    }


# An entry's id (a prompt, a reply, a side-thread is one) as a socket's command takes it,
# on every route that names one (review RL-2: the document gave 200 characters, the cancel
# and side-thread routes refused past 64, and the GETs answered such an id 404).
ENTRY_ID = PathForm(MAX_ENTRY_ID_CHARS)
FORMS_OF_NAMES = {"entry_id": ENTRY_ID, "prompt_id": ENTRY_ID, "thread_id": ENTRY_ID}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: the admin (``user_id`` None) or a member with a client token."""

    user_id: str | None = None
    session_id: str | None = None
    claims: ClientClaims | None = None

    @property
    def is_admin(self) -> bool:
        return self.user_id is None

    @property
    def actor(self) -> str:
        """Who the caller is in audit records, events and webhooks."""
        return self.user_id or ADMIN_ACTOR


ADMIN = Caller()


# A request body's limit unless its route says otherwise (``Operation.body_bytes``).
SMALL_BODY_BYTES = 64 * 1024


@dataclass(slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    errors: tuple[int, ...] = ()
    query: tuple[QueryParam, ...] = field(default_factory=tuple)
    query_str: tuple[QueryStr, ...] = field(default_factory=tuple)
    # Members holding this capability may call it with their client token; None: admin only.
    capability: str | None = None
    # The handler takes ``caller`` (for checks that depend on the resource).
    with_caller: bool = False
    # The handler takes ``client``, the address the request came from ("" if unknown): the
    # budget of a route that needs no key (the invite exchange) is the address's.
    with_client: bool = False
    # A route with no session in its path that a client token may call too (the models,
    # ``/api/v1/me/...``): the member is judged in the token's own session.
    own_session: bool = False
    # Where the created resource lives (a 201's ``Location``): a template filled from the
    # path's parameters, the body's fields and the response's fields.
    location: str | None = None
    tag: str | None = None  # OpenAPI's grouping; from the path when None
    # The largest body read (bytes): parsing is the loop's time (an unread field's nested
    # lists cost 0.25 s a MiB), so each route takes what its model can hold. None: the
    # server's ``PARLEY_MAX_REQUEST_BYTES``, for the routes that carry texts.
    body_bytes: int | None = SMALL_BODY_BYTES
    # Also answers ``Accept: text/event-stream`` with a Server-Sent Events stream that
    # resumes after ``Last-Event-ID`` (the header, or the query parameter ``last_event_id``).
    streams: bool = False
    # Answers a member's resend past their command rate (``prompts.send``): their body is
    # parsed past the rate, to find one; on any other route it is refused unparsed.
    answers_resends: bool = False
    # Reads or writes the database, so answers ``503 unavailable`` while it cannot be
    # (down, or its write lock held past ``PARLEY_DB_LOCK_TIMEOUT_S``): with or without a
    # key (review RY-1: the invite exchange answered an undocumented 503).
    store: bool = True
    # A load balancer's or monitor's probe (``/healthz``, ``/readyz``): query parameters
    # it does not take are ignored, not refused (a cache-buster such as ``?_=1700000000``).
    probe: bool = False
    # A path parameter's form past its name's (``FORMS_OF_NAMES``; else 1-200 characters):
    # the form its handler takes, for the document to say (review: it said any).
    path_forms: dict[str, PathForm] = field(default_factory=dict)

    def path_form(self, name: str) -> PathForm:
        """The form of path parameter ``name``."""
        return self.path_forms.get(name) or FORMS_OF_NAMES.get(name, PathForm())

    @property
    def query_names(self) -> frozenset[str]:
        """The query parameters the operation takes (and the document lists)."""
        names = {q.name for q in self.query} | {q.name for q in self.query_str}
        return frozenset(names | ({LAST_EVENT_ID, TOKEN} if self.streams else set()))


# The query parameter a stream resumes after, as a browser's EventSource cannot send the
# ``Last-Event-ID`` header on its first request.
LAST_EVENT_ID = "last_event_id"
# A streaming route's client token in the URL, as ``EventSource`` cannot send a header.
TOKEN = "token"


def resume_given(request: Request) -> str | None:
    """Where a stream resumes: the ``Last-Event-ID`` header, else ``?last_event_id=``
    (None: neither); each given checked for its form (``BadEventId``), on the JSON pages
    too, which do not read it (review RC-1: a malformed one was 200 there, 400 here)."""
    header = request.headers.get("last-event-id")
    query = query_value(request, LAST_EVENT_ID)
    for given in (header, query):
        if given is not None:
            check_event_id(given)
    return header or query


def path_pattern(pattern: str) -> PathForm:
    """A ``path_forms`` form: the whole parameter matches ``pattern``."""
    return PathForm(pattern=pattern)


def check_path(op: Operation, params: dict[str, Any]) -> None:
    """Refuse (``InvalidInput``) a path parameter not of its form in ``op``, or one no
    database could store (a NUL, a lone surrogate)."""
    for name, value in params.items():
        form = op.path_form(name)
        check_text(name, str(value), form.max_length, form.pattern, required=False)


MAX_PROBLEMS = 50  # validation errors listed in one answer (the count says how many more)


def error_response(error: ParleyError, retry_after_s: float | None = None) -> JSONResponse:
    """The error body; ``WWW-Authenticate`` with a 401, and when to come back with a 503
    when ``retry_after_s`` is given, as a refused WebSocket upgrade has it, and with a
    ``RateLimited`` that knows when its budget has room again: ``Retry-After`` (whole
    seconds) and the body's ``retry_after_ms``, as a socket's refusal has it (one wait,
    rounded up in each unit)."""
    more: dict[str, Any] = {}
    if isinstance(error, InvalidInput) and (error.details or error.code is ErrorCode.INVALID):
        more["details"] = [{"at": at, "message": message} for at, message in problems(error)]
    headers: dict[str, str] = {}
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    wait = retry_after_s if error.http_status == 503 else None
    if isinstance(error, RateLimited):
        wait = error.retry_after_s
    wait_ms = retry_after_ms(wait)
    if wait_ms is not None:
        headers["Retry-After"] = str(math.ceil(wait_ms / 1000))
        more["retry_after_ms"] = wait_ms
    body = error_body(error.code.value, error.message, **more)
    return JSONResponse(body, status_code=error.http_status, headers=headers or None)


# Where a rule's problem is, as its message names it first: ``field: …`` or ``'field' …``.
_NAMED = re.compile(r"(?:'([\w.]{1,100})' |([\w.]{1,100}): )")


def problems(error: InvalidInput) -> tuple[tuple[str, str], ...]:
    """Every problem found, as (where, what): the form's (pydantic's, all of them), or the
    one rule a body of the right form broke (review: those were listed nowhere), where its
    message names it (else ``body``)."""
    if error.details:
        return error.details
    named = _NAMED.match(error.message)
    if named is None:
        return (("body", error.message),)
    if named.group(2):  # "field: what", listed as pydantic's are: the what alone
        return ((named.group(2), error.message[named.end() :]),)
    return ((named.group(1), error.message),)


def authenticate(request: Request, state: AppState, *, query_token: bool = False) -> Caller:
    """The caller of ``request``: its ``Authorization: Bearer`` key (the admin key or a client
    token), else, where ``query_token`` (the event stream, whose browser reader
    ``EventSource`` cannot send a header), a client token as ``?token=``, as the socket
    takes it: never the admin key, and the server's logs redact it (``logs.Redactor``)."""
    header = request.headers.get("authorization")
    if header is None and query_token and TOKEN in request.query_params:
        token = query_value(request, TOKEN) or ""
        try:
            claims = verify_token(state.keys.signing_key, token, now=int(state.clock()))
        except Unauthenticated:
            refusal = "wrong client token in '?token=' (the admin key: as a header only)"
            raise Unauthenticated(refusal) from None
        return Caller(claims.user_id, claims.session_id, claims)
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("send the admin key or a client token as 'Authorization: Bearer …'")
    if hmac.compare_digest(key.encode(), state.keys.admin_key.encode()):
        return ADMIN
    try:
        claims = verify_token(state.keys.signing_key, key, now=int(state.clock()))
    except Unauthenticated:
        raise Unauthenticated("wrong admin key or client token") from None
    return Caller(claims.user_id, claims.session_id, claims)


async def authorize(op: Operation, caller: Caller, state: AppState, session_id: str | None) -> None:
    """Let a member call ``op`` only in their token's session, holding its capability
    (``admit``, then ``judge``)."""
    await judge(op, caller, state, await admit(op, caller, state, session_id))


async def admit(
    op: Operation, caller: Caller, state: AppState, session_id: str | None
) -> SessionRoom | None:
    """Let a member's token through the door of ``op`` at all, as a socket is let into its
    session before any frame is read: only in its own session's routes, not revoked, and
    not an admin-only route (``forbidden``, audited). Returns the member's session's room,
    caught up with what is committed (None for the admin key)."""
    if caller.user_id is None:
        return None
    session_id = _session_of(op, caller, session_id)
    if session_id is None or session_id != caller.session_id:
        raise Forbidden("a client token acts only in its own session's routes")
    try:
        room = await state.rooms.current(session_id)  # judged by what is committed
    except NotFound:
        if not op.own_session:
            raise  # the session its path names is unknown
        # A route naming no session: the token's is gone, so it signs in nobody, as a
        # revoked one (review RL-6: its 404 was no answer these routes list).
        raise Unauthenticated("this token's session was deleted") from None
    revoked = None if caller.claims is None else room.membership.token_refusal(caller.claims)
    if revoked is not None:
        raise Unauthenticated(revoked)
    if op.capability is None:
        await _refused(op, caller, state, room, Decision(False, "admin only"))
        raise Forbidden("this route needs the admin key")
    return room


async def judge(op: Operation, caller: Caller, state: AppState, room: SessionRoom | None) -> None:
    """Whether the member ``admit`` let into ``room`` holds ``op``'s capability (``forbidden``,
    audited). Called once the body's size and form are judged, as a socket's command is
    judged by its form before its sender's rights (docs/websocket.md: the order of checks);
    on the room as ``admit`` caught it up, not read again."""
    if caller.user_id is None or room is None or op.capability is None:
        return
    refusal = decide(room.subject(caller.user_id), Do(op.capability))
    if refusal.allowed:
        return
    await _refused(op, caller, state, room, refusal)
    refusal.require()


def _session_of(op: Operation, caller: Caller, session_id: str | None) -> str | None:
    if op.own_session:
        assert "{session_id}" not in op.path  # a path's session is judged as such
        return caller.session_id
    return session_id


async def _refused(
    op: Operation, caller: Caller, state: AppState, room: SessionRoom, refusal: Decision
) -> None:
    await audit_refusal(state, room, caller, f"{op.method} {op.path}", refusal.reason)


async def audit_refusal(
    state: AppState, room: SessionRoom, caller: Caller, action: str, reason: str
) -> None:
    """Audit a member's refused call (``action``: its method and route): at most at their
    command rate (their socket's refused commands spend it too); past it, refused
    unwritten. For a refusal a route's handler makes (a member naming another), as
    ``judge`` makes one of a capability."""
    await spend_command_everywhere(state, room, caller.user_id, "too many refused calls; slow down")
    await room.writer.audit("refused", caller.actor, {"action": action, "reason": reason})


def spend_command(
    state: AppState,
    room: SessionRoom,
    user_id: str | None,
    why: str = "too many commands; slow down",
) -> None:
    """A member's HTTP call that a socket makes as a command (a prompt, a fact, a pin, the
    policy), or one refused and audited, spends their one command budget, shared with
    their sockets; ``RateLimited`` past it. The admin key's own calls (``user_id`` None)
    spend none."""
    if user_id is not None:
        room.spend_command(user_id, why)


async def spend_command_everywhere(
    state: AppState,
    room: SessionRoom,
    user_id: str | None,
    why: str = "too many commands; slow down",
) -> None:
    """``spend_command`` here, then (cluster mode, on a node that follows the session)
    where the session runs too, as a forwarded command spends it there: every node's calls
    of a member pass there, so their budget is one, not one per node (review: 171 fact
    changes through two nodes against a budget of 87)."""
    spend_command(state, room, user_id, why)
    if user_id is not None:
        await state.rooms.charge(room, user_id, why)


def spend_read(state: AppState, room: SessionRoom, user_id: str | None, size: int) -> None:
    """A member's read of a large answer (the transcript) spends their read budget by its
    bytes (one larger than the budget's burst takes all of it); ``RateLimited`` past it,
    with when it will be there. The admin key's reads spend none."""
    if not room.spend_read(user_id, size):
        wait = None if user_id is None else room.read_wait_s(user_id, size)
        raise RateLimited("over the read budget (bytes of answers); slow down", wait)


async def read_of_kept(
    state: AppState,
    room: SessionRoom,
    user_id: str | None,
    last_size: int,
    encode: Callable[[], Awaitable[bytes]],
) -> bytes:
    """An answer kept encoded with the room (``encode`` makes it, from what it kept),
    charged to the reader's read budget before it is made, by the last answer's size
    (``last_size``; 0: none made yet, charged once made): a refused read costs nothing."""
    if last_size:
        spend_read(state, room, user_id, last_size)
    body = await encode()
    if not last_size:
        spend_read(state, room, user_id, len(body))
    return body


async def read_paid_after(
    state: AppState,
    room: SessionRoom,
    user_id: str | None,
    make: Callable[[], Awaitable[bytes]],
    least: int = 1,
) -> Encoded:
    """An answer made anew for each read, its size known once made (``make``): refused
    before anything is read unless the reader's read budget holds ``least`` bytes (what
    the answer is known to cost at least), so a refused read costs nothing; once made,
    the rest of its bytes is paid (``SessionRoom.settle_read``, as a socket's greeting
    is: their next reads wait until paid)."""
    spend_read(state, room, user_id, least)
    body = await make()
    room.settle_read(user_id, least, [body])
    return Encoded(body)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"request body exceeds {limit} bytes")
    return bytes(body)


def invalid_body(exc: ValidationError) -> InvalidInput:
    """Every problem pydantic found (up to ``MAX_PROBLEMS``), in the message and listed."""
    # Only the locations and messages, and only of the ones shown: a body can hold
    # thousands of wrong items, and each error's input and context would be copied.
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    # A validator's own words (review RP-1).
    details = tuple(
        (".".join(str(p) for p in error["loc"]) or "body", said(error["msg"]))
        for error in errors[:MAX_PROBLEMS]
    )
    message = "; ".join(f"{at}: {what}" for at, what in details)
    if exc.error_count() > MAX_PROBLEMS:
        message += f"; and {exc.error_count() - MAX_PROBLEMS} more"
    return InvalidInput(message, details)


def check_json_body(request: Request, raw: bytes | None) -> None:
    """A body must say it is JSON (``application/json`` or a ``+json`` type); an empty one
    (every field optional) may say nothing. Call it before reading the body (``raw``
    None: a declared type is judged at once, nothing is read for a wrong one) and after."""
    declared = request.headers.get("content-type")
    if declared is None and (raw is None or not raw.strip()):
        return
    media = (declared or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"send the body as JSON with 'Content-Type: application/json' (got {media or 'none'})"
        )


def location_of(op: Operation, fields: dict[str, Any]) -> dict[str, str] | None:
    if op.location is None:
        return None
    quoted = {name: quote(str(value), safe="") for name, value in fields.items()}
    return {"Location": op.location.format_map(quoted)}


def route(op: Operation) -> Route:
    async def endpoint(request: Request) -> Response:
        state: AppState = request.app.state.parley
        try:
            kwargs: dict[str, Any] = dict(request.path_params)
            caller = authenticate(request, state, query_token=op.streams) if op.auth else ADMIN
            # A socket's order (docs/websocket.md: the order of checks): the member let in,
            # then the path, query and body's size and form, then their rights (review: a
            # viewer's over-long fact was ``forbidden`` here and ``too_large`` on a socket;
            # FX36: a stranger's typo'd query was named, ``invalid``, before ``forbidden``).
            room = await admit(op, caller, state, kwargs.get("session_id"))
            check_form(op, request, kwargs)
            if op.with_caller:
                kwargs["caller"] = caller
            if op.with_client:
                kwargs["client"] = "" if request.client is None else request.client.host
            if op.body is not None:
                kwargs["body"] = await _body(op, request, state, caller, room)
            await judge(op, caller, state, room)
            result = await op.handler(state, **kwargs)
        except ParleyError as exc:
            state.metrics.errors.labels(code=exc.code.value).inc()
            return error_response(exc, state.settings.db_retry_after_s)
        if result is None:
            return Response(status_code=op.status)
        stall_s, cut = state.settings.send_stall_timeout_s, state.metrics.answers_cut.inc
        if isinstance(result, Encoded):
            return BoundedJSONResponse(raw=result.body, stall_timeout_s=stall_s, on_cut=cut)
        answer = result.model_dump(mode="json")
        fields = {**request.path_params, **answer}
        if op.location is not None and "body" in kwargs:
            fields = {**kwargs["body"].model_dump(mode="json"), **fields}
        headers = location_of(op, fields)
        return BoundedJSONResponse(
            answer, stall_timeout_s=stall_s, status_code=op.status, headers=headers, on_cut=cut
        )

    return Route(op.path, endpoint, methods=[op.method], name=op.handler.__name__)


async def _body(
    op: Operation, request: Request, state: AppState, caller: Caller, room: SessionRoom | None
) -> BaseModel:
    """The request's body as ``op``'s model, judged in a socket's order (docs/websocket.md:
    the order of checks): its declared type and size, the member's command bytes and
    command rate, then its form. Past the rate a member's body is refused unparsed, unless
    ``op`` answers a resend past it (as a socket reads a frame past the rate to find one);
    a malformed one spends a command, as a socket's does, so past the rate it is
    ``rate_limited`` at both doors (review: ``invalid`` over REST)."""
    assert op.body is not None
    check_json_body(request, None)
    limit = state.settings.max_request_bytes
    raw = await read_body(request, limit if op.body_bytes is None else op.body_bytes)
    if room is None or caller.user_id is None:  # the admin key's: no member's budget
        check_json_body(request, raw)
        return parsed_body(op.body, raw)
    # A member's body spends their command bytes before it is parsed, as a socket's
    # command does (review: 1 MB bodies of 90,000 keys, refused 422 one after the other,
    # cost 180 ms of CPU each and were never charged).
    if raw:
        refusal = command_bytes_refusal(room.budgets, caller.user_id, len(raw), room.clock())
        if refusal is not None:
            raise refusal
    now, bucket = room.clock(), room.user_bucket(caller.user_id)
    if not op.answers_resends and bucket.spent(now):
        raise RateLimited("too many commands; slow down", bucket.wait_s(now))
    check_json_body(request, raw)
    try:
        return parsed_body(op.body, raw)
    except InvalidInput:
        await spend_command_everywhere(state, room, caller.user_id)
        raise


def parsed_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    """``raw`` as ``model``, each field of exactly its JSON type: strict, or an integer
    field takes ``true`` and ``"100"`` (review: a token's ``ttl_seconds: true`` made one
    that lived a second), while the OpenAPI document says ``integer`` (whose ``100.0`` the
    fields take: ``models.WHOLE``, told by ``read_numbers`` of each number read as a whole
    double it is not: ``86400.000000000001`` is refused as ``86400.5`` is). A body of
    more values than any holds is refused unparsed, as a socket's command is
    (``json_values_refusal``); one holding ``NaN`` or ``Infinity`` is malformed JSON."""
    refusal = json_values_refusal(raw)
    if refusal is not None:
        raise refusal
    numbers = read_numbers(raw)
    # Refused as the socket refuses them (pydantic's parser takes them: review I3).
    not_json = numbers.not_json
    if not_json is not None:
        raise InvalidInput(
            f"body: Invalid JSON: {not_json}", (("body", f"Invalid JSON: {not_json}"),)
        )
    context = {READ_AS_WHOLE: numbers.read_as_whole} if numbers.read_as_whole else None
    try:
        parsed = model.model_validate_json(raw or b"{}", strict=True, context=context)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    check_unique_keys(raw)  # after: a body pydantic refuses is not parsed twice
    return parsed


def query_value(request: Request, name: str) -> str | None:
    """The one value of query parameter ``name`` (None: not given); ``InvalidInput`` if it
    is given more than once, on every route."""
    given = request.query_params.getlist(name)
    if len(given) > 1:
        raise InvalidInput(f"{name[:40]}: given {len(given)} times; give it once")
    return given[0] if given else None


def check_form(op: Operation, request: Request, kwargs: dict[str, Any]) -> None:
    """Judge ``op``'s path parameters (in ``kwargs``) and query, once its caller is let in
    (``admit``), and put the query's values in ``kwargs``."""
    check_path(op, kwargs)
    if not op.probe:
        check_query_names(op, request)
    for param in op.query:
        kwargs[param.name] = _query_int(request, param)
    for text in op.query_str:
        kwargs[text.name] = _query_str(request, text)
    if op.streams:  # taken by the stream (``sse.open_stream``), once, as every parameter
        resume_given(request)


def check_query_names(op: Operation, request: Request) -> None:
    """Refuse (``InvalidInput``, naming it) a query parameter ``op`` does not take, as a
    body's unknown field is refused: ignored, a typo'd filter (``?kinds=``) listed
    everything and a typo'd cursor gave page one again (review RY-8)."""
    unknown = sorted(set(request.query_params) - op.query_names)[:MAX_PROBLEMS]
    if unknown:
        takes = ", ".join(sorted(op.query_names)) or "none"
        what = f"not a query parameter of this route (it takes: {takes})"
        details = tuple((name[:40], what) for name in unknown)
        raise InvalidInput("; ".join(f"{at}: {what}" for at, what in details), details)


def _query_str(request: Request, param: QueryStr) -> object:
    value = query_value(request, param.name)
    if value is None and not param.required:
        return None
    given = check_text(
        param.name, value or "", param.max_length, param.pattern, param.required, param.form
    )
    return given if param.read is None else param.read(given)


def check_text(
    name: str,
    value: str,
    max_length: int,
    pattern: str | None,
    required: bool = True,
    form: str | None = None,
) -> str:
    """``value`` of a path or query parameter; ``InvalidInput`` if it is not of its form:
    1 to ``max_length`` characters matching ``pattern`` (``form``: how the refusal says
    it), and storable."""
    if not value or len(value) > max_length:
        need = "required, " if required else ""
        raise InvalidInput(f"{name}: {need}1-{max_length} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise InvalidInput(f"{name}: must be {form}" if form else f"{name}: must match {pattern}")
    problem = unstorable(value)  # a value a database could not even be asked about
    if problem is not None:
        raise InvalidInput(f"{name}: {problem}")
    return value


def _query_int(request: Request, param: QueryParam) -> int:
    raw = query_value(request, param.name)
    if raw is None:
        return param.default
    # ASCII digits: ``\d`` takes any script's (review: ``?limit=٣`` was read as 3).
    found = re.fullmatch(r"(-?)([0-9]+)", raw)
    if found is None:
        raise InvalidInput(f"{param.name}: must be a whole number")
    sign, digits = found.groups()
    # Past 19 digits a number is past every bound (2**63 - 1 at most): not read, however
    # long (review RP-1: ``?limit=-1`` was "not a whole number"; say which bound it passed).
    value = int(raw) if len(digits) <= 19 else -MAX_ROW_ID - 1 if sign else MAX_ROW_ID + 1
    if value < param.minimum:
        raise InvalidInput(f"{param.name}: must be at least {param.minimum}")
    if value > param.maximum:
        raise InvalidInput(f"{param.name}: must be at most {param.maximum}")
    return value


def _takes_no_body(model: type[BaseModel]) -> bool:
    """Whether an empty body is taken (as ``{}``: ``parsed_body``), every field optional."""
    try:
        model.model_validate({}, strict=True)
    except ValidationError:
        return False
    return True


def tag_of(path: str) -> str:
    """OpenAPI's group of a path: what it names under a session, else its first part."""
    parts = [p for p in path.removeprefix("/api/v1/").split("/") if not p.startswith("{")]
    if parts[0] == "sessions" and len(parts) > 1:
        return parts[1]
    return parts[0]


class StorableText(GenerateJsonSchema):
    """Every string of a body or an answer holds no NUL (``models.Strict``, which refuses
    one as the database cannot store it): said as a pattern where the field has none, so
    the document admits no value refused for its form (review RP-1)."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        json_schema = super().str_schema(schema)
        json_schema.setdefault("pattern", NO_NUL)
        return json_schema


# ECMA-262's form of "no U+0000 anywhere", as JSON Schema patterns are read.
NO_NUL = f"^{ANY_BUT_NUL}$"


def openapi_document(operations: list[Operation], *, title: str, version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody}
    for op in operations:
        models.update(m for m in (op.body, op.response) if m is not None)
    _, schema = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
        schema_generator=StorableText,
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "tags": [op.tag or tag_of(op.path)],
        }
        description = inspect.getdoc(op.handler)
        if description:
            item["description"] = description
        params = [
            {"name": name, "in": "path", "required": True, "schema": op.path_form(name).schema()}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": q.minimum,
                    "maximum": q.maximum,
                    "default": q.default,
                },
            }
            for q in op.query
        ]
        params += [
            {"name": q.name, "in": "query", "required": q.required, "schema": q.schema()}
            for q in op.query_str
        ]
        if op.streams:
            resume = text_schema(MAX_EVENT_ID_CHARS, EVENT_ID_GIVEN)
            params += [
                {"name": "Last-Event-ID", "in": "header", "schema": resume},
                {
                    "name": LAST_EVENT_ID,
                    "in": "query",
                    "description": "The stream resumes after this id when no header gives "
                    "one; the JSON pages check its form alone.",
                    "schema": resume,
                },
                {
                    "name": TOKEN,
                    "in": "query",
                    "description": "A client token (never the admin key) when no "
                    "Authorization header is sent: a browser's EventSource cannot send one.",
                    "schema": {"type": "string", "pattern": NO_NUL},
                },
            ]
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {
                "required": not _takes_no_body(op.body),
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}
                    }
                },
            }
        responses: dict[str, Any] = {}
        if op.response is not None:
            responses[str(op.status)] = {
                "description": "OK",
                **(
                    {"headers": {"Location": {"schema": {"type": "string"}}}}
                    if op.location is not None
                    else {}
                ),
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{op.response.__name__}"}
                    }
                },
            }
        else:
            responses[str(op.status)] = {"description": "Done"}
        if op.streams:
            responses[str(op.status)]["content"]["text/event-stream"] = {
                "schema": {"type": "string"}
            }
        statuses = set(op.errors) | ({401} if op.auth else set())
        statuses |= {400, 406} if op.streams else set()  # bad_event_id, not_acceptable
        statuses |= {413, 415, 422} if op.body is not None else set()
        # A query parameter the route does not take is refused 422 (``check_query_names``),
        # on every route but the probes; so is a path parameter a database cannot store.
        statuses |= set() if op.probe else {422}
        # A client token's refusal (403: any route that takes a key, the admin's alone
        # too), or one past its command rate (429).
        statuses |= {403} if op.auth else set()
        refusable = op.capability is not None or "{session_id}" in op.path
        statuses |= {429} if refusable else set()
        statuses |= {503} if op.store else set()
        for status in sorted(statuses):
            responses[str(status)] = {
                "description": ERROR_DESCRIPTIONS[status],
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            }
        item["responses"] = responses
        if op.auth:
            item["security"] = [{"adminKey": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
        },
    }
