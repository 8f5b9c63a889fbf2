"""REST routes of what every model call is given: facts, pins, and a preview of the input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

from parley.authz.roles import Capability
from parley.authz.scope import RunScope
from parley.server.http.models import (
    ContextPreview,
    FactPut,
    FactsOut,
    PinCreate,
    PinsOut,
    PreviewExcluded,
    PreviewMessage,
    PreviewSummary,
    Strict,
)
from parley.server.http.rest import (
    Caller,
    Encoded,
    Operation,
    QueryStr,
    audit_refusal,
    path_pattern,
    read_paid_after,
    spend_command_everywhere,
    spend_read,
)
from parley.server.http.sessions import SESSION_ERRORS
from parley.server.runtime.room import SessionRoom
from parley.server.state import AppState
from parley.session.commands import FACT_KEY
from parley.session.context import BuiltContext
from parley.session.errors import Conflict, Forbidden
from parley.session.history import Excluded
from parley.session.queue_root import not_given_yet, queue_of
from parley.session.schema import SessionDocument


async def list_facts(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """Every fact. A member's read spends their read budget by its bytes, as every read
    made anew does: 429 ``rate_limited`` past it."""
    # Review RV40-F1: up to the facts' share of the window, some 200 kB at a large one, was
    # read in a loop unbudgeted.

    async def answer() -> bytes:
        _, doc = await state.rooms.committed(session_id)
        return FactsOut(facts=doc.fact_map()).model_dump_json().encode()

    room = await state.rooms.current(session_id)
    return await read_paid_after(state, room, caller.user_id, answer)


async def put_fact(
    state: AppState, session_id: str, key: str, body: FactPut, caller: Caller
) -> Encoded:
    room = await state.rooms.get(session_id)
    # Its answer lists every fact (up to the facts' share of the window): paid from the
    # member's read budget as a read of the list is, so a member whose budget is spent is
    # refused before anything is written (review RV42-F3: answers charged only after were
    # sent at 11 times the budget, as fast as the command rate let the changes go).
    spend_read(state, room, caller.user_id, 1)
    await spend_command_everywhere(state, room, caller.user_id)
    write = {"op": "set_fact", "key": key, "value": body.value, "author": caller.user_id or ""}
    result = await state.rooms.change(room, write)
    answer = FactsOut(facts=result["facts"]).model_dump_json().encode()
    room.settle_read(caller.user_id, 1, [answer])
    return Encoded(answer)


async def delete_fact(state: AppState, session_id: str, key: str, caller: Caller) -> None:
    """Remove a fact by the socket's ``fact`` rule: a fact not set is already as asked."""
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)
    write = {"op": "set_fact", "key": key, "value": None, "author": caller.user_id or ""}
    await state.rooms.change(room, write)


async def list_pins(state: AppState, session_id: str, caller: Caller) -> Encoded:
    """The pinned entries' ids; a member's read spends their read budget, as the facts'."""

    async def answer() -> bytes:
        _, doc = await state.rooms.committed(session_id)
        return PinsOut(pins=doc.pinned()).model_dump_json().encode()

    room = await state.rooms.current(session_id)
    return await read_paid_after(state, room, caller.user_id, answer)


async def create_pin(state: AppState, session_id: str, body: PinCreate, caller: Caller) -> PinsOut:
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)
    write = {"op": "pin", "entry_id": body.entry_id, "pinned": True, "author": caller.user_id or ""}
    result = await state.rooms.change(room, write)
    return PinsOut(pins=result["pins"])  # ids only: a few kB at most


async def delete_pin(state: AppState, session_id: str, entry_id: str, caller: Caller) -> None:
    """Unpin by the socket's ``unpin`` rule: an unknown entry is not found, an entry not
    pinned is already as asked."""
    room = await state.rooms.get(session_id)
    await spend_command_everywhere(state, room, caller.user_id)
    write = {"op": "pin", "entry_id": entry_id, "pinned": False, "author": caller.user_id or ""}
    await state.rooms.change(room, write)


# Folds ahead of one preview at most, each followed by a read of the session as it is then:
# past them (the session's grants changed under every one), the build folds what is left.
MAX_FOLDS_AHEAD = 3


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a preview for a member builds, judged of the session as it is now: the prompts
    of the run that would answer them, the scope of what they read and use, and the
    members' grants (what the kept previews are kept by)."""

    prompt_ids: tuple[str, ...]
    scope: RunScope
    grants: object
    # What the call will be given that is no part of the story yet (``not_given_yet``).
    not_given_yet: tuple[Excluded, ...] = ()


def _asked(room: SessionRoom, doc: SessionDocument, user_id: str) -> _Asked:
    """The next model call for ``user_id`` if it started now: the run that takes their
    next waiting prompt, or the history alone."""
    if user_id not in room.membership.members:
        raise Conflict(f"{user_id!r} is not a member of this session")
    # The queue as the document shows it: the running node's committed plan, the same on
    # every node (a read replica has no queue of its own).
    queue = queue_of(doc, room.queue.limits)
    waiting = next((p for p in queue.pending() if p.author == user_id), None)
    runs = [] if waiting is None else queue.runs_to(waiting.id)  # the last takes it
    prompt_ids: tuple[str, ...] = runs[-1].ids if runs else ()
    scope = room.runs.scope_for(
        [user_id] if not prompt_ids else [doc.entry(p).author for p in prompt_ids], preview=True
    )
    pending = not_given_yet(doc, queue.running, runs[:-1])
    return _Asked(prompt_ids, scope, room.membership.grants_key(), tuple(pending))


CONTEXT_PATH = "/api/v1/sessions/{session_id}/context"


async def preview_context(
    state: AppState, session_id: str, user_id: str, caller: Caller
) -> Encoded:
    """Exactly what the next model call for ``user_id`` would be given, if it started now:
    the run that takes the user's next waiting prompt, or the history alone. A member may
    preview only their own."""
    if caller.user_id is not None and caller.user_id != user_id:
        # Audited as every refusal is (review RV40-F4: this one was not).
        reason = "a member may preview only their own model input"
        room = await state.rooms.current(session_id)
        await audit_refusal(state, room, caller, f"GET {CONTEXT_PATH}", reason)
        raise Forbidden(reason)
    # The document as committed (review RA-4): a write under way is not previewed, so no
    # node answers what a failed write takes back, nor older after another node answered.
    room, doc = await state.rooms.committed(session_id, kept=True)  # read before an await
    asked = _asked(room, doc, user_id)
    # A member's preview spends their read budget by what it costs (review: it was
    # unbudgeted, then charged only the model input's characters: a viewer's loops of
    # previews of a long session, 368 KB and 40-400 ms of CPU each, made every other
    # session's replies 13 times slower). What is spent is paid after: first its
    # answer's bytes, and when built anew its build's (``SessionRoom.charge_build``); a
    # budget in debt builds nothing, and ``preview`` keeps what one state of the session
    # built, so a page asking again of the same state costs only its answer.
    spend_read(state, room, caller.user_id, 1)
    kept = room.context.kept_preview(doc, asked.prompt_ids, asked.scope, asked.grants)
    body = None if kept is None else kept.answers.get(user_id)
    if body is not None:
        room.charge_read(caller.user_id, len(body))
        return Encoded(body)
    # What is built or encoded anew is paid by the session as a whole too: members'
    # previews each within their own budget took the loop together (review B2-2: ten
    # viewers of one session, 30 ms of encoding per cached 320 KB answer, held every
    # client's requests at 0.5-0.8 s), each member from their share of it (review RG:
    # one member's loop of previews left the others none). A kept answer is only sent.
    refusal = room.preview_work_refusal(caller.user_id)
    if refusal is not None:
        raise refusal
    # A build in a fold not folded yet (a scope of the member's own, or one a restriction
    # changed on an old entry rolled back) folded the history in one block (20,000
    # entries: 0.5 s): it is folded ahead in steps first. Then the session is read again,
    # and what the preview builds judged again, as of now: the build is made with no await
    # after that, so a grant taken away meanwhile is in force in it.
    for _ in range(MAX_FOLDS_AHEAD):
        if kept is not None or room.context.ready(asked.prompt_ids, asked.scope, doc):
            break
        await asyncio.sleep(0)  # ``ready`` took this turn's step
        await room.context.fold_ahead(asked.prompt_ids, asked.scope, doc=doc)
        room, doc = await state.rooms.committed(session_id, kept=True)
        asked = _asked(room, doc, user_id)
        kept = room.context.kept_preview(doc, asked.prompt_ids, asked.scope, asked.grants)
    fresh = kept is None
    kept = room.context.preview(doc, asked.prompt_ids, asked.scope, asked.grants)
    body = kept.answers.get(user_id)  # encoded meanwhile, for another request of theirs
    if body is not None:
        room.charge_read(caller.user_id, len(body))
        return Encoded(body)
    pending = [x.entry_id for x in asked.not_given_yet]
    pending_tokens = room.context.not_given_tokens(doc, pending, asked.scope)
    body = await encode_preview(
        user_id, asked.prompt_ids, kept.build, asked.not_given_yet, pending_tokens
    )
    kept.keep(user_id, body)
    built = len(doc.entries()) if fresh else 0
    room.spend_preview_work(caller.user_id, room.charge_build(caller.user_id, built, len(body)))
    return Encoded(body)


# Messages (or exclusions) of a preview validated and encoded between two turns of the
# event loop: about 10 ms of it.
ITEMS_PER_TURN = 200


async def encode_preview(
    user_id: str,
    prompt_ids: tuple[str, ...],
    built: BuiltContext,
    not_given_yet: Iterable[Excluded] = (),
    pending_tokens: int = 0,
) -> bytes:
    """The preview of ``built`` for ``user_id`` as JSON (``ContextPreview``), listing in its
    exclusions after ``built``'s what the call will be given that the story does not hold
    yet (``not_given_yet``: the run in flight, the runs before the member's), and what they
    add as they stand now (``pending_tokens``), apart from ``built``'s tokens. Its messages
    and exclusions, one per history entry at most, are validated and encoded a few at a
    time, the loop's other work between: 20,000 of a long session's held it 0.3-0.8 s in
    one block (review RN-3). They are put in the answer's empty lists, which come first
    under their own keys (a key's quotes inside a string are escaped)."""
    request = built.request
    messages = await _encoded(
        PreviewMessage(
            role=m.role,
            author=m.author,
            authors=list(m.authors),
            content=m.content,
            tokens=tokens,
            answering=index in request.answering,
        )
        for index, (m, tokens) in enumerate(
            zip(request.messages, built.tokens_per_message, strict=True)
        )
    )
    excluded = await _encoded(
        PreviewExcluded(entry_id=x.entry_id, reason=x.reason)
        for x in chain(built.excluded, not_given_yet)
    )
    head = _preview(user_id, prompt_ids, built, pending_tokens).model_dump_json().encode()
    head = head.replace(b'"messages":[]', b'"messages":[' + messages + b"]", 1)
    return head.replace(b'"excluded":[]', b'"excluded":[' + excluded + b"]", 1)


async def _encoded(items: Iterable[Strict]) -> bytes:
    """``items`` as the inside of a JSON array, the loop given back every
    ``ITEMS_PER_TURN`` (each is validated as it is made)."""
    pieces: list[bytes] = []
    for item in items:
        pieces.append(item.model_dump_json().encode())
        if len(pieces) % ITEMS_PER_TURN == 0:
            await asyncio.sleep(0)
    return b",".join(pieces)


def _preview(
    user_id: str, prompt_ids: tuple[str, ...], built: BuiltContext, pending_tokens: int
) -> ContextPreview:
    """The preview's head: everything but its messages and exclusions (``encode_preview``)."""
    request = built.request
    return ContextPreview(
        user_id=user_id,
        prompt_ids=list(prompt_ids),
        tokenizer=built.tokenizer,
        budget=built.budget,
        tokens=built.tokens,
        pending_tokens=pending_tokens,
        system=request.system,
        system_tokens=built.system_tokens,
        tools=[t.name for t in request.tools],
        tools_tokens=built.tools_tokens,
        opening_tokens=built.opening_tokens,
        messages=[],
        excluded=[],
        notes=built.notes,
        summary=None
        if built.summary is None
        else PreviewSummary(
            id=built.summary.id,
            from_seq=built.summary.from_seq,
            to_seq=built.summary.to_seq,
            entries=len(built.summary.covers),
            tokens=built.summary.tokens,
        ),
    )


# A fact's or a pin's change lets in every member who reads the session, as a socket does:
# the command is then judged as the socket's ``set_fact``, ``pin`` or ``unpin`` (its form,
# then the ``pin`` capability, then the session's state: ``session_writes``), so both doors
# give one answer (review: a viewer's over-long fact was ``forbidden`` here, judged by this
# route's capability first, and ``too_large`` on a socket).
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/facts",
        list_facts,
        "Session facts",
        capability=Capability.READ_SESSION,
        response=FactsOut,
        errors=(*SESSION_ERRORS, 429),
        with_caller=True,
    ),
    Operation(
        "PUT",
        "/api/v1/sessions/{session_id}/facts/{key}",
        put_fact,
        "Set a session fact (in every model input, one line, with who set it; 413 "
        "too_large past the pins' and facts' share of the window)",
        path_forms={"key": path_pattern(FACT_KEY.pattern)},
        capability=Capability.READ_SESSION,  # ``pin``: judged by the core
        body=FactPut,
        response=FactsOut,
        errors=(404, 429),
        with_caller=True,
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/facts/{key}",
        delete_fact,
        "Remove a session fact (204 also when it is not set: the socket's `fact` rule)",
        path_forms={"key": path_pattern(FACT_KEY.pattern)},
        capability=Capability.READ_SESSION,  # ``pin``: judged by the core
        status=204,
        errors=(404, 429),
        with_caller=True,
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/pins",
        list_pins,
        "Pinned entries",
        capability=Capability.READ_SESSION,
        response=PinsOut,
        errors=(*SESSION_ERRORS, 429),
        with_caller=True,
    ),
    Operation(
        "POST",
        "/api/v1/sessions/{session_id}/pins",
        create_pin,
        "Pin an entry (in every model input; 413 too_large past the pins' and facts' share "
        "of the window; 409 conflict for a reply or tool step still being written)",
        capability=Capability.READ_SESSION,  # ``pin``: judged by the core
        body=PinCreate,
        response=PinsOut,
        status=201,
        location="/api/v1/sessions/{session_id}/pins/{entry_id}",
        errors=(404, 409, 429),
        with_caller=True,
    ),
    Operation(
        "DELETE",
        "/api/v1/sessions/{session_id}/pins/{entry_id}",
        delete_pin,
        "Unpin an entry (204 also when it is not pinned; 404 for an unknown entry: the "
        "socket's `unpin` rule)",
        capability=Capability.READ_SESSION,  # ``pin``: judged by the core
        status=204,
        errors=(404, 429),
        with_caller=True,
    ),
    Operation(
        "GET",
        CONTEXT_PATH,
        preview_context,
        "Preview the next model input for a member",
        capability=Capability.READ_SESSION,
        with_caller=True,
        response=ContextPreview,
        errors=(404, 409, 429),
        query_str=(QueryStr("user_id"),),
    ),
]
