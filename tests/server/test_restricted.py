"""The shared document carries only what every member may read: placeholders, catch-up and
export paths over real sockets and HTTP (the one end-to-end test of restricted text reaching
the sockets of those who may read it); the restricted_replies policy and paging through the
audit log through the REST handlers, on a room over the real SQLite store. (A reply
that draws on an earlier restricted tool result is tested in a room on the in-memory
store: ``tests/server/runtime/test_scope_runs.py``.)"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.server.http import access as access_api
from parley.server.http import members as members_api
from parley.server.http import sessions as sessions_api
from parley.server.http.models import MemberPut, SessionPatch
from parley.server.http.resource_models import DocumentCreate, ReadersIn
from parley.session.commands import PromptCommand
from parley.session.errors import Forbidden
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.runtime.backend import backend, sql_store
from tests.server.runtime.harness import memory_settings
from tests.yclient import all_replies_settled

SECRET = "the vault code is 7731"


def without_ids(body: str) -> str:
    """``body`` without the server's ids (32 hex digits), which may hold ``7731`` by chance
    (a CI run found ``77731cc3…``): what is left is what the secret could leak into."""
    return re.sub(r"[0-9a-f]{32}", "", body)


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text():
        return ["Let me look. ", call("search_documents", {"query": "vault code"})]
    return ["ok"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, FakeModel(script)) as running:
        yield running


async def restricted_session(server: RunningServer) -> str:
    sid = await server.new_session({"olga": "owner", "bob": "editor", "alice": "viewer"})
    await attach_vault(server, sid, ["bob", "olga"])
    return sid


async def attach_vault(server: RunningServer, sid: str, readers: list[str]) -> str:
    """Attach the vault document, read by ``readers``; its id."""
    made = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "Vault", "text": SECRET, "readers": {"users": readers}},
    )
    assert made.status_code == 201
    return str(made.json()["id"])


async def as_member(
    server: RunningServer, sid: str, user: str, method: str, url: str, **kw: object
) -> httpx.Response:
    """One request with ``user``'s client token."""
    token = await server.token(sid, user)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        headers = {"Authorization": f"Bearer {token}"}
        return await http.request(method, url, headers=headers, **kw)


async def test_private_replies_stay_out_of_every_copy_of_the_document(
    server: RunningServer,
) -> None:
    sid = await restricted_session(server)
    bob = await server.connect(sid, "bob")
    olga = await server.connect(sid, "olga")
    alice = await server.connect(sid, "alice")
    for client in (olga, alice):  # speak JSON, so restricted text could be pushed to them
        await client.command({"type": "unpin", "id": "x", "entry_id": "none"})
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in bob.entries() if e["kind"] == "reply")
    step = next(e for e in bob.entries() if e["kind"] == "tool")
    # Members who may read it get the full text on their socket; alice gets nothing.
    await olga.wait_until(lambda c: len(c.unsolicited) == 2)
    for client in (bob, olga):
        pushed = {m["entry_id"]: m for m in client.unsolicited if m["type"] == "restricted"}
        assert set(pushed) == {reply["id"], step["id"]}
        assert SECRET in pushed[reply["id"]]["text"] and pushed[step["id"]]["kind"] == "tool"
    assert alice.unsolicited == []
    # What was streamed before the tool ran stays; the rest is a placeholder.
    assert reply["content"].startswith("Let me look. ")
    assert "[restricted:" in reply["content"] and "7731" not in reply["content"]

    late = await server.connect(sid, "alice")  # catch-up from the stored state
    assert "7731" not in str([e["content"] for e in late.entries()])
    transcript = f"/api/v1/sessions/{sid}/transcript"
    for exported in (
        await server.http.get(transcript),
        await as_member(server, sid, "alice", "GET", transcript),
    ):
        assert exported.status_code == 200 and "7731" not in without_ids(exported.text)
    private = f"/api/v1/sessions/{sid}/entries/{reply['id']}/private"
    full = await as_member(server, sid, "olga", "GET", private)
    assert full.status_code == 200 and SECRET in full.json()["text"]
    assert full.json()["readers"][0]["users"] == ["bob", "olga"]


async def test_an_owner_may_share_restricted_replies_and_it_is_audited(tmp_path: Path) -> None:
    """Through the REST handlers behind the door's token check, on a room over the real
    SQLite store: no app."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(script)) as b,
    ):
        sid = await b.new_session({"olga": "owner", "bob": "editor", "alice": "viewer"})
        await b.call(
            access_api.create_document,
            session_id=sid,
            body=DocumentCreate(
                title="Vault", text=SECRET, readers=ReadersIn(users=["bob", "olga"])
            ),
        )
        share = SessionPatch(restricted_replies="shared")
        with pytest.raises(Forbidden) as refused:
            await b.call(
                sessions_api.update_session, await b.member(sid, "bob"), session_id=sid, body=share
            )
        assert refused.value.http_status == 403
        shared = await b.call(
            sessions_api.update_session, await b.member(sid, "olga"), session_id=sid, body=share
        )
        assert shared.restricted_replies == "shared"

        s = await b.session(sid)
        asked = await s.send("bob", PromptCommand("p", "what is the vault code?"))
        await s.settled(asked["prompt_id"])
        entries = {e["kind"]: e for e in s.watcher.transcript()}  # what every socket was sent
        assert "7731" in entries["reply"]["content"]  # shared, as the owner decided
        assert "[details restricted]" in entries["tool"]["content"]  # tool results never are

        listed = await b.call(
            access_api.list_audit, session_id=sid, limit=100, after=0, kind=None, actor=None
        )
        audit = json.loads(listed.body)["records"]
    kinds = [(r["kind"], r["actor"]) for r in audit]
    assert ("policy", "olga") in kinds and ("refused", "bob") in kinds
    policy = next(r for r in audit if r["kind"] == "policy")
    assert policy["data"] == {
        "restricted_replies": {"from": "private", "to": "shared"},
        "restricted_replies_by": {"from": None, "to": "olga"},  # judged as replies draw
    }
    sharing = next(r for r in audit if r["kind"] == "reply_shared")
    assert sharing["data"]["reply_id"] == entries["reply"]["id"]


async def test_the_audit_log_pages_and_filters(tmp_path: Path) -> None:
    """The audit route's handler, and its endpoint for a bad query, on the real SQLite store:
    no app."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(script)) as b,
    ):
        sid = await b.new_session({"olga": "owner"})
        for n in range(5):
            role = "viewer" if n % 2 else "editor"
            await b.call(
                members_api.put_member, session_id=sid, user_id=f"u{n}", body=MemberPut(role=role)
            )

        async def page(
            limit: int = 50, after: int = 0, kind: str | None = None, actor: str | None = None
        ) -> dict[str, Any]:
            listed = await b.call(
                access_api.list_audit,
                session_id=sid,
                limit=limit,
                after=after,
                kind=kind,
                actor=actor,
            )
            return dict(json.loads(listed.body))

        first = await page(limit=3)
        assert len(first["records"]) == 3 and first["next_after"] == first["records"][-1]["id"]
        rest = await page(after=first["next_after"])
        assert rest["next_after"] is None
        users = [r["data"]["user_id"] for r in first["records"] + rest["records"]]
        assert users == ["olga", "u0", "u1", "u2", "u3", "u4"]
        by_admin = await page(actor="admin", kind="membership")
        assert len(by_admin["records"]) == 6
        none = await page(kind="model_call")
        assert none == {"records": [], "next_after": None, "next_cursor": None}
        bad = await b.request("GET", f"/api/v1/sessions/{sid}/audit?limit=0")
        assert bad.status_code == 422


async def test_a_reply_shown_to_everyone_is_not_pushed_again(server: RunningServer) -> None:
    """Under ``restricted_replies: shared`` the reply is in the shared document: its readers
    are kept, but no ``restricted`` frame repeats it (tool details stay restricted and are
    pushed)."""
    sid = await restricted_session(server)
    shared = await server.http.patch(
        f"/api/v1/sessions/{sid}", json={"restricted_replies": "shared"}
    )
    assert shared.status_code == 200, shared.text
    bob = await server.connect(sid, "bob")
    olga = await server.connect(sid, "olga")
    await olga.command({"type": "unpin", "id": "x", "entry_id": "none"})  # speaks JSON
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    await olga.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in olga.entries() if e["kind"] == "reply")
    step = next(e for e in olga.entries() if e["kind"] == "tool")
    assert "7731" in reply["content"]  # shown to everyone, as the owner decided
    # Anything pushed for the reply went before its settling reached olga, and a reply
    # read after that on her socket comes after it.
    await olga.command({"type": "unpin", "id": "y", "entry_id": "none"})
    pushed = [m["entry_id"] for m in olga.unsolicited if m["type"] == "restricted"]
    assert pushed == [step["id"]]


async def test_only_a_member_who_may_read_every_source_may_choose_shared(
    server: RunningServer,
) -> None:
    """Review (no confused deputy): ``shared`` shows everyone replies drawn from every
    reader list of the session, so a manager who may not read one may not choose it
    (audited); one who may read them all may, and the admin key may."""
    sid = await restricted_session(server)  # the vault: bob and olga read it
    added = await server.http.put(f"/api/v1/sessions/{sid}/members/mia", json={"role": "owner"})
    assert added.is_success, added.text
    path = f"/api/v1/sessions/{sid}"
    share = {"restricted_replies": "shared"}
    refused = await as_member(server, sid, "mia", "PATCH", path, json=share)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert (await server.http.get(path)).json()["restricted_replies"] == "private"
    audit = (await server.http.get(f"{path}/audit?kind=refused")).json()["records"]
    assert [(r["actor"], r["data"]["action"]) for r in audit] == [
        ("mia", "set restricted_replies shared")
    ]
    allowed = await as_member(server, sid, "olga", "PATCH", path, json=share)
    assert allowed.status_code == 200 and allowed.json()["restricted_replies"] == "shared"


async def test_shared_chosen_before_a_reader_list_exists_covers_only_what_its_chooser_reads(
    server: RunningServer,
) -> None:
    """Review (no confused deputy): mia (an owner who may read no restricted material)
    chose ``shared`` while there was nothing to judge; the vault attached later is judged
    as a reply draws on it: the reply stays private to its readers (audited, with why).
    Once olga, who may read it, chooses ``shared``, the next one is shown to everyone."""
    sid = await server.new_session(
        {"olga": "owner", "bob": "editor", "alice": "viewer", "mia": "owner"}
    )
    path = f"/api/v1/sessions/{sid}"
    share = {"restricted_replies": "shared"}
    chosen = await as_member(server, sid, "mia", "PATCH", path, json=share)
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["restricted_replies_by"] == "mia"
    vault = {"title": "Vault", "text": SECRET, "readers": {"users": ["bob", "olga"]}}
    assert (await server.http.post(f"{path}/documents", json=vault)).status_code == 201
    bob = await server.connect(sid, "bob")
    alice = await server.connect(sid, "alice")
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    kept = next(e for e in alice.entries() if e["kind"] == "reply")
    assert "7731" not in kept["content"] and "[restricted:" in kept["content"]
    for member in ("mia", "alice"):
        read = await as_member(server, sid, member, "GET", f"{path}/transcript")
        assert read.status_code == 200 and "7731" not in without_ids(read.text)
    audit = (await server.http.get(f"{path}/audit?kind=reply_kept_private")).json()["records"]
    assert [r["data"]["reply_id"] for r in audit] == [kept["id"]]
    assert "chosen by mia, who may not read" in audit[0]["data"]["reason"]

    chosen = await as_member(server, sid, "olga", "PATCH", path, json=share)
    assert chosen.status_code == 200 and chosen.json()["restricted_replies_by"] == "olga"
    policy = (await server.http.get(f"{path}/audit?kind=policy")).json()["records"]
    assert policy[-1]["data"] == {"restricted_replies_by": {"from": "mia", "to": "olga"}}
    await bob.command({"type": "prompt", "id": "q", "text": "the vault code again?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 2))
    shown = [e for e in alice.entries() if e["kind"] == "reply"][-1]
    assert "7731" in shown["content"]  # olga may read it: her choice shares it


async def test_a_socket_that_says_it_speaks_commands_gets_json_before_its_first(
    server: RunningServer,
) -> None:
    """Review (SDKs): JSON frames that answer no command went only to a socket that had
    sent a command, so an SDK reconnected mid-reply missed them until its next one. A
    socket opened with ``commands=text`` gets them from the start; a bad value is 4400."""
    sid = await restricted_session(server)
    bob = await server.connect(sid, "bob")
    olga = await server.connect(sid, "olga", commands="text")
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await olga.wait_until(lambda c: len(c.unsolicited) == 2)
    assert {m["type"] for m in olga.unsolicited} == {"restricted"}
    bad = await server.connect(sid, "olga", synced=False, commands="json")
    await bad.wait_closed()
    assert bad.close_code == 4400


async def test_the_audit_log_names_no_document_title(server: RunningServer) -> None:
    """Review (no confused deputy): a document's title may say what it holds ("Layoffs
    planned for March"), and the audit log, which any owner reads, carried it though
    the owner may not read the document. It names the document by its id."""
    sid = await restricted_session(server)  # the vault: bob and olga read it
    added = await server.http.put(f"/api/v1/sessions/{sid}/members/mia", json={"role": "owner"})
    assert added.is_success, added.text
    path = f"/api/v1/sessions/{sid}"
    listed = await as_member(server, sid, "mia", "GET", f"{path}/documents")
    assert listed.json()["documents"] == []
    audit = await as_member(server, sid, "mia", "GET", f"{path}/audit?kind=document")
    [record] = audit.json()["records"]
    assert record["data"]["added"] and "Vault" not in audit.text


async def test_a_socket_that_connects_later_is_sent_what_its_member_may_read(
    server: RunningServer,
) -> None:
    """Review (SDKs): restricted text went only to the sockets open when it was stored: a
    reader who reconnected, or opened the session later, had only the placeholder. A
    socket that speaks commands is sent, as it connects, the restricted text its member
    may read; one of a member who may not read it, nothing."""
    sid = await restricted_session(server)
    bob = await server.connect(sid, "bob")
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in bob.entries() if e["kind"] == "reply")
    olga = await server.connect(sid, "olga", commands="text")
    alice = await server.connect(sid, "alice", commands="text")
    for client in (olga, alice):  # answered after whatever the socket was greeted with
        await client.command({"type": "unpin", "id": "x", "entry_id": "none"})
    pushed = {m["entry_id"]: m["text"] for m in olga.unsolicited if m["type"] == "restricted"}
    assert SECRET in pushed[reply["id"]]
    assert [m for m in alice.unsolicited if m["type"] == "restricted"] == []
    assert "7731" not in str(alice.unsolicited)


@pytest.mark.parametrize(
    "suspended",
    [
        ({"role": "blind"}, {"role": "viewer"}),
        ({"role": "viewer", "denials": ["read_session"]}, {"role": "viewer", "denials": []}),
    ],
    ids=["custom-role", "denial"],
)
async def test_a_member_who_may_not_read_the_session_now_is_still_counted(
    server: RunningServer, suspended: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """Review R3-2: a member whose right to read the session is suspended (a role without
    ``read_session``, or a denial of it) was left out of "every member may read", so a
    reply drawn from a document zed may not read went into the shared document, and zed
    read it once the right was back. He is a member throughout: the reply stays private."""
    while_out, restored = suspended
    roles = await server.http.put("/api/v1/roles/blind", json={"capabilities": ["be_present"]})
    assert roles.is_success, roles.text
    sid = await server.new_session({"olga": "owner", "bob": "editor"})
    path = f"/api/v1/sessions/{sid}"
    assert (await server.http.put(f"{path}/members/zed", json=while_out)).is_success
    vault = {"title": "Vault", "text": SECRET, "readers": {"users": ["bob", "olga"]}}
    assert (await server.http.post(f"{path}/documents", json=vault)).status_code == 201
    bob = await server.connect(sid, "bob")
    await bob.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in bob.entries() if e["kind"] == "reply")
    assert "7731" not in reply["content"] and "[restricted:" in reply["content"]

    back = await server.http.put(f"{path}/members/zed", json=restored)
    assert back.is_success, back.text
    zed = await server.connect(sid, "zed")
    assert "7731" not in str([e["content"] for e in zed.entries()])
    read = await as_member(server, sid, "zed", "GET", f"{path}/transcript")
    assert (
        read.status_code == 200
        and "7731" not in without_ids(read.text)
        and "[restricted:" in read.text
    )
    private = await as_member(server, sid, "zed", "GET", f"{path}/entries/{reply['id']}/private")
    assert private.status_code == 403


async def test_the_audit_log_tells_a_calls_token_counts_only_to_who_may_read_what_it_drew_on(
    server: RunningServer,
) -> None:
    """Review RC-1: every ``model_call`` record carried the call's token counts, so bob, an
    owner (``read_audit``) who may not read alice's document, read the size of the passage
    her run read (step 1's ``input_tokens`` less step 0's) and of her private side-thread's
    prompt and reply. The counts are withheld as a ``too_large`` reason's are: bob sees
    those of a call that drew on nothing he may not read, alice all of hers, the admin all."""
    sid = await server.new_session({"alice": "editor", "bob": "owner"})
    path = f"/api/v1/sessions/{sid}"
    granted = await server.http.put(
        f"{path}/members/alice", json={"role": "editor", "grants": ["read_audit"]}
    )
    assert granted.is_success, granted.text
    document = await attach_vault(server, sid, ["alice"])
    alice = await server.connect(sid, "alice")
    await alice.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    threads = f"{path}/threads"
    opened = await as_member(server, sid, "alice", "POST", threads, json={})
    thread_id = opened.json()["thread_id"]
    asked = {"text": "p" * 400}
    sent = await as_member(
        server, sid, "alice", "POST", f"{threads}/{thread_id}/prompts", json=asked
    )
    assert sent.status_code == 202, sent.text

    def thread_answered(client: Any) -> bool:
        frames = [f["thread"] for f in client.unsolicited if f.get("type") == "thread"]
        done = [t for t in frames if t["id"] == thread_id and not t["running"]]
        return bool(done) and any(turn["kind"] == "reply" for turn in done[-1]["turns"])

    await alice.wait_until(thread_answered)

    def counts(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (
                "thread" if r["data"].get("thread_id") else "session",
                r["data"]["step"],
                r["data"]["input_tokens"],
                r["data"]["output_tokens"],
                r.get("withheld"),
            )
            for r in records
        ]

    url = f"{path}/audit?kind=model_call"
    whole = [("session", 0, 100, 10, []), ("session", 1, 100, 10, []), ("thread", 0, 100, 10, [])]
    seen_by_bob = (await as_member(server, sid, "bob", "GET", url)).json()["records"]
    hidden = ["drew_on", "input_tokens", "output_tokens", "ms", "started_at"]
    assert counts(seen_by_bob) == [
        ("session", 0, 100, 10, []),  # it drew on nothing bob may not read
        ("session", 1, None, None, hidden),  # its input held the search's result
        ("thread", 0, None, None, hidden),  # alice's private side-thread
    ]
    assert all(r["data"]["drew_on"] is r["data"]["ms"] is None for r in seen_by_bob[1:])
    # Nor its start: the record's ``at`` (its end) less it was its time (review RG-1).
    assert all(r["data"]["started_at"] is None for r in seen_by_bob[1:])
    admin = (await server.http.get(url)).json()["records"]
    assert counts(admin) == whole
    assert all(r["data"]["drew_on"] is not None for r in admin)
    seen_by_alice = (await as_member(server, sid, "alice", "GET", url)).json()["records"]
    assert counts(seen_by_alice) == whole
    # Judged with the reader's rights now, as the transcript is: alice denied the document.
    denied = await server.http.put(
        f"{path}/members/alice",
        json={"role": "editor", "grants": ["read_audit"], "denials": [f"read:{document}"]},
    )
    assert denied.is_success, denied.text
    later = (await as_member(server, sid, "alice", "GET", url)).json()["records"]
    assert counts(later) == [whole[0], *counts(seen_by_bob)[1:]]
