"""Semantic events over a real server: each change yields its events, in commit order,
stored with the change (``session.events``, ``GET /api/v1/sessions/{id}/events``). How
cancels, stops and superseded runs end in events is tested in a room on the in-memory
store: ``tests/server/runtime/test_events.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycrdt import Map

from parley.server.settings import OFFLINE_MODEL
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.yclient import YClient, all_replies_settled


async def _events(server: RunningServer, sid: str, after: int = 0) -> list[dict[str, Any]]:
    response = await server.http.get(f"/api/v1/sessions/{sid}/events", params={"after": after})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    assert [e["seq"] for e in events] == list(range(after + 1, after + 1 + len(events)))
    return events


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


async def test_a_prompt_is_accepted_run_and_completed_once(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "vera": "viewer"})
        joined = await _events(server, sid)
        assert [(e["kind"], e["data"]["user_id"], e["data"]["role"]) for e in joined] == [
            ("member_joined", "alice", "editor"),
            ("member_joined", "vera", "viewer"),
        ]
        alice = await server.connect(sid, "alice")
        vera = await server.connect(sid, "vera")
        ack = await alice.command({"type": "prompt", "id": "c1", "text": "hello there"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        posted = await alice.command({"type": "message", "id": "m1", "text": "thanks"})

        # Resent commands are answered with their first ack and store nothing more; a
        # refused prompt (a viewer may not prompt) stores nothing.
        assert await alice.command({"type": "prompt", "id": "c1", "text": "hello there"}) == ack
        assert await alice.command({"type": "message", "id": "m1", "text": "thanks"}) == posted
        refused = await vera.command({"type": "prompt", "id": "v1", "text": "me too"})
        assert refused["code"] == "forbidden"

        events = (await _events(server, sid))[2:]
        assert _kinds(events) == [
            "prompt_accepted",
            "run_started",
            "reply_completed",
            "message_posted",
        ]
        accepted, started, completed, message = events
        prompt_id = ack["prompt_id"]
        assert accepted["data"] == {"prompt_id": prompt_id, "seq": ack["seq"], "author": "alice"}
        assert accepted["actor"] == "alice"
        reply = next(e for e in alice.entries() if e["kind"] == "reply")
        assert started["data"] == {
            "reply_id": reply["id"],
            "prompt_ids": [prompt_id],
            "issuers": ["alice"],
        }
        assert started["actor"] is None
        assert completed["data"] == {"reply_id": reply["id"], "prompt_ids": [prompt_id]}
        assert message["data"] == {
            "message_id": posted["message_id"],
            "seq": posted["seq"],
            "author": "alice",
        }
        # No content: not the prompt's text, not the reply's.
        assert "hello there" not in str(events) and reply["content"] not in str(events)
        assert accepted["at_ms"] <= started["at_ms"] <= completed["at_ms"]


async def _wait_running(client: YClient, prompt_id: str) -> None:
    await client.wait_until(
        lambda c: any(e["id"] == prompt_id and e["status"] == "running" for e in c.entries())
    )


async def test_membership_and_settings_changes_over_rest(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner"})
        members = f"/api/v1/sessions/{sid}/members"
        assert (await server.http.put(f"{members}/bob", json={"role": "editor"})).is_success
        assert (await server.http.put(f"{members}/bob", json={"role": "viewer"})).is_success
        assert (await server.http.put(f"{members}/bob", json={"role": "viewer"})).is_success
        patch = {"model": OFFLINE_MODEL, "title": "renamed", "policy": "interrupt"}
        assert (await server.http.patch(f"/api/v1/sessions/{sid}", json=patch)).is_success
        assert (await server.http.patch(f"/api/v1/sessions/{sid}", json=patch)).is_success
        # A member's call that is refused stores nothing.
        bob = {"Authorization": f"Bearer {await server.token(sid, 'bob')}"}
        refused = await server.http.patch(
            f"/api/v1/sessions/{sid}", json={"model": None}, headers=bob
        )
        assert refused.status_code == 403
        removal = await server.http.delete(f"{members}/bob", headers=bob)
        assert removal.status_code == 403
        # The owner changes the model back with her own token; then the admin removes bob.
        olga = {"Authorization": f"Bearer {await server.token(sid, 'olga')}"}
        reset = await server.http.patch(
            f"/api/v1/sessions/{sid}", json={"model": None}, headers=olga
        )
        assert reset.is_success, reset.text
        assert (await server.http.delete(f"{members}/bob")).status_code == 204

        events = (await _events(server, sid))[1:]
        assert [(e["kind"], e["actor"], e["data"]) for e in events] == [
            (
                "member_joined",
                "admin",
                {"user_id": "bob", "role": "editor", "grants": [], "denials": [], "by": "admin"},
            ),
            (
                "member_changed",
                "admin",
                {"user_id": "bob", "role": "viewer", "grants": [], "denials": [], "by": "admin"},
            ),
            (
                "settings_changed",
                "admin",
                {"changed": {"model": OFFLINE_MODEL, "title": "renamed"}, "by": "admin"},
            ),
            ("settings_changed", "admin", {"changed": {"policy": "interrupt"}, "by": "admin"}),
            ("settings_changed", "olga", {"changed": {"model": None}, "by": "olga"}),
            ("member_left", "admin", {"user_id": "bob", "by": "admin"}),
        ]


async def test_the_events_route_pages_and_is_for_the_admin_only(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner", "bob": "editor", "eve": "viewer"})
        route = f"/api/v1/sessions/{sid}/events"
        page = (await server.http.get(route, params={"limit": 2})).json()
        assert [e["seq"] for e in page["events"]] == [1, 2] and page["next_after"] == 2
        rest = (await server.http.get(route, params={"after": 2, "limit": 2})).json()
        assert [e["data"]["user_id"] for e in rest["events"]] == ["eve"]
        assert rest["next_after"] is None
        assert (await server.http.get(route, params={"limit": 501})).status_code == 422
        owner = {"Authorization": f"Bearer {await server.token(sid, 'olga')}"}
        assert (await server.http.get(route, headers=owner)).status_code == 403
        assert (await server.http.get("/api/v1/sessions/nope/events")).status_code == 404


async def test_a_rename_reaches_the_documents_meta(database_url: str, tmp_path: Path) -> None:
    """Review (same answer everywhere): ``PATCH {"title"}`` changed what REST answers while
    the shared document's ``meta.title`` (what the demo and SDK users read) kept the old
    title on every node."""
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"olga": "owner"})
        olga = await server.connect(sid, "olga")
        renamed = await server.http.patch(f"/api/v1/sessions/{sid}", json={"title": "Q3 plan"})
        assert renamed.is_success and renamed.json()["title"] == "Q3 plan"
        await olga.wait_until(lambda c: c.doc.get("meta", type=Map).get("title") == "Q3 plan")
        late = await server.connect(sid, "olga")  # the sync: a snapshot, then the updates
        await late.wait_until(lambda c: c.doc.get("meta", type=Map).get("title") == "Q3 plan")
