"""A token from another member's invite link is judged again by the reader lists, and
revoked, when a custom role edit lowers what its maker reads (review RA-1) and when a
webhook tool's answer brings a reader list its maker may not read (review RA-2), as at a
membership change or a document's attach; one server and cluster mode alike (there the
change goes through the node that does not run the session, and both refuse the token)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.authz.roles import ROLE_CAPABILITIES, Role
from tests.conftest import RunningServer, make_settings, serve_asgi, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.cluster.nodes import two_in_process
from tests.yclient import YClient

SECRET = "carol's salary is 77,000"
ONE_OR_CLUSTER = pytest.mark.parametrize(
    "cluster", [False, pytest.param(True, marks=pytest.mark.postgres)], ids=["one", "cluster"]
)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def _servers(
    tmp_path: Path, cluster: bool, model: FakeModel | None = None, **settings: Any
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """The server that runs the session, and the one the change goes through (in cluster
    mode the other node; otherwise the same)."""
    if not cluster:
        config = make_settings(sqlite_url(tmp_path), tmp_path, **settings)
        async with serve_in_process(config, model) as one:
            yield one, one
        return
    async with two_in_process(tmp_path, model, **settings) as (_, first, second):
        yield first, second


def _nodes(running: RunningServer, other: RunningServer) -> tuple[RunningServer, ...]:
    return (running,) if running is other else (running, other)


async def _socket(server: RunningServer, sid: str, token: str) -> YClient:
    client = await YClient.connect(server.ws_url, sid, token)
    server.clients.append(client)
    async with asyncio.timeout(20):
        await client.synced.wait()
    return client


async def _revoked_everywhere(
    servers: tuple[RunningServer, ...], sid: str, token: str, sockets: list[YClient]
) -> None:
    """``token``'s sockets closed 4401 (on both nodes), its REST calls refused on both,
    and its revocation audited as a link token's."""
    for socket in sockets:
        assert await asyncio.wait_for(socket.wait_closed(), 30) == 4401
    for server in servers:
        refused = await server.http.get(f"/api/v1/sessions/{sid}/me", headers=_bearer(token))
        assert refused.status_code == 401, refused.text
        assert "revoked" in refused.json()["error"]["message"]
    audit = await servers[0].http.get(f"/api/v1/sessions/{sid}/audit")
    records = audit.json()["records"]
    revoked = [r["data"] for r in records if r["kind"] == "token" and "revoked" in r["data"]]
    assert [(r["user_id"], r["made_by"]) for r in revoked] == [("carol", "alice")], revoked


@ONE_OR_CLUSTER
async def test_a_role_edit_that_takes_the_makers_read_revokes_the_links_token(
    tmp_path: Path, cluster: bool
) -> None:
    """Review RA-1: alice, a ``lead`` (an owner's capabilities and ``read:<D>``, D a
    document for carol alone), took a token from her link for a fresh carol; the admin
    edited ``lead`` to drop ``read:<D>``: alice read D no more (404), yet the token kept
    reading it (200) until some later membership change. The edit judges the links'
    tokens by the reader lists, as a denial of ``read:<D>`` on alice does."""
    owner = sorted(ROLE_CAPABILITIES[Role.OWNER])
    async with _servers(tmp_path, cluster) as (running, other):
        role = await running.http.put("/api/v1/roles/lead", json={"capabilities": owner})
        assert role.status_code == 200, role.text
        sid = await running.new_session({"alice": "lead", "carol": "editor"})
        url = f"/api/v1/sessions/{sid}"
        added = await running.http.post(
            f"{url}/documents",
            json={"title": "pay", "text": SECRET, "readers": {"users": ["carol"]}},
        )
        assert added.status_code == 201, added.text
        document = f"{url}/documents/{added.json()['id']}"
        reads = {"capabilities": [*owner, f"read:{added.json()['id']}"]}
        role = await running.http.put("/api/v1/roles/lead", json=reads)
        assert role.status_code == 200, role.text
        carol = await running.link_token(sid, "alice", "carol")
        assert (await running.http.get(document, headers=_bearer(carol))).status_code == 200
        sockets = [await _socket(server, sid, carol) for server in _nodes(running, other)]

        edited = await other.http.put("/api/v1/roles/lead", json={"capabilities": owner})
        assert edited.status_code == 200, edited.text
        alice = await running.token(sid, "alice")
        assert (await running.http.get(document, headers=_bearer(alice))).status_code == 404
        await _revoked_everywhere(_nodes(running, other), sid, carol, sockets)
        for server in _nodes(running, other):
            read = await server.http.get(document, headers=_bearer(carol))
            assert read.status_code == 401, read.text


def _tool_script(sent: Sent) -> Answer:
    last = sent.messages[-1] if sent.messages else {}
    if last.get("role") == "tool":
        return ["noted"]
    return [call("hr", {"q": "salary"})]


async def _hr_tool(request: Request) -> Response:
    """A webhook tool whose answer only bob and carol may read."""
    answer = {"content": SECRET, "readers": {"users": ["bob", "carol"], "roles": []}}
    return Response(json.dumps(answer), media_type="application/json")


@ONE_OR_CLUSTER
async def test_a_tools_answer_with_readers_its_maker_may_not_read_revokes_the_links_token(
    tmp_path: Path, cluster: bool
) -> None:
    """Review RA-2: alice (owner) took a token from her link for a fresh carol; bob's run
    called the webhook tool ``hr``, which answered with readers bob and carol: alice may
    not read the tool's step nor the reply (403), yet the token read both (200), its
    sockets pushed them, until some later membership change. The write that stores the
    tool's answer judges the links' tokens by the reader lists, its own among them, as an
    attach does: the token is revoked with it."""
    model = FakeModel(_tool_script, echo_tools=False)
    async with (
        serve_asgi(Starlette(routes=[Route("/", _hr_tool, methods=["POST"])])) as port,
        _servers(tmp_path, cluster, model, webhook_allow_private=True) as (running, other),
    ):
        tool = {"name": "hr", "description": "hr lookup", "url": f"http://127.0.0.1:{port}/"}
        made = await running.http.post("/api/v1/tools", json=tool)
        assert made.status_code == 201, made.text
        sid = await running.new_session({"alice": "owner", "carol": "editor"})
        url = f"/api/v1/sessions/{sid}"
        bob = await running.http.put(
            f"{url}/members/bob", json={"role": "editor", "grants": ["tool:hr"]}
        )
        assert bob.status_code == 200, bob.text
        carol = await running.link_token(sid, "alice", "carol")
        sockets = [await _socket(server, sid, carol) for server in _nodes(running, other)]

        asked = await other.http.post(
            f"{url}/prompts",
            json={"text": "carol's salary?"},
            headers=_bearer(await other.token(sid, "bob")),
        )
        assert asked.status_code == 202, asked.text
        prompt = f"{url}/prompts/{asked.json()['prompt_id']}"
        for _ in range(600):
            status = (await running.http.get(prompt)).json()["status"]
            if status not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert status == "done", status
        await _revoked_everywhere(_nodes(running, other), sid, carol, sockets)
        entries = await running.transcript(sid)
        kept = [e["id"] for e in entries if e["kind"] in ("tool", "reply")]
        assert len(kept) == 2, entries
        alice = await running.token(sid, "alice")
        for entry in kept:
            private = f"{url}/entries/{entry}/private"
            assert (await running.http.get(private, headers=_bearer(alice))).status_code == 403
            for server in _nodes(running, other):
                read = await server.http.get(private, headers=_bearer(carol))
                assert read.status_code == 401, read.text
        for socket in sockets:
            assert all(SECRET not in json.dumps(m) for m in socket.unsolicited)
