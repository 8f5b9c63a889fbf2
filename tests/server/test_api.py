"""The admin REST API on SQLite and PostgreSQL: sessions, members and tokens through the
routes' endpoints with no app around them (``Backend.request``); the key, the body limits,
the app's own paths and the OpenAPI document over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from parley.authz.tokens import verify_token
from parley.server.runtime.commands import dispatch
from parley.session.commands import MessageCommand
from parley.session.thread_commands import ThreadCloseCommand, ThreadOpenCommand
from tests.conftest import RunningServer
from tests.fake_model import FakeModel
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.harness import memory_settings


@pytest.fixture
async def rest(database_url: str) -> AsyncIterator[Backend]:
    """The REST routes and rooms on the real store of ``database_url``, with no app."""
    async with (
        sql_store(database_url) as store,
        backend(memory_settings(), store=store, model=FakeModel()) as b,
    ):
        yield b


async def test_session_lifecycle(rest: Backend) -> None:
    created = await rest.request("POST", "/api/v1/sessions", json={"title": "Incident 42"})
    assert created.status_code == 201
    session = created.json()
    assert session["title"] == "Incident 42" and session["last_seq"] == 0

    listed = (await rest.request("GET", "/api/v1/sessions")).json()
    assert [s["id"] for s in listed["sessions"]] == [session["id"]]
    assert listed["total"] == 1

    fetched = await rest.request("GET", f"/api/v1/sessions/{session['id']}")
    assert fetched.json() == session

    assert (await rest.request("DELETE", f"/api/v1/sessions/{session['id']}")).status_code == 204
    missing = await rest.request("GET", f"/api/v1/sessions/{session['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_cursor_pages_sessions_past_one_deleted_between_pages(rest: Backend) -> None:
    """Review (nothing lost): ``?offset=`` counts rows, so a session deleted before the
    next page moved the others down one and a reader paging by offset skipped one. The
    page's ``next_cursor`` is where its last session is, whatever is deleted before it."""
    for n in range(5):
        assert (await rest.request("POST", "/api/v1/sessions", json={"title": f"t{n}"})).is_success
    every = [s["id"] for s in (await rest.request("GET", "/api/v1/sessions")).json()["sessions"]]
    first = (await rest.request("GET", "/api/v1/sessions?limit=2")).json()
    assert [s["id"] for s in first["sessions"]] == every[:2] and first["next_cursor"]
    assert (await rest.request("DELETE", f"/api/v1/sessions/{every[0]}")).status_code == 204
    seen = [s["id"] for s in first["sessions"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = (await rest.request("GET", f"/api/v1/sessions?limit=2&cursor={cursor}")).json()
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
    assert seen == every  # none skipped, none twice
    for bad in ("nope!", "bm9wZQ", f"{first['next_cursor']}&offset=1"):
        refused = await rest.request("GET", f"/api/v1/sessions?cursor={bad}")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize(
    "position",
    [
        [10**30, "x"],
        [2**63, "x"],
        [-1, "x"],
        [1, ""],
        [1, "x" * 201],
        [True, "x"],
        [1, "\ud800"],  # a lone surrogate, as JSON's escape gives it
        [1, "a\udfff"],
        [1, "a\u0000b"],  # NUL
    ],
)
async def test_a_cursor_out_of_the_columns_range_is_refused_invalid(
    rest: Backend, position: list[object]
) -> None:
    """Review: a cursor's number past a 64-bit integer reached the database driver, which
    failed (500 on SQLite, 503 ``unavailable`` on PostgreSQL): a caller's input, not a
    fault of the server's. Likewise an id no column can hold (review RL-5: a lone
    surrogate was a 500 on SQLite, it or a NUL a 503 on PostgreSQL)."""
    raw = json.dumps(position).encode()
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    refused = await rest.request("GET", f"/api/v1/sessions?cursor={cursor}")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"


async def _page(rest: Backend, url: str, items: str, count: int) -> dict[str, Any]:
    """``url``'s page once it lists ``count`` items: on PostgreSQL an item is listed once
    every write transaction that began before it has ended (other tests' on this server
    too), a moment at most."""
    for _ in range(200):
        page: dict[str, Any] = (await rest.request("GET", url)).json()
        if len(page[items]) >= count:
            return page
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url}: {page}")


async def _read_on(rest: Backend, url: str, items: str, total: int) -> list[int]:
    """The ids a reader reads by ``url``'s ``next_cursor``, two at a time, to the end."""
    seen: list[int] = []
    query = "limit=2"
    while len(seen) < total:
        page = await _page(rest, f"{url}?{query}", items, min(2, total - len(seen)))
        seen += [item["id"] for item in page[items]]
        query = f"limit=2&cursor={page['next_cursor']}"
    last = (await rest.request("GET", f"{url}?{query}")).json()
    assert last[items] == [] and last["next_cursor"] is None  # the reader keeps its cursor
    return seen


async def test_the_audit_log_and_deliveries_read_on_by_their_cursor(database_url: str) -> None:
    """``next_cursor`` is where a page's last item is, its transaction's id with its own
    (``store.horizon``): read on from it, every item is listed once, in the list's order;
    on the last page too, so a reader polls with it. The older ``?after=`` (an id) reads
    on as before."""
    settings = memory_settings(webhook_allow_private=True)  # a subscription to 127.0.0.1
    async with (
        sql_store(database_url) as store,
        backend(settings, store=store, model=FakeModel()) as rest,
    ):
        hook = {"url": "http://127.0.0.1:9/", "events": ["member.added"]}
        made = await rest.request("POST", "/api/v1/webhooks", json=hook)
        assert made.status_code == 201, made.text
        sid = await rest.new_session({f"u{n}": "viewer" for n in range(5)})  # 5 of each
        for url, items in (
            (f"/api/v1/sessions/{sid}/audit", "records"),
            (f"/api/v1/webhooks/{made.json()['id']}/deliveries", "deliveries"),
        ):
            every = await _page(rest, url, items, 5)
            ids = [item["id"] for item in every[items]]
            assert len(ids) == 5 and every["next_after"] is None and every["next_cursor"]
            assert await _read_on(rest, url, items, 5) == ids
            later = await _page(rest, f"{url}?after={ids[1]}", items, 3)
            assert [item["id"] for item in later[items]] == ids[2:]
            # Any id the 64-bit columns hold (a billion was refused, and ids pass it).
            past = await _page(rest, f"{url}?after={2**63 - 1}", items, 0)
            assert past[items] == []
            refused = await rest.request("GET", f"{url}?after={2**63}")
            assert refused.status_code == 422, refused.text


@pytest.mark.parametrize("route", ["audit", "deliveries"])
@pytest.mark.parametrize(
    "query",
    [
        "cursor=nope!",
        "cursor=" + "A" * 65,
        "cursor=bm9wZQ",  # "nope"
        *(
            "cursor=" + base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=")
            for p in ([1, "x"], [-1, 1], [1, 2**63], [True, 1], [1.0, 1], [1, 2, 3], {"a": 1})
        ),
        "cursor=WzAsMV0&after=1",  # [0, 1] and an id: give one
        "cursor=WzAsMV0&cursor=WzAsMV0",
    ],
)
async def test_a_bad_cursor_is_refused_invalid_before_anything_is_read(
    rest: Backend, route: str, query: str
) -> None:
    """Judged with the query: invalid (422, as a bad ``?after=`` is), not the 404 of the
    session or the subscription that is not there, nor a fault of the database's."""
    url = {"audit": "/api/v1/sessions/none/audit", "deliveries": "/api/v1/webhooks/none/deliveries"}
    refused = await rest.request("GET", f"{url[route]}?{query}")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"


async def test_session_title_is_optional(rest: Backend) -> None:
    created = await rest.request("POST", "/api/v1/sessions")
    assert created.status_code == 201
    assert created.json()["title"] == ""


async def test_members_and_roles(rest: Backend) -> None:
    sid = await rest.new_session({"alice": "owner", "bob": "viewer"})
    base = f"/api/v1/sessions/{sid}/members"
    members = (await rest.request("GET", base)).json()["members"]
    assert {(m["user_id"], m["role"]) for m in members} == {("alice", "owner"), ("bob", "viewer")}

    changed = await rest.request("PUT", f"{base}/bob", json={"role": "editor"})
    assert changed.status_code == 200 and changed.json()["role"] == "editor"

    assert (await rest.request("DELETE", f"{base}/bob")).status_code == 204
    assert (await rest.request("DELETE", f"{base}/bob")).status_code == 404
    members = (await rest.request("GET", base)).json()["members"]
    assert [m["user_id"] for m in members] == ["alice"]


async def test_bad_member_input(rest: Backend) -> None:
    sid = await rest.new_session({})
    base = f"/api/v1/sessions/{sid}/members"
    bad_role = await rest.request("PUT", f"{base}/carol", json={"role": "admin"})
    assert bad_role.status_code == 422
    assert bad_role.json()["error"]["code"] == "invalid"
    extra = await rest.request("PUT", f"{base}/carol", json={"role": "viewer", "x": 1})
    assert extra.status_code == 422
    bad_user = await rest.request("PUT", f"{base}/bad%20user", json={"role": "viewer"})
    assert bad_user.status_code == 422
    unknown = await rest.request(
        "PUT", "/api/v1/sessions/nope/members/carol", json={"role": "viewer"}
    )
    assert unknown.status_code == 404


async def test_no_member_takes_the_name_the_admin_key_acts_under(rest: Backend) -> None:
    """Audit records, events (``by``) and webhooks name the admin key ``admin``: a member
    of that name would pass for it (an owner's changes read as the admin's)."""
    sid = await rest.new_session({})
    taken = await rest.request(
        "PUT", f"/api/v1/sessions/{sid}/members/admin", json={"role": "owner"}
    )
    assert taken.status_code == 422, taken.text
    assert taken.json()["error"]["code"] == "invalid"


async def test_tokens(rest: Backend) -> None:
    sid = await rest.new_session({"alice": "editor"})
    url = f"/api/v1/sessions/{sid}/tokens"
    minted = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 60})
    assert minted.status_code == 201
    body = minted.json()
    assert body["user_id"] == "alice" and body["role"] == "editor" and body["token"]
    not_member = await rest.request("POST", url, json={"user_id": "mallory"})
    assert not_member.status_code == 409
    assert not_member.json()["error"]["code"] == "conflict"
    unknown = await rest.request("POST", "/api/v1/sessions/nope/tokens", json={"user_id": "alice"})
    assert unknown.status_code == 404
    too_long = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 10**9})
    assert too_long.status_code == 422
    zero = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 0})
    assert zero.status_code == 422


async def _after(rest: Backend, sid: str, user: str, kind: str = "member_left") -> list[str]:
    """The kinds of ``user``'s events stored after the first event of ``kind`` (their
    ``member_left``, their ``member_changed``)."""
    events = await rest.store.events_after(sid, 0, 1000)
    changed = next(e.seq for e in events if e.kind == kind)
    return [e.kind for e in events if e.seq > changed and e.actor == user]


class HeldInForce:
    """Holds the member changes of ``room`` between their commit and their being put in
    force (``SessionRoom.reload_member``): ``stored`` once one is held, until ``release``."""

    def __init__(self, room: Any) -> None:
        self.stored, self.release = asyncio.Event(), asyncio.Event()
        reload_member = room.reload_member

        async def held(user_id: str) -> None:
            self.stored.set()
            await self.release.wait()
            await reload_member(user_id)

        room.reload_member = held


async def test_a_command_after_a_removal_is_stored_but_not_in_force_is_refused(
    rest: Backend,
) -> None:
    """Review RG-2 (one server): bob's removal was committed, then put in force in memory;
    a command of his judged in between, by the members in memory, was stored after his
    ``member_left`` (shown to everyone). Here the removal is held after its commit: bob's
    message is refused ``forbidden`` and stores nothing; ann's is taken."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    held = HeldInForce(s.room)
    removal = asyncio.create_task(rest.request("DELETE", f"/api/v1/sessions/{sid}/members/bob"))
    await asyncio.wait_for(held.stored.wait(), 10)
    late = await asyncio.wait_for(s.message("bob", "after my removal"), 10)
    held.release.set()
    assert (await removal).status_code == 204
    assert late["type"] == "error" and late["code"] == "forbidden", late
    assert await _after(rest, sid, "bob") == []
    assert (await s.message("ann", "still here"))["type"] == "ack"
    assert (await s.message("bob", "again"))["code"] == "forbidden"


async def test_a_command_after_a_role_change_is_stored_but_not_in_force_is_refused(
    rest: Backend,
) -> None:
    """Open item of RG-2 (one server): a role change that takes away posting had the gap a
    removal had: bob's message judged after his change to viewer was stored, before it
    was in force, by the role in memory, after his ``member_changed`` (shown to everyone).
    Here the change is held after its commit: his message is refused with the role's
    reason and stores nothing; his change back to editor is in force at once."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    held = HeldInForce(s.room)
    url = f"/api/v1/sessions/{sid}/members/bob"
    change = asyncio.create_task(rest.request("PUT", url, json={"role": "viewer"}))
    await asyncio.wait_for(held.stored.wait(), 10)
    late = await asyncio.wait_for(s.message("bob", "after my role change"), 10)
    held.release.set()
    assert (await change).status_code == 200
    assert late["type"] == "error" and late["code"] == "forbidden", late
    assert "viewer may not post message" in late["message"], late
    assert await _after(rest, sid, "bob", "member_changed") == []
    assert (await s.message("bob", "as a viewer"))["code"] == "forbidden"
    assert (await rest.request("PUT", url, json={"role": "editor"})).status_code == 200
    assert (await s.message("bob", "an editor again"))["type"] == "ack"


async def test_a_side_thread_command_after_a_removal_is_stored_but_not_in_force_is_refused(
    rest: Backend,
) -> None:
    """Open item of RG-2 (one server): closing or deleting one's side-thread was judged by
    the thread's owner alone, not by the membership: bob's close judged after his removal
    was stored, before it was in force, after his ``member_left``. It is refused
    ``forbidden`` (audited) and his thread stays as it was."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    opened = await s.send("bob", ThreadOpenCommand(s.next_id(), None, "mine"))
    thread_id = opened["thread_id"]
    held = HeldInForce(s.room)
    removal = asyncio.create_task(rest.request("DELETE", f"/api/v1/sessions/{sid}/members/bob"))
    await asyncio.wait_for(held.stored.wait(), 10)
    closing = ThreadCloseCommand(s.next_id(), thread_id, delete=False)
    late = await asyncio.wait_for(s.send("bob", closing), 10)
    held.release.set()
    assert (await removal).status_code == 204
    assert late["type"] == "error" and late["code"] == "forbidden", late
    (thread,) = await rest.store.load_threads(sid, "bob", texts=False)
    assert thread.status == "open"
    refused = await rest.store.access.list_audit(
        sid, limit=100, after=0, kinds=("refused",), actor="bob"
    )
    assert refused and "ThreadCloseCommand" in str(refused[-1].data), refused


async def test_a_command_of_a_token_revoked_before_its_commit_is_refused(rest: Backend) -> None:
    """Open item of RG-2: a command was judged by its token at the door alone. Bob's
    message over REST, let in with his token, is held before its write while the token is
    revoked (204: in force, its sockets closed): it was then stored. It is refused
    ``unauthenticated`` at its commit (audited) and stores nothing; bob, still a member,
    posts with another token."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    url = f"/api/v1/sessions/{sid}"
    issued = (await rest.request("POST", f"{url}/tokens", json={"user_id": "bob"})).json()
    carry_out = s.room.writer.carry_out
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(event: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(event, "actor", None) == "bob" and not reached.is_set():
            reached.set()  # judged at the door, its write not begun
            await release.wait()
        return await carry_out(event, *args, **kwargs)

    s.room.writer.carry_out = held  # type: ignore[method-assign]
    body = {"text": "sent before the revocation"}
    sent = asyncio.create_task(
        rest.request("POST", f"{url}/messages", json=body, token=issued["token"])
    )
    await asyncio.wait_for(reached.wait(), 10)
    assert (await rest.request("DELETE", f"{url}/tokens/{issued['jti']}")).status_code == 204
    release.set()
    answer = await asyncio.wait_for(sent, 10)
    assert answer.status_code == 401, answer.json()
    assert answer.json()["error"]["code"] == "unauthenticated"
    events = await rest.store.events_after(sid, 0, 1000)
    assert [e.kind for e in events if e.actor == "bob"] == []
    refused = await rest.store.access.list_audit(
        sid, limit=100, after=0, kinds=("refused",), actor="bob"
    )
    assert refused and "revoked" in str(refused[-1].data), refused
    other = (await rest.request("POST", f"{url}/tokens", json={"user_id": "bob"})).json()
    again = await rest.request("POST", f"{url}/messages", json=body, token=other["token"])
    assert again.status_code == 202, again.json()


async def _token_from_a_link(rest: Backend, sid: str, maker: str, user: str) -> str:
    """A client token of ``user`` exchanged from an invite link ``maker`` minted."""
    url = f"/api/v1/sessions/{sid}"
    makers = (await rest.request("POST", f"{url}/tokens", json={"user_id": maker})).json()
    minted = await rest.request(
        "POST", f"{url}/invites", json={"user_id": user}, token=makers["token"]
    )
    assert minted.status_code == 201, minted.json()
    secret = minted.json()["secret"]
    exchanged = await rest.request("POST", "/api/v1/invites/exchange", json={"invite": secret})
    assert exchanged.status_code == 200, exchanged.json()
    return str(exchanged.json()["token"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("DELETE", None), "was removed"),
        (("PUT", {"role": "editor"}), "may no longer"),
    ],
    ids=["maker-removed", "maker-lowered"],
)
async def test_a_command_of_a_link_token_is_judged_by_its_maker_at_its_commit(
    rest: Backend, change: tuple[str, Any], reason: str
) -> None:
    """A token from alice's link dies with her membership at authentication, and (the
    principle: a token from a link lives while its maker may still make that link) once
    she may no longer mint it. At the commit it was judged by its own revocation alone:
    carol's message, let in with it and held before its write while alice is removed, or
    lowered to a role that may not invite, was stored. It is refused ``unauthenticated``
    at its commit, audited, and stores nothing."""
    sid = await rest.new_session({"alice": "owner", "carol": "editor"})
    s = await rest.session(sid)
    url = f"/api/v1/sessions/{sid}"
    carol = await _token_from_a_link(rest, sid, "alice", "carol")
    carry_out = s.room.writer.carry_out
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(event: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(event, "actor", None) == "carol" and not reached.is_set():
            reached.set()  # judged at the door, its write not begun
            await release.wait()
        return await carry_out(event, *args, **kwargs)

    s.room.writer.carry_out = held  # type: ignore[method-assign]
    body = {"text": "sent before my maker's change"}
    sent = asyncio.create_task(rest.request("POST", f"{url}/messages", json=body, token=carol))
    await asyncio.wait_for(reached.wait(), 10)
    method, changed_to = change
    made = await rest.request(method, f"{url}/members/alice", json=changed_to)
    assert made.status_code in {200, 204}, made.json()
    release.set()
    answer = await asyncio.wait_for(sent, 10)
    assert answer.status_code == 401, answer.json()
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert reason in answer.json()["error"]["message"]
    events = await rest.store.events_after(sid, 0, 1000)
    assert [e.kind for e in events if e.actor == "carol"] == []
    refused = await rest.store.access.list_audit(
        sid, limit=100, after=0, kinds=("refused",), actor="carol"
    )
    assert refused and reason in str(refused[-1].data), refused
    me = await rest.request("GET", f"{url}/me", token=carol)
    assert me.status_code == 401, me.json()


def _hold_first_write(writer: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the next write of ``writer`` judged and not stored yet (its rows unwritten, the
    session's turn held): ``reached`` once it is there, until ``release``."""
    record = writer._record
    reached, release = asyncio.Event(), asyncio.Event()

    async def held_record(*args: Any, **kwargs: Any) -> None:
        if not reached.is_set():
            reached.set()
            await release.wait()
        await record(*args, **kwargs)

    writer._record = held_record
    return reached, release


def _queued_on(lock: asyncio.Lock) -> asyncio.Event:
    """Set once something waits for ``lock`` while it is held."""
    acquire, queued = lock.acquire, asyncio.Event()

    async def seen_acquire() -> bool:
        if lock.locked():
            queued.set()
        return await acquire()

    lock.acquire = seen_acquire  # type: ignore[method-assign]
    return queued


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set (at most 10 s: then fails)."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    assert any(e.is_set() for e in events)


async def test_a_command_judged_before_a_removal_commits_before_it(rest: Backend) -> None:
    """Review RG-2 (one server): bob's message, judged a member's, is held between its
    check and its commit while his removal is made: the removal waits for it (on
    PostgreSQL it committed first, and the message was stored after ``member_left``)."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    store = rest.store
    change_member, storing = store.change_member, asyncio.Event()

    async def seen_change(*args: Any, **kwargs: Any) -> Any:
        storing.set()
        return await change_member(*args, **kwargs)

    reached, release = _hold_first_write(s.room.writer)  # bob's message
    store.change_member = seen_change
    sent = asyncio.create_task(s.message("bob", "judged before my removal"))
    await asyncio.wait_for(reached.wait(), 10)
    queued = _queued_on(s.room.writer.document.lock)  # a write waits for bob's
    removal = asyncio.create_task(rest.request("DELETE", f"/api/v1/sessions/{sid}/members/bob"))
    await _first_of(storing, queued)  # the removal is stored, or waits for bob's write
    if storing.is_set() and rest.store.engine.dialect.name == "postgresql":
        await asyncio.wait_for(asyncio.shield(removal), 10)  # (before the fix: it commits)
    release.set()
    assert (await asyncio.wait_for(sent, 10))["type"] == "ack"
    assert (await asyncio.wait_for(removal, 10)).status_code == 204
    assert await _after(rest, sid, "bob") == []
    assert (await s.message("ann", "still here"))["type"] == "ack"


async def test_a_command_judged_before_a_revocation_commits_before_it(rest: Backend) -> None:
    """Open item of RG-2: bob's message sent with his token, judged, is held before its
    commit while the token is revoked: the revocation waits for it (it answered 204 first,
    and the message was stored after, on SQLite once the database lock let it)."""
    sid = await rest.new_session({"ann": "editor", "bob": "editor"})
    s = await rest.session(sid)
    url = f"/api/v1/sessions/{sid}"
    issued = (await rest.request("POST", f"{url}/tokens", json={"user_id": "bob"})).json()
    reached, release = _hold_first_write(s.room.writer)  # bob's message
    command = MessageCommand("b1", "judged before the revocation")
    claims = verify_token(rest.state.keys.signing_key, issued["token"], now=int(rest.state.clock()))
    sent = asyncio.create_task(dispatch(s.room, "bob", command, claims))
    await asyncio.wait_for(reached.wait(), 10)
    queued = _queued_on(s.room.writer.document.lock)
    revoked = asyncio.Event()
    revocation = asyncio.create_task(rest.request("DELETE", f"{url}/tokens/{issued['jti']}"))
    revocation.add_done_callback(lambda _: revoked.set())
    await _first_of(revoked, queued)  # answered, or waits for bob's write
    answered_first = revoked.is_set()
    release.set()
    assert json.loads(await asyncio.wait_for(sent, 10))["type"] == "ack"
    assert (await asyncio.wait_for(revocation, 10)).status_code == 204
    assert not answered_first  # (before: 204 while bob's message was not stored yet)


async def test_admin_key_is_required(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        missing = await anonymous.get("/api/v1/sessions")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthenticated"
        wrong = await anonymous.get(
            "/api/v1/sessions", headers={"Authorization": "Bearer not-the-key"}
        )
        assert wrong.status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json()["status"] == "ready"


async def test_a_ttl_with_a_fraction_past_a_doubles_precision_is_refused(
    server: RunningServer,
) -> None:
    """Review B2-4: ``86400.000000000001`` was read as the double 86400.0 and a token that
    lives a day was made; it is refused as ``86400.5`` is, and ``86400.0`` is a day."""
    sid = await server.new_session({"alice": "editor"})
    url = f"/api/v1/sessions/{sid}/tokens"
    answers = {}
    for literal in ("86400.5", "86400.000000000001", "86400.0"):
        body = b'{"user_id": "alice", "ttl_seconds": %s}' % literal.encode()
        headers = {"content-type": "application/json"}
        answers[literal] = await server.http.post(url, content=body, headers=headers)
    refused = [answers[n].json() for n in ("86400.5", "86400.000000000001")]
    assert refused[0] == refused[1], refused
    assert answers["86400.5"].status_code == answers["86400.000000000001"].status_code == 422
    assert refused[0]["error"]["code"] == "invalid"
    assert [d["at"] for d in refused[0]["error"]["details"]] == ["ttl_seconds"]
    assert answers["86400.0"].status_code == 201, answers["86400.0"].text


async def test_malformed_and_oversized_bodies(server: RunningServer) -> None:
    not_json = await server.http.post(
        "/api/v1/sessions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    huge = await server.http.post("/api/v1/sessions", content=b"x" * (2 * 1024 * 1024))
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "too_large"
    long_title = await server.http.post("/api/v1/sessions", json={"title": "t" * 501})
    assert long_title.status_code == 422
    bad_paging = await server.http.get("/api/v1/sessions?limit=0")
    assert bad_paging.status_code == 422
    # The bound the API document gives is taken; a parameter given twice is refused.
    at_the_bound = await server.http.get("/api/v1/sessions?offset=1000000000")
    assert at_the_bound.status_code == 200, at_the_bound.text
    past = await server.http.get("/api/v1/sessions?offset=1000000001")
    assert past.status_code == 422
    assert past.json()["error"]["message"] == "offset: must be at most 1000000000"
    twice = await server.http.get("/api/v1/sessions?limit=1&limit=2")
    assert twice.status_code == 422 and "once" in twice.json()["error"]["message"]
    nowhere = await server.http.get("/api/v1/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "not_found"


async def test_openapi_document_describes_every_route(server: RunningServer) -> None:
    spec = (await server.http.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths["/api/v1/sessions"]) == {"get", "post"}
    assert set(paths["/api/v1/sessions/{session_id}/members/{user_id}"]) == {"put", "delete"}
    post = paths["/api/v1/sessions/{session_id}/tokens"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "TokenCreate"
    )
    assert "409" in post["responses"]
    for name in ("SessionOut", "TokenOut", "TranscriptOut", "ErrorBody"):
        assert name in spec["components"]["schemas"]


async def test_the_openapi_document_is_encoded_once_and_revalidated_by_its_etag(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RL-1: the 144 KB document was encoded anew for every request, a route any
    anonymous client may call (~15 ms of the event loop for ~80 bytes asked). Its bytes are
    made once; a client holding them is answered 304 with no body."""
    encodings: list[int] = []
    dumps = json.dumps

    def counted(value: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(value, dict) and "openapi" in value:
            encodings.append(1)
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counted)
    anonymous = {"Authorization": ""}
    answers = [await server.http.get("/api/v1/openapi.json", headers=anonymous) for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["openapi"].startswith("3.")
    assert answers[0].headers["content-type"] == "application/json"
    assert len(encodings) <= 1, encodings  # the first request's, or none after start
    etag = answers[0].headers["etag"]
    unchanged = await server.http.get(
        "/api/v1/openapi.json", headers={**anonymous, "If-None-Match": f'"other", {etag}'}
    )
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    stale = await server.http.get("/api/v1/openapi.json", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.content == answers[0].content
    assert len(encodings) <= 1, encodings
