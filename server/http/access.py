"""REST routes of permissions: custom roles, documents with readers, tools, the audit log."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence

from parley.authz.policy import Read, Readers, Subject, check_readers, decide
from parley.authz.roles import (
    ROLE_CAPABILITIES,
    ROLE_NAME,
    Capability,
    Role,
    check_capabilities,
    check_role_name,
    tool_capability,
)
from parley.server.http.cursor import PLACE_CURSOR, make_place_cursor, page_start
from parley.server.http.members import revocations_in_force
from parley.server.http.models import RoleList, RoleOut, RolePut
from parley.server.http.resource_models import (
    TOOL_NAME,
    AuditList,
    AuditRecordOut,
    DocumentCreate,
    DocumentList,
    DocumentOut,
    PrivateOut,
    ReadersIn,
    ToolCreate,
    ToolList,
    ToolOut,
)
from parley.server.http.rest import (
    MAX_ROW_ID,
    Caller,
    Encoded,
    Operation,
    QueryParam,
    QueryStr,
    path_pattern,
    read_paid_after,
    spend_command_everywhere,
    spend_read,
)
from parley.server.outbound.targets import url_form_problem
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.tools import new_secret
from parley.server.state import AppState
from parley.server.store.access import AccessStore
from parley.server.store.access_rows import AuditPage, DocumentRow, DocumentSizes, ToolRow
from parley.server.store.horizon import Place
from parley.server.store.link_tokens import by_readers
from parley.session.core.audit_view import shown_record
from parley.session.documents import SEARCH_DOCUMENTS
from parley.session.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge


def _access(state: AppState) -> AccessStore:
    return AccessStore(state.store)


def _role_out(state: AppState, name: str) -> RoleOut:
    return RoleOut(
        name=name,
        builtin=name in Role.__members__.values(),
        capabilities=sorted(state.rooms.roles.capabilities(name)),
    )


async def list_roles(state: AppState) -> RoleList:
    await state.rooms.current_access()
    return RoleList(roles=[_role_out(state, name) for name in state.rooms.roles.names()])


async def put_role(state: AppState, name: str, body: RolePut) -> RoleOut:
    """Define or redefine a custom role; members holding it get the new set at once, and
    the tokens from invite links whose maker it leaves unable to make them are revoked."""
    check_role_name(name)
    if name in ROLE_CAPABILITIES:
        raise Conflict(f"{name!r} is a built-in role and cannot be redefined")
    capabilities = check_capabilities(body.capabilities)
    revoked = await _access(state).put_role(name, capabilities, int(state.clock() * 1000))
    await state.rooms.access_changed()
    await revocations_in_force(state, revoked)
    return _role_out(state, name)


async def delete_role(state: AppState, name: str) -> None:
    if name in ROLE_CAPABILITIES:
        raise Conflict(f"{name!r} is a built-in role")
    if not await _access(state).delete_role(name):
        raise NotFound(f"no custom role {name!r}")
    await state.rooms.access_changed()


def _document_out(row: DocumentRow, *, text: bool) -> DocumentOut:
    # Not validated again: a row holds what its attach validated (a list's thousands of
    # reader names each judged anew took most of its 0.5 s, review RL-2).
    readers = ReadersIn.model_construct(
        users=sorted(row.readers.users), roles=sorted(row.readers.roles)
    )
    return DocumentOut.model_construct(
        id=row.id,
        title=row.title,
        readers=readers,
        chars=row.length,
        created_at=row.created_at,
        text=row.text if text else None,
    )


async def create_document(
    state: AppState, session_id: str, body: DocumentCreate, caller: Caller
) -> DocumentOut:
    """Attach a document; only its readers' runs can find it with ``search_documents``."""
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)  # a write and an audit record
    if len(body.text) > state.settings.max_document_chars:
        raise TooLarge(f"text: at most {state.settings.max_document_chars} characters")
    check_readers(body.readers.users, body.readers.roles)
    document_id = secrets.token_hex(8)
    readers = Readers(document_id, frozenset(body.readers.users), frozenset(body.readers.roles))
    row = DocumentRow(
        document_id, session_id, body.title, body.text, readers, int(state.clock() * 1000)
    )
    await state.rooms.current_access()  # the roles as committed
    roles = state.rooms.roles
    # The reader lists as of the attach's commit (its own among them): read in its
    # transaction, under the session's lock, as a membership change reads them.
    revoked = await _access(state).add_document(
        row,
        state.settings.max_documents_per_session,
        lambda lists: by_readers(roles, lists),
        caller.actor,
    )
    await revocations_in_force(state, revoked)
    await room.writer.audit(
        "document",
        caller.actor,
        {"added": document_id, "readers": readers.to_json()},  # a title may say too much
    )
    return _document_out(row, text=False)


# Bytes of a list's documents encoded between two turns of the event loop (a few ms of it).
LISTED_BYTES_PER_TURN = 256 * 1024


async def document_list_json(rows: Sequence[DocumentRow]) -> bytes:
    """``rows`` as ``DocumentList``'s JSON (without their texts), giving the loop back every
    ``LISTED_BYTES_PER_TURN`` bytes encoded: 100 documents' reader lists at their bounds are
    22 MB, about 0.3 s to encode."""
    parts: list[bytes] = []
    since_turn = 0
    for row in rows:
        parts.append(_document_out(row, text=False).model_dump_json().encode())
        since_turn += len(parts[-1])
        if since_turn >= LISTED_BYTES_PER_TURN:
            since_turn = 0
            await asyncio.sleep(0)
    return b'{"documents":[' + b",".join(parts) + b"]}"


# What a document adds to a list's JSON besides its id, title and reader list: the keys and
# punctuation, its two numbers (20 characters each at most: 64 bits and a sign) and a
# comma; and the most the list adds around its documents.
LISTED_DOCUMENT_FRAME_BYTES = (
    len(b'{"id":"","title":"","readers":,"chars":,"created_at":,"text":null},') + 2 * 20
)
LIST_FRAME_BYTES = 64


def listed_bytes_bound(sizes: DocumentSizes) -> int:
    """The most a list of documents of ``sizes`` can be as JSON (``document_list_json``): a
    character of an id or title as up to 6 bytes (``\\u001f``), a reader list as long as
    it is stored (``json.dumps``: ASCII with spaces, so never shorter than the list's
    compact UTF-8 of it)."""
    return (
        LIST_FRAME_BYTES
        + sizes.count * LISTED_DOCUMENT_FRAME_BYTES
        + 6 * sizes.head_chars
        + sizes.reader_chars
    )


async def list_documents(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """The documents the caller may read (all of them for the admin), without their text.
    A member's list spends their read budget by its bytes, as one document's read does:
    their reader lists make it up to 22 MB (review RL-2: unbudgeted, a viewer's loop of
    lists held every session on the node 1.3 s a call). It is paid before the store is
    read by the most it can cost, from the documents' sizes the store gives with their
    count (FX74: their first was paid 1.3 MB a document, so in a session of 13 the whole
    burst until made), or by what their last list cost if less (and what was added since);
    each is settled to its bytes once made."""
    room = await state.rooms.current(session_id)
    user_id = caller.user_id
    last_lists = state.document_lists.setdefault(room, {})
    # Paid before the store is read (at most the burst, which is what such a read takes):
    # a refused one reads nothing, and of lists asked at once on several connections one
    # is made, not each against one budget.
    least = most = 1
    if user_id is not None:
        most = listed_bytes_bound(await _access(state).document_sizes(session_id))
        least = most
        if user_id in last_lists:  # less for a member who may read few of many documents
            size, most_then = last_lists[user_id]
            least = min(most, size + max(most - most_then, 0))
        least = min(least, state.settings.read_burst_bytes)

    async def answer() -> bytes:
        rows = await _access(state).list_documents(session_id, texts=False)
        if user_id is not None:  # judged all at once, as of now; then encoded in steps
            subject = room.subject(user_id)
            rows = [r for r in rows if decide(subject, Read((r.readers,))).allowed]
        body = await document_list_json(rows)
        if user_id is not None:
            last_lists[user_id] = (len(body), most)
        return body

    return await read_paid_after(state, room, user_id, answer, least=least)


async def _readable_head(
    state: AppState, room: SessionRoom, document_id: str, caller: Caller
) -> DocumentRow:
    """The document's row without its text, if the caller may read it (the admin may read
    every one); ``NotFound`` alike for one that is not there and one they may not read."""
    heads = await _access(state).list_documents(room.session_id, texts=False, only=document_id)
    head = heads[0] if heads else None
    if head is None or not (
        caller.user_id is None
        or decide(room.subject(caller.user_id), Read((head.readers,))).allowed
    ):
        raise NotFound(f"no document {document_id!r} you may read")
    return head


async def get_document(
    state: AppState, session_id: str, document_id: str, caller: Caller
) -> Encoded:
    """One document with its text, which spends a member's read budget by the answer's
    bytes; 404 also when the caller may not read it."""
    room = await state.rooms.current(session_id)
    # Judged, and charged its characters (its bytes are at least as many), before its text
    # is loaded (review RJ-2: a refused read cost the load).
    head = await _readable_head(state, room, document_id, caller)

    async def answer() -> bytes:
        row = await _access(state).get_document(session_id, document_id)
        if row is None:  # detached meanwhile
            raise NotFound(f"no document {document_id!r} you may read")
        return _document_out(row, text=True).model_dump_json().encode()

    return await read_paid_after(state, room, caller.user_id, answer, least=head.length)


async def delete_document(
    state: AppState, session_id: str, document_id: str, caller: Caller
) -> None:
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)
    # A document the caller may not read is absent to them here as on every other route
    # (review RM-2: an owner detached one whose GET answered 404).
    await _readable_head(state, room, document_id, caller)
    if not await _access(state).delete_document(session_id, document_id):
        raise NotFound(f"no document {document_id!r} you may read")
    state.rooms.document_search.drop(session_id, document_id)
    await room.writer.audit("document", caller.actor, {"deleted": document_id})


def _tool_out(row: ToolRow, *, secret: bool) -> ToolOut:
    return ToolOut(
        name=row.name,
        description=row.description,
        parameters=row.parameters,
        url=row.url,
        capability=row.capability,
        timeout_s=row.timeout_ms / 1000,
        created_at=row.created_at,
        secret=row.secret if secret else None,
    )


async def create_tool(state: AppState, body: ToolCreate) -> ToolOut:
    """Register a webhook tool; the answer carries its signing secret, once. Its URL is
    parsed as each call parses it (its addresses are checked at each call)."""
    if body.name == SEARCH_DOCUMENTS.name:
        raise Conflict(f"{body.name!r} is built in")
    problem = url_form_problem(body.url)
    if problem is not None:
        raise InvalidInput(f"url: {problem}")
    capability = check_capabilities([body.capability or tool_capability(body.name)])
    row = ToolRow(
        body.name,
        body.description,
        body.parameters,
        body.url,
        next(iter(capability)),
        new_secret(),
        int(body.timeout_s * 1000),
        int(state.clock() * 1000),
    )
    await _access(state).add_tool(row)
    await state.rooms.access_changed()
    return _tool_out(row, secret=True)


async def list_tools(state: AppState) -> ToolList:
    await state.rooms.current_access()
    return ToolList(tools=[_tool_out(t, secret=False) for t in state.rooms.webhooks])


async def delete_tool(state: AppState, name: str) -> None:
    if not await _access(state).delete_tool(name):
        raise NotFound(f"no tool {name!r}")
    await state.rooms.access_changed()


async def get_private(state: AppState, session_id: str, entry_id: str, caller: Caller) -> Encoded:
    """The full text behind a placeholder, for a caller who may read every source of it.
    A member's read spends their read budget by the answer's bytes, as the transcript's
    does (FX67: it spent none, and restricted texts could be read in a loop)."""
    # Committed text only, with no wait for a write under way (as ``RoomRegistry.committed``
    # waits for the document): the running node keeps such text once its write committed
    # (``SessionWriter._keep_private``), another node reads it from the store.
    room = await state.rooms.current(session_id, kept=True)
    item = room.context.private.get(entry_id)
    if item is None:
        raise NotFound(f"entry {entry_id!r} has no restricted text")
    if caller.user_id is not None:
        reader = await state.rooms.reader(room, caller.user_id)
        allowed = decide(reader, Read(item.restriction))
        await room.writer.require(allowed, caller.user_id, f"read restricted {entry_id}")
    out = PrivateOut(
        entry_id=entry_id,
        kind="message" if item.kind == "message" else "tool" if item.kind == "tool" else "reply",
        text=item.text,
        readers=[r.to_json() for r in item.restriction],
    )
    body = out.model_dump_json().encode()
    # Made before it is paid: its text is in memory, and its bytes are then exact.
    spend_read(state, room, caller.user_id, len(body))
    return Encoded(body)


async def list_audit(
    state: AppState,
    session_id: str,
    limit: int,
    after: int,
    kind: str | None,
    actor: str | None,
    caller: Caller,
    cursor: Place | None = None,
) -> Encoded:
    """The session's audit records after ``cursor`` (or ``after``, an id), oldest first, as
    the caller may read them: a model call's token counts only for a reader who may read
    all it drew on (a side-thread's: its owner); a page ends at ``limit`` records or
    ``audit_page_max_bytes`` (``audit_page_json``). A member's page spends one command of
    their budget and their read budget by its bytes, as the member list's does: 429
    ``rate_limited`` past either."""
    start = page_start(after, cursor)
    if await state.store.get_session(session_id) is None:
        raise NotFound(f"no session {session_id!r}")

    async def answer(reader: Subject | None) -> bytes:
        page = await _access(state).audit_page(
            session_id,
            limit=limit,
            after=start,
            kinds=[kind] if kind else [],
            actor=actor,
            max_bytes=max_bytes,
        )
        return audit_page_json(page, reader, max_bytes)

    max_bytes = state.settings.audit_page_max_bytes
    if caller.user_id is None:  # the admin key reads unbudgeted
        return Encoded(await answer(None))
    room = await state.rooms.current(session_id)
    reader = room.subject(caller.user_id)
    if reader is None:  # removed since the door let them in
        raise Forbidden("you are not a member of this session")
    # Built anew for each page, from records that only accumulate (a model call's lists
    # its context): review RJ-1, one owner's unbudgeted 4 MB pages on a few connections
    # held another session's acks at 100-510 ms. A filter matching little still walks
    # the log, hence the command too.
    await spend_command_everywhere(state, room, caller.user_id)
    return await read_paid_after(state, room, caller.user_id, lambda: answer(reader))


# The bytes of an audit page's JSON around its records: the keys, the largest ``next_after``
# and ``next_cursor`` (base64url of two numbers of 63 bits).
_PAGE_FRAME_BYTES = 160


def audit_page_json(page: AuditPage, reader: Subject | None, max_bytes: int) -> bytes:
    """``page`` as ``reader`` reads it (None: the admin key), as ``AuditList``'s JSON of at
    most ``max_bytes``: the records that fit, and at least the first, however large (a page
    that skipped it would leave the log unreadable past it). ``next_after`` is given
    whenever records follow the last one listed: the page stopped at its limit or its bytes
    or ``page.more``."""
    parts: list[bytes] = []
    room = max_bytes - _PAGE_FRAME_BYTES
    rows = page.rows
    for n, r in enumerate(rows):
        shown = shown_record(r.kind, r.data, reader)
        out = AuditRecordOut(
            id=r.id,
            at=r.at,
            kind=r.kind,
            actor=r.actor,
            data=shown.data,
            withheld=list(shown.withheld),
        )
        encoded = out.model_dump_json().encode()
        room -= len(encoded) + 1  # and its comma
        if parts and room < 0:
            rows = rows[:n]
            break
        parts.append(encoded)
    more = page.more or len(rows) < len(page.rows)
    last = rows[-1] if rows else None
    next_after = last.id if more and last is not None else None
    next_cursor = None if last is None else make_place_cursor(Place(last.xid, last.id))
    return b"".join(
        (
            b'{"records":[',
            b",".join(parts),
            b'],"next_after":',
            json.dumps(next_after).encode(),
            b',"next_cursor":',
            json.dumps(next_cursor).encode(),
            b"}",
        )
    )


DOCUMENTS = "/api/v1/sessions/{session_id}/documents"
OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/api/v1/tools",
        create_tool,
        "Register a webhook tool (its signing secret is in the answer, once)",
        body=ToolCreate,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
        response=ToolOut,
        status=201,
        location="/api/v1/tools/{name}",
        errors=(409,),
    ),
    Operation("GET", "/api/v1/tools", list_tools, "Registered webhook tools", response=ToolList),
    Operation(
        "DELETE",
        "/api/v1/tools/{name}",
        delete_tool,
        "Remove a tool",
        status=204,
        errors=(404,),
        path_forms={"name": path_pattern(TOOL_NAME)},
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/entries/{entry_id}/private",
        get_private,
        "The restricted text behind a placeholder (tool step or reply), or of a message "
        "shared back from a side-thread",
        response=PrivateOut,
        errors=(404, 429),
        capability=Capability.READ_SESSION,
        with_caller=True,
    ),
    Operation(
        "POST",
        DOCUMENTS,
        create_document,
        "Attach a document with its readers",
        body=DocumentCreate,
        body_bytes=None,  # texts: up to PARLEY_MAX_REQUEST_BYTES
        response=DocumentOut,
        status=201,
        location=DOCUMENTS + "/{id}",
        errors=(404, 409),
        capability=Capability.MANAGE_SESSION,
        with_caller=True,
    ),
    Operation(
        "GET",
        DOCUMENTS,
        list_documents,
        "The documents the caller may read, without their text (which spends a member's "
        "read budget)",
        response=DocumentList,
        errors=(404, 429),
        capability=Capability.READ_SESSION,
        with_caller=True,
    ),
    Operation(
        "GET",
        DOCUMENTS + "/{document_id}",
        get_document,
        "One document the caller may read, with its text (which spends a member's read budget)",
        response=DocumentOut,
        errors=(404, 429),
        capability=Capability.READ_SESSION,
        with_caller=True,
    ),
    Operation(
        "DELETE",
        DOCUMENTS + "/{document_id}",
        delete_document,
        "Detach a document",
        status=204,
        errors=(404,),
        capability=Capability.MANAGE_SESSION,
        with_caller=True,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/audit",
        list_audit,
        "The session's audit log: model calls, tool calls, membership changes, refusals",
        response=AuditList,
        errors=(404, 429),
        query=(QueryParam("limit", 1, 500, 100), QueryParam("after", 0, MAX_ROW_ID, 0)),
        query_str=(
            PLACE_CURSOR,
            QueryStr("kind", 32, required=False),
            QueryStr("actor", 200, required=False),
        ),
        capability=Capability.READ_AUDIT,
        with_caller=True,
    ),
    Operation(
        "GET", "/api/v1/roles", list_roles, "Roles and their capabilities", response=RoleList
    ),
    Operation(
        "PUT",
        "/api/v1/roles/{name}",
        put_role,
        "Define or redefine a custom role",
        path_forms={"name": path_pattern(ROLE_NAME.pattern)},
        body=RolePut,
        response=RoleOut,
        errors=(409,),
    ),
    Operation(
        "DELETE",
        "/api/v1/roles/{name}",
        delete_role,
        "Delete a custom role nobody holds",
        path_forms={"name": path_pattern(ROLE_NAME.pattern)},
        status=204,
        errors=(404, 409),
    ),
]
