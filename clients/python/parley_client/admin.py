"""``AdminClient``: the REST admin API (docs/api.md: "The admin API") over httpx, with typed
answers. A refusal raises the ``ParleyError`` subclass of the error body's code.

    async with AdminClient("http://127.0.0.1:8765", admin_key) as admin:
        session = await admin.create_session(title="Incident 42")
        await admin.put_member(session.id, "alice", "editor")
        token = await admin.create_token(session.id, "alice")

A member's client token works too, for the routes of its session its capabilities allow.
A success the SDK cannot read (not JSON, or not of the call's shape: a proxy's page, say)
raises ``UnexpectedAnswer``; a refusal without Parley's error body, its status's error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from parley_client.errors import UnexpectedAnswer, error_for, error_of_response, rate_wait
from parley_client.view import Entry
from parley_client.wire import strict_json

T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any], **nested: Any) -> T:
    """``cls`` from a JSON object: its fields by name (lists as tuples), unknown keys left
    out so a newer server's answers still read; ``nested`` replaces fields already built."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in nested:
            values[field.name] = nested[field.name]
        elif field.name in data:
            value = data[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    title: str
    created_at: int  # ms since the epoch
    last_seq: int
    policy: str
    model: str | None = None
    restricted_replies: str = "private"
    restricted_replies_by: str | None = None  # the member who chose ``shared``; None: admin


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: tuple[SessionInfo, ...]
    total: int
    limit: int
    offset: int
    # Pass as ``cursor`` for the next page (None: this is the last).
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    user_id: str
    role: str
    grants: tuple[str, ...]
    denials: tuple[str, ...]
    capabilities: tuple[str, ...]  # what the member may do now
    created_at: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token: str
    jti: str  # revoke with ``revoke_token``
    expires_at: int  # seconds since the epoch
    user_id: str
    session_id: str
    role: str


@dataclass(frozen=True, slots=True)
class RoleInfo:
    name: str
    builtin: bool
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Readers:
    users: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: str
    title: str
    readers: Readers
    chars: int
    created_at: int
    text: str | None = None  # only from ``get_document``


@dataclass(frozen=True, slots=True)
class ToolInfo:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    capability: str
    timeout_s: float
    created_at: int
    secret: str | None = None  # the signing secret: only from ``create_tool``


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: int  # ms since the epoch
    kind: str  # model_call, tool_refused, membership, policy, refused, …
    actor: str
    data: dict[str, Any]
    # Fields of ``data`` withheld from this reader (null there): a model call's sizes.
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: tuple[AuditRecord, ...]
    next_after: int | None  # pass as ``after`` for the next page (the older way)
    # Pass as ``cursor`` for the next page: it holds the last record's place, so a poller
    # misses none and sees none twice (None: this page listed none; keep the one you had).
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Quotas:
    session_tokens_per_day: int | None = None
    user_tokens_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: str
    input_tokens: int
    output_tokens: int
    calls: int


@dataclass(frozen=True, slots=True)
class Usage:
    session_id: str
    day: str  # UTC, YYYY-MM-DD
    input_tokens: int
    output_tokens: int
    users: tuple[UserUsage, ...]
    quotas: Quotas


@dataclass(frozen=True, slots=True)
class PrivateText:
    entry_id: str
    kind: str  # tool, reply
    text: str
    readers: tuple[dict[str, Any], ...]


def _path(*parts: str) -> str:
    """A REST path of ``parts``, each one segment: "." and ".." are escaped too (a client
    resolves them away: a fact named ".." made ``delete_fact`` delete the session)."""
    return "/api/v1/" + "/".join(quote(p, safe="").replace(".", "%2E") for p in parts)


def _unexpected(status: int | None, why: str) -> UnexpectedAnswer:
    return UnexpectedAnswer(f"the server's answer could not be read: {why}", status=status)


def _session(data: dict[str, Any]) -> SessionInfo:
    return _build(SessionInfo, data)


def _document(data: dict[str, Any]) -> DocumentInfo:
    return _build(DocumentInfo, data, readers=_build(Readers, data.get("readers") or {}))


def _reader(cls: type[T]) -> Callable[[dict[str, Any]], T]:
    return lambda data: _build(cls, data)


def _list_of(key: str, read: Callable[[Any], T]) -> Callable[[dict[str, Any]], tuple[T, ...]]:
    """The items under ``key`` of a listing, each as ``read`` builds it."""
    return lambda data: tuple(read(item) for item in data[key])


def _session_page(data: dict[str, Any]) -> SessionPage:
    return _build(SessionPage, data, sessions=_list_of("sessions", _session)(data))


def _usage(data: dict[str, Any]) -> Usage:
    users = _list_of("users", _reader(UserUsage))(data)
    return _build(Usage, data, users=users, quotas=_build(Quotas, data["quotas"]))


def _audit_page(data: dict[str, Any]) -> AuditPage:
    records = _list_of("records", _reader(AuditRecord))(data)
    return AuditPage(records, data.get("next_after"), data.get("next_cursor"))


class AdminClient:
    """``key``: the admin key, or a member's client token. ``transport`` is passed on to
    httpx (tests, proxies); ``timeout_s`` bounds each request."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key.strip()}"},  # a key file ends a line
            timeout=timeout_s,
            transport=transport,
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One call: the decoded JSON answer (None for 204), or the typed error
        (``InvalidInput`` for a body that is not JSON, a NaN say, before it is sent;
        ``UnexpectedAnswer`` for a success whose body is not JSON). A call refused
        ``rate_limited`` with when to come back (the member's budget: it was not made)
        waits that long and is made again, as a socket's command is (``rate_wait``)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        content, headers = None, {}
        if json is not None:
            # Encoded here: httpx before 0.28 writes NaN and Infinity, which are not JSON.
            try:
                content = strict_json(json, ensure_ascii=False).encode()
            except ValueError as exc:
                raise error_for("invalid", f"the request body is not JSON: {exc}") from None
            headers["Content-Type"] = "application/json"
        refusals = 0
        while True:
            response = await self.http.request(
                method, path, content=content, headers=headers, params=query
            )
            if response.is_success:
                break
            retry_after = response.headers.get("Retry-After")
            refusal = error_of_response(
                response.status_code, response.text, retry_after=retry_after
            )
            wait = rate_wait(refusal, refusals)
            if wait is None:
                raise refusal
            refusals += 1
            await asyncio.sleep(wait)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # also a body that is not UTF-8
            raise _unexpected(response.status_code, "not JSON") from None

    async def _call(
        self,
        method: str,
        path: str,
        read: Callable[[Any], T],
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> T:
        """``request``'s answer as ``read`` builds it; an answer ``read`` cannot build (a
        key missing, a list for an object, …) raises ``UnexpectedAnswer``."""
        data = await self.request(method, path, json=json, params=params)
        try:
            return read(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _unexpected(
                None, f"not of the expected shape ({type(exc).__name__}: {exc})"
            ) from None

    # -- sessions -----------------------------------------------------------------------

    async def create_session(self, title: str = "", policy: str = "queue") -> SessionInfo:
        body = {"title": title, "policy": policy}
        return await self._call("POST", _path("sessions"), _session, json=body)

    async def list_sessions(
        self, limit: int = 50, offset: int = 0, cursor: str | None = None
    ) -> SessionPage:
        """A page of sessions, oldest first: after ``cursor`` (the last page's
        ``next_cursor``, which a session deleted meanwhile does not move), or past
        ``offset``; not both (``ValueError``, as the server refuses the pair)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if cursor is not None:
            if offset:
                raise ValueError("list_sessions takes a cursor or an offset, not both")
            params = {"limit": limit, "cursor": cursor}
        return await self._call("GET", _path("sessions"), _session_page, params=params)

    async def get_session(self, session_id: str) -> SessionInfo:
        return await self._call("GET", _path("sessions", session_id), _session)

    async def update_session(self, session_id: str, **changes: Any) -> SessionInfo:
        """Change ``title``, ``policy``, ``model`` (None: the default) or
        ``restricted_replies``; only the fields given are sent."""
        path = _path("sessions", session_id)
        return await self._call("PATCH", path, _session, json=changes)

    async def delete_session(self, session_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id))

    async def transcript(self, session_id: str) -> tuple[Entry, ...]:
        path = _path("sessions", session_id, "transcript")
        return await self._call(
            "GET", path, lambda data: tuple(Entry.from_json(e) for e in data["messages"])
        )

    # -- members and tokens -------------------------------------------------------------

    async def put_member(
        self,
        session_id: str,
        user_id: str,
        role: str,
        *,
        grants: tuple[str, ...] | list[str] = (),
        denials: tuple[str, ...] | list[str] = (),
    ) -> MemberInfo:
        body = {"role": role, "grants": list(grants), "denials": list(denials)}
        path = _path("sessions", session_id, "members", user_id)
        return await self._call("PUT", path, _reader(MemberInfo), json=body)

    async def remove_member(self, session_id: str, user_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "members", user_id))

    async def list_members(self, session_id: str) -> tuple[MemberInfo, ...]:
        path = _path("sessions", session_id, "members")
        return await self._call("GET", path, _list_of("members", _reader(MemberInfo)))

    async def create_token(
        self, session_id: str, user_id: str, *, ttl_seconds: int | None = None
    ) -> TokenInfo:
        body: dict[str, Any] = {"user_id": user_id}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        path = _path("sessions", session_id, "tokens")
        return await self._call("POST", path, _reader(TokenInfo), json=body)

    async def revoke_token(self, session_id: str, jti: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "tokens", jti))

    # -- facts, pins, context -----------------------------------------------------------

    async def facts(self, session_id: str) -> dict[str, str]:
        path = _path("sessions", session_id, "facts")
        return await self._call("GET", path, lambda data: dict(data["facts"]))

    async def set_fact(self, session_id: str, key: str, value: str) -> dict[str, str]:
        path = _path("sessions", session_id, "facts", key)
        body = {"value": value}
        return await self._call("PUT", path, lambda data: dict(data["facts"]), json=body)

    async def delete_fact(self, session_id: str, key: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "facts", key))

    async def pins(self, session_id: str) -> tuple[str, ...]:
        path = _path("sessions", session_id, "pins")
        return await self._call("GET", path, lambda data: tuple(data["pins"]))

    async def pin(self, session_id: str, entry_id: str) -> tuple[str, ...]:
        path = _path("sessions", session_id, "pins")
        body = {"entry_id": entry_id}
        return await self._call("POST", path, lambda data: tuple(data["pins"]), json=body)

    async def unpin(self, session_id: str, entry_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "pins", entry_id))

    async def context(self, session_id: str, user_id: str) -> dict[str, Any]:
        """The next model input for ``user_id``, itemised (docs/context.md: "What the model is
        given"), as the server's JSON."""
        path = _path("sessions", session_id, "context")
        return await self._call("GET", path, dict, params={"user_id": user_id})

    async def private_text(self, session_id: str, entry_id: str) -> PrivateText:
        path = _path("sessions", session_id, "entries", entry_id, "private")
        return await self._call("GET", path, _reader(PrivateText))

    # -- usage and quotas ---------------------------------------------------------------

    async def usage(
        self, session_id: str, *, user_id: str | None = None, day: str | None = None
    ) -> Usage:
        path = _path("sessions", session_id, "usage")
        params = {"user_id": user_id, "day": day}
        return await self._call("GET", path, _usage, params=params)

    async def quotas(self, session_id: str) -> Quotas:
        path = _path("sessions", session_id, "quotas")
        return await self._call("GET", path, _reader(Quotas))

    async def set_quotas(self, session_id: str, quotas: Quotas) -> Quotas:
        body = dataclasses.asdict(quotas)
        path = _path("sessions", session_id, "quotas")
        return await self._call("PUT", path, _reader(Quotas), json=body)

    # -- roles, documents, tools --------------------------------------------------------

    async def roles(self) -> tuple[RoleInfo, ...]:
        return await self._call("GET", _path("roles"), _list_of("roles", _reader(RoleInfo)))

    async def put_role(self, name: str, capabilities: list[str] | tuple[str, ...]) -> RoleInfo:
        body = {"capabilities": list(capabilities)}
        return await self._call("PUT", _path("roles", name), _reader(RoleInfo), json=body)

    async def delete_role(self, name: str) -> None:
        await self.request("DELETE", _path("roles", name))

    async def add_document(
        self, session_id: str, title: str, text: str, readers: Readers
    ) -> DocumentInfo:
        body = {
            "title": title,
            "text": text,
            "readers": {"users": list(readers.users), "roles": list(readers.roles)},
        }
        path = _path("sessions", session_id, "documents")
        return await self._call("POST", path, _document, json=body)

    async def list_documents(self, session_id: str) -> tuple[DocumentInfo, ...]:
        path = _path("sessions", session_id, "documents")
        return await self._call("GET", path, _list_of("documents", _document))

    async def get_document(self, session_id: str, document_id: str) -> DocumentInfo:
        path = _path("sessions", session_id, "documents", document_id)
        return await self._call("GET", path, _document)

    async def delete_document(self, session_id: str, document_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "documents", document_id))

    async def create_tool(
        self,
        name: str,
        description: str,
        url: str,
        *,
        parameters: dict[str, Any] | None = None,
        capability: str | None = None,
        timeout_s: float | None = None,
    ) -> ToolInfo:
        """Register a webhook tool; the answer's ``secret`` signs its requests (shown once)."""
        body: dict[str, Any] = {"name": name, "description": description, "url": url}
        optional = {"parameters": parameters, "capability": capability, "timeout_s": timeout_s}
        body.update({k: v for k, v in optional.items() if v is not None})
        return await self._call("POST", _path("tools"), _reader(ToolInfo), json=body)

    async def list_tools(self) -> tuple[ToolInfo, ...]:
        return await self._call("GET", _path("tools"), _list_of("tools", _reader(ToolInfo)))

    async def delete_tool(self, name: str) -> None:
        await self.request("DELETE", _path("tools", name))

    # -- audit --------------------------------------------------------------------------

    async def audit(
        self,
        session_id: str,
        *,
        limit: int = 100,
        after: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        cursor: str | None = None,
    ) -> AuditPage:
        """Audit records oldest first (``read_audit``): after ``cursor`` (a page's
        ``next_cursor``), or after record id ``after`` (not with ``cursor``)."""
        params = {"limit": limit, "kind": kind, "actor": actor}
        params.update({"cursor": cursor} if cursor is not None else {"after": after})
        path = _path("sessions", session_id, "audit")
        return await self._call("GET", path, _audit_page, params=params)
