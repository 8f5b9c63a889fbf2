"""REST routes of permissions: custom roles, documents with readers, tools, the audit log."""

from __future__ import annotations

from authz.roles import ROLE_CAPABILITIES, Capability, Role, check_capabilities, check_role_name
from server.access_store import AccessStore
from server.api_models import AuditList, AuditRecordOut, RoleList, RoleOut, RolePut
from server.rest import Operation, QueryParam, QueryText
from server.state import AppState
from session.errors import Conflict, NotFound


def _access(state: AppState) -> AccessStore:
    return AccessStore(state.store)


def _role_out(state: AppState, name: str) -> RoleOut:
    return RoleOut(
        name=name,
        builtin=name in Role.__members__.values(),
        capabilities=sorted(state.rooms.roles.capabilities(name)),
    )


async def list_roles(state: AppState) -> RoleList:
    return RoleList(roles=[_role_out(state, name) for name in state.rooms.roles.names()])


async def put_role(state: AppState, name: str, body: RolePut) -> RoleOut:
    """Define or redefine a custom role; members holding it get the new set at once."""
    check_role_name(name)
    if name in ROLE_CAPABILITIES:
        raise Conflict(f"{name!r} is a built-in role and cannot be redefined")
    capabilities = check_capabilities(body.capabilities)
    await _access(state).put_role(name, capabilities, int(state.clock() * 1000))
    await state.rooms.load_roles()
    return _role_out(state, name)


async def delete_role(state: AppState, name: str) -> None:
    if name in ROLE_CAPABILITIES:
        raise Conflict(f"{name!r} is a built-in role")
    if not await _access(state).delete_role(name):
        raise NotFound(f"no custom role {name!r}")
    await state.rooms.load_roles()


async def list_audit(
    state: AppState,
    session_id: str,
    limit: int,
    after: int,
    kind: str | None,
    actor: str | None,
) -> AuditList:
    """The session's audit records after id ``after``, oldest first."""
    if await state.store.get_session(session_id) is None:
        raise NotFound(f"no session {session_id!r}")
    rows = await _access(state).list_audit(
        session_id, limit=limit, after=after, kinds=[kind] if kind else [], actor=actor
    )
    return AuditList(
        records=[
            AuditRecordOut(id=r.id, at=r.at, kind=r.kind, actor=r.actor, data=r.data) for r in rows
        ],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/audit",
        list_audit,
        "The session's audit log: model calls, tool calls, membership changes, refusals",
        response=AuditList,
        errors=(404,),
        query=(QueryParam("limit", 1, 500, 100), QueryParam("after", 0, 10**9, 0)),
        query_text=(QueryText("kind", 32), QueryText("actor", 200)),
        capability=Capability.READ_AUDIT,
    ),
    Operation(
        "GET", "/api/v1/roles", list_roles, "Roles and their capabilities", response=RoleList
    ),
    Operation(
        "PUT",
        "/api/v1/roles/{name}",
        put_role,
        "Define or redefine a custom role",
        body=RolePut,
        response=RoleOut,
        errors=(409,),
    ),
    Operation(
        "DELETE",
        "/api/v1/roles/{name}",
        delete_role,
        "Delete a custom role nobody holds",
        status=204,
        errors=(404, 409),
    ),
]
