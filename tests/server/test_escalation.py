"""Issue 15, break 2: nobody hands out access they do not hold, over real REST.

An owner who cannot read an editors-only document may not make herself an editor (with
every owner capability granted back), may not lift her own denial of a document, and may
not make someone else an editor who would read it. Each attempt is refused 403
``forbidden``, audited, and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, serve_in_process
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.yclient import all_replies_settled

ALL_OWNER_CAPS = [
    "read_session",
    "be_present",
    "prompt",
    "post_message",
    "cancel_own",
    "cancel_any",
    "manage_session",
    "manage_members",
    "pin",
    "read_audit",
    "tool:search_documents",
]


async def _document(server: RunningServer, sid: str, roles: list[str]) -> str:
    response = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "plans", "text": "the secret plans", "readers": {"roles": roles}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _as(server: RunningServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


async def _refused(server: RunningServer, sid: str, actor: str) -> list[dict[str, Any]]:
    audit = await server.http.get(f"/api/v1/sessions/{sid}/audit?kind=refused&actor={actor}")
    assert audit.status_code == 200, audit.text
    return [r["data"] for r in audit.json()["records"]]


async def _members(server: RunningServer, sid: str) -> dict[str, dict[str, Any]]:
    listed = await server.http.get(f"/api/v1/sessions/{sid}/members")
    return {m["user_id"]: m for m in listed.json()["members"]}


def _forbidden(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


async def test_an_owner_cannot_become_an_editor_to_read_an_editors_only_document(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"carol": "owner", "ed": "editor"})
    doc = await _document(server, sid, ["editor"])
    before = await _members(server, sid)
    async with _as(server, await server.token(sid, "carol")) as carol:
        widen = await carol.put(
            f"/api/v1/sessions/{sid}/members/carol",
            json={"role": "editor", "grants": ALL_OWNER_CAPS},
        )
        assert _forbidden(widen), widen.text
        assert "narrow" in widen.json()["error"]["message"]
        read = await carol.get(f"/api/v1/sessions/{sid}/documents/{doc}")
        assert read.status_code == 404, read.text
        # Narrowing herself is still hers to do.
        narrow = await carol.put(
            f"/api/v1/sessions/{sid}/members/carol",
            json={"role": "owner", "denials": ["read_audit"]},
        )
        assert narrow.status_code == 200, narrow.text
    assert (await _members(server, sid))["ed"] == before["ed"]
    refused = await _refused(server, sid, "carol")
    assert [r["action"] for r in refused] == ["change member carol"]
    assert refused[0]["after"]["role"] == "editor"


async def test_an_owner_cannot_lift_her_own_denial(server: RunningServer) -> None:
    sid = await server.new_session({"dave": "viewer"})
    doc = await _document(server, sid, ["owner"])
    denied = await server.http.put(
        f"/api/v1/sessions/{sid}/members/dave",
        json={"role": "owner", "denials": [f"read:{doc}"]},
    )
    assert denied.status_code == 200, denied.text
    async with _as(server, await server.token(sid, "dave")) as dave:
        lift = await dave.put(f"/api/v1/sessions/{sid}/members/dave", json={"role": "owner"})
        assert _forbidden(lift), lift.text
        read = await dave.get(f"/api/v1/sessions/{sid}/documents/{doc}")
        assert read.status_code == 404, read.text
    assert (await _members(server, sid))["dave"]["denials"] == [f"read:{doc}"]
    refused = await _refused(server, sid, "dave")
    assert [r["action"] for r in refused] == ["change member dave"]
    assert f"read:{doc}" in refused[0]["reason"]


async def test_an_owner_cannot_make_someone_an_editor_who_reads_what_she_cannot(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"olga": "owner", "ed": "editor"})
    doc = await _document(server, sid, ["editor"])
    members = f"/api/v1/sessions/{sid}/members"
    async with _as(server, await server.token(sid, "olga")) as olga:
        add = await olga.put(f"{members}/eve", json={"role": "editor"})
        assert _forbidden(add), add.text
        assert doc in add.json()["error"]["message"]
        # The same for a member there already, and for lifting a denial she does not hold.
        viewer = await server.http.put(
            f"{members}/vic", json={"role": "editor", "denials": [f"read:{doc}"]}
        )
        assert viewer.status_code == 200, viewer.text
        lift = await olga.put(f"{members}/vic", json={"role": "editor"})
        assert _forbidden(lift), lift.text
        # An editor who may not read that document is hers to add.
        safe = await olga.put(f"{members}/eve", json={"role": "editor", "denials": [f"read:{doc}"]})
        assert safe.status_code == 200, safe.text
    after = await _members(server, sid)
    assert after["eve"]["denials"] == [f"read:{doc}"] and after["vic"]["denials"] == [f"read:{doc}"]
    refused = await _refused(server, sid, "olga")
    assert [r["action"] for r in refused] == ["change member eve", "change member vic"]
    # Someone who reads it may lift the denial (an editor given manage_members).
    await server.http.put(f"{members}/ed", json={"role": "editor", "grants": ["manage_members"]})
    async with _as(server, await server.token(sid, "ed")) as ed:
        lifted = await ed.put(f"{members}/vic", json={"role": "editor"})
        assert lifted.status_code == 200, lifted.text


def _searching(sent: Sent) -> Answer:
    if "plans" in sent.asked_text():
        return [call("search_documents", {"query": "secret plans"})]
    return ["ok"]


@pytest.fixture
async def searching(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings, FakeModel(_searching)) as running:
        yield running


async def test_a_restricted_reply_counts_after_its_document_is_gone(
    searching: RunningServer,
) -> None:
    """What editors may read includes a reply drawn from an editors-only document, even
    once the document is detached: the owner who cannot read it may not make an editor."""
    server = searching
    sid = await server.new_session({"olga": "owner", "ed": "editor"})
    doc = await _document(server, sid, ["editor"])
    ed = await server.connect(sid, "ed")
    await ed.command({"type": "prompt", "id": "p", "text": "what are the plans?"})
    await ed.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in ed.entries() if e["kind"] == "reply")
    assert "[restricted:" in reply["content"]
    detached = await server.http.delete(f"/api/v1/sessions/{sid}/documents/{doc}")
    assert detached.status_code == 204, detached.text
    async with _as(server, await server.token(sid, "olga")) as olga:
        add = await olga.put(f"/api/v1/sessions/{sid}/members/eve", json={"role": "editor"})
        assert _forbidden(add), add.text
        assert "eve" not in await _members(server, sid)
        # A viewer reads none of it: hers to add.
        viewer = await olga.put(f"/api/v1/sessions/{sid}/members/eve", json={"role": "viewer"})
        assert viewer.status_code == 200, viewer.text
    assert [r["action"] for r in await _refused(server, sid, "olga")] == ["change member eve"]


async def test_an_owner_cannot_detach_a_document_she_may_not_read(server: RunningServer) -> None:
    """Review RM-2: a document GET answered 404 for (absent to her) was hers to detach."""
    sid = await server.new_session({"alice": "owner", "bob": "owner"})
    created = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "bob's", "text": "for bob only", "readers": {"users": ["bob"]}},
    )
    assert created.status_code == 201, created.text
    doc = created.json()["id"]
    path = f"/api/v1/sessions/{sid}/documents/{doc}"
    async with _as(server, await server.token(sid, "alice")) as alice:
        read = await alice.get(path)
        detach = await alice.delete(path)
        unknown = await alice.delete(f"/api/v1/sessions/{sid}/documents/nosuchdoc")
    assert read.status_code == 404, read.text
    assert detach.status_code == 404, detach.text
    assert detach.json()["error"] == {**unknown.json()["error"], "message": ANY}
    assert (await server.http.get(path)).status_code == 200
    async with _as(server, await server.token(sid, "bob")) as bob:
        assert (await bob.delete(path)).status_code == 204
    assert (await server.http.get(path)).status_code == 404
