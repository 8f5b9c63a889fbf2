"""``AdminClient``: the REST admin API (docs/api.md: "The admin API") over httpx, with typed
answers. A refusal raises the ``ParleyError`` subclass of the error body's code.

    async with AdminClient("http://127.0.0.1:8765", admin_key) as admin:
        session = await admin.create_session(title="Incident 42")
        await admin.put_member(session.id, "alice", "editor")
        token = await admin.create_token(session.id, "alice")

A member's client token works too, for the routes of its session its capabilities allow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from parley_client.errors import error_for, error_of_response
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


def _session(data: dict[str, Any]) -> SessionInfo:
    return _build(SessionInfo, data)


def _document(data: dict[str, Any]) -> DocumentInfo:
    return _build(DocumentInfo, data, readers=_build(Readers, data.get("readers") or {}))


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
        (``InvalidInput`` for a body that is not JSON, a NaN say, before it is sent)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        content, headers = None, {}
        if json is not None:
            # Encoded here: httpx before 0.28 writes NaN and Infinity, which are not JSON.
            try:
                content = strict_json(json, ensure_ascii=False).encode()
            except ValueError as exc:
                raise error_for("invalid", f"the request body is not JSON: {exc}") from None
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method, path, content=content, headers=headers, params=query
        )
        if response.is_success:
            return None if response.status_code == 204 or not response.content else response.json()
        retry_after = response.headers.get("Retry-After")
        raise error_of_response(response.status_code, response.text, retry_after=retry_after)

    # -- sessions -----------------------------------------------------------------------

    async def create_session(self, title: str = "", policy: str = "queue") -> SessionInfo:
        return _session(
            await self.request("POST", _path("sessions"), json={"title": title, "policy": policy})
        )

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
        data = await self.request("GET", _path("sessions"), params=params)
        return _build(SessionPage, data, sessions=tuple(_session(s) for s in data["sessions"]))

    async def get_session(self, session_id: str) -> SessionInfo:
        return _session(await self.request("GET", _path("sessions", session_id)))

    async def update_session(self, session_id: str, **changes: Any) -> SessionInfo:
        """Change ``title``, ``policy``, ``model`` (None: the default) or
        ``restricted_replies``; only the fields given are sent."""
        return _session(await self.request("PATCH", _path("sessions", session_id), json=changes))

    async def delete_session(self, session_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id))

    async def transcript(self, session_id: str) -> tuple[Entry, ...]:
        data = await self.request("GET", _path("sessions", session_id, "transcript"))
        return tuple(Entry.from_json(e) for e in data["messages"])

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
        return _build(MemberInfo, await self.request("PUT", path, json=body))

    async def remove_member(self, session_id: str, user_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "members", user_id))

    async def list_members(self, session_id: str) -> tuple[MemberInfo, ...]:
        data = await self.request("GET", _path("sessions", session_id, "members"))
        return tuple(_build(MemberInfo, m) for m in data["members"])

    async def create_token(
        self, session_id: str, user_id: str, *, ttl_seconds: int | None = None
    ) -> TokenInfo:
        body: dict[str, Any] = {"user_id": user_id}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        path = _path("sessions", session_id, "tokens")
        return _build(TokenInfo, await self.request("POST", path, json=body))

    async def revoke_token(self, session_id: str, jti: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "tokens", jti))

    # -- facts, pins, context -----------------------------------------------------------

    async def facts(self, session_id: str) -> dict[str, str]:
        return dict((await self.request("GET", _path("sessions", session_id, "facts")))["facts"])

    async def set_fact(self, session_id: str, key: str, value: str) -> dict[str, str]:
        path = _path("sessions", session_id, "facts", key)
        return dict((await self.request("PUT", path, json={"value": value}))["facts"])

    async def delete_fact(self, session_id: str, key: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "facts", key))

    async def pins(self, session_id: str) -> tuple[str, ...]:
        return tuple((await self.request("GET", _path("sessions", session_id, "pins")))["pins"])

    async def pin(self, session_id: str, entry_id: str) -> tuple[str, ...]:
        path = _path("sessions", session_id, "pins")
        return tuple((await self.request("POST", path, json={"entry_id": entry_id}))["pins"])

    async def unpin(self, session_id: str, entry_id: str) -> None:
        await self.request("DELETE", _path("sessions", session_id, "pins", entry_id))

    async def context(self, session_id: str, user_id: str) -> dict[str, Any]:
        """The next model input for ``user_id``, itemised (docs/context.md: "What the model is
        given"), as the server's JSON."""
        path = _path("sessions", session_id, "context")
        return dict(await self.request("GET", path, params={"user_id": user_id}))

    async def private_text(self, session_id: str, entry_id: str) -> PrivateText:
        path = _path("sessions", session_id, "entries", entry_id, "private")
        return _build(PrivateText, await self.request("GET", path))

    # -- usage and quotas ---------------------------------------------------------------

    async def usage(
        self, session_id: str, *, user_id: str | None = None, day: str | None = None
    ) -> Usage:
        path = _path("sessions", session_id, "usage")
        data = await self.request("GET", path, params={"user_id": user_id, "day": day})
        return _build(
            Usage,
            data,
            users=tuple(_build(UserUsage, u) for u in data["users"]),
            quotas=_build(Quotas, data["quotas"]),
        )

    async def quotas(self, session_id: str) -> Quotas:
        return _build(Quotas, await self.request("GET", _path("sessions", session_id, "quotas")))

    async def set_quotas(self, session_id: str, quotas: Quotas) -> Quotas:
        body = dataclasses.asdict(quotas)
        path = _path("sessions", session_id, "quotas")
        return _build(Quotas, await self.request("PUT", path, json=body))

    # -- roles, documents, tools --------------------------------------------------------

    async def roles(self) -> tuple[RoleInfo, ...]:
        return tuple(
            _build(RoleInfo, r) for r in (await self.request("GET", _path("roles")))["roles"]
        )

    async def put_role(self, name: str, capabilities: list[str] | tuple[str, ...]) -> RoleInfo:
        body = {"capabilities": list(capabilities)}
        return _build(RoleInfo, await self.request("PUT", _path("roles", name), json=body))

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
        return _document(await self.request("POST", path, json=body))

    async def list_documents(self, session_id: str) -> tuple[DocumentInfo, ...]:
        data = await self.request("GET", _path("sessions", session_id, "documents"))
        return tuple(_document(d) for d in data["documents"])

    async def get_document(self, session_id: str, document_id: str) -> DocumentInfo:
        path = _path("sessions", session_id, "documents", document_id)
        return _document(await self.request("GET", path))

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
        return _build(ToolInfo, await self.request("POST", _path("tools"), json=body))

    async def list_tools(self) -> tuple[ToolInfo, ...]:
        return tuple(
            _build(ToolInfo, t) for t in (await self.request("GET", _path("tools")))["tools"]
        )

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
        data = await self.request("GET", _path("sessions", session_id, "audit"), params=params)
        records = tuple(_build(AuditRecord, r) for r in data["records"])
        return AuditPage(records, data.get("next_after"), data.get("next_cursor"))
