"""Issue 15 in cluster mode: a token revoked, or a member removed, on one node is dead on
every node (sockets closed, REST refused, prompts stopped), and adding the member back on
one node does not revive their old token on another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import ServerProcess
from tests.server.cluster.nodes import Cluster, cluster, module_cluster, on_module_cluster
from tests.yclient import YClient

pytestmark = pytest.mark.postgres

# Nodes that poll the database for changes once a minute (what they are told, they were
# told), shared by the tests that neither stop nor reconfigure one, each on its own session.
polled = module_cluster(PARLEY_CLUSTER_POLL_S="60")
shared = on_module_cluster(__name__)


async def _issue(nodes: Cluster, node: ServerProcess, sid: str, user: str) -> tuple[str, str]:
    response = await nodes.http.post(
        f"{node.base_url}/api/v1/sessions/{sid}/tokens", json={"user_id": user}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"]), str(response.json()["jti"])


async def _status(node: ServerProcess, sid: str, token: str) -> int:
    async with httpx.AsyncClient(
        base_url=node.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as member:
        return (await member.get(f"/api/v1/sessions/{sid}")).status_code


async def _socket(node: ServerProcess, sid: str, token: str) -> YClient:
    client = await YClient.connect(node.ws_url, sid, token)
    await client.wait_until(lambda c: c.synced.is_set(), timeout=20)
    return client


async def _refused_soon(node: ServerProcess, sid: str, token: str) -> int:
    """The status the node answers once it saw the member removed *and* added back (it may
    first have seen only the removal: 403 not a member)."""
    async with asyncio.timeout(20):
        while True:
            status = await _status(node, sid, token)
            if status != 403:
                return status
            await asyncio.sleep(0.1)


async def test_revocation_and_removal_hold_on_every_node(tmp_path: Path) -> None:
    async with cluster(
        tmp_path,
        2,
        PARLEY_CLUSTER_POLL_S="0.5",
        PARLEY_OFFLINE_TOKEN_DELAY_MS="300",  # a reply runs for many seconds
    ) as nodes:
        first, second = nodes.nodes
        sid = await nodes.new_session({"a": "editor", "o": "owner"})
        watcher = await nodes.connect(first, sid, "o")
        token, jti = await _issue(nodes, second, sid, "a")
        a = await _socket(second, sid, token)
        ack = await a.command({"type": "prompt", "id": "p1", "text": "tell me"}, timeout=30)
        prompt_id = ack["prompt_id"]
        await watcher.wait_until(
            lambda c: any(e["kind"] == "reply" and str(e["content"]) for e in c.entries()),
            timeout=30,
        )

        # Revoked through the first node; the socket is on the second.
        revoked = await nodes.http.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")
        assert revoked.status_code == 204, revoked.text
        assert await a.wait_closed(timeout=20) == 4401
        assert a.ws.close_reason is not None and a.ws.close_reason.startswith("revoked:")
        assert await _status(second, sid, token) == 401
        assert await _status(first, sid, token) == 401
        await watcher.wait_until(
            lambda c: any(
                e["id"] == prompt_id
                and e["status"] == "failed"
                and e.get("reason_code") == "token_revoked"
                for e in c.entries()
            ),
            timeout=30,
        )

        # Removed and added back at once through the first node: the token the second
        # node saw is dead there too.
        token2, _ = await _issue(nodes, second, sid, "a")
        a2 = await _socket(second, sid, token2)
        members = f"/api/v1/sessions/{sid}/members/a"
        assert (await nodes.http.delete(members)).status_code == 204
        assert (await nodes.http.put(members, json={"role": "editor"})).status_code == 200
        assert await a2.wait_closed(timeout=20) in {4401, 4403}
        assert await _refused_soon(second, sid, token2) == 401
        token3, _ = await _issue(nodes, second, sid, "a")
        assert await _status(second, sid, token3) == 200
        await watcher.close()


@shared
async def test_a_token_revoked_through_a_following_node_is_dead_where_the_session_runs(
    polled: Cluster,
) -> None:
    """Review (same answer everywhere): the revocation answered 204 on the follower before
    the running node knew of it, and the token then stored a message there (10 of 10)."""
    sid = await polled.new_session({"a": "editor"})
    running, other = await polled.running_and_other(sid)
    token, jti = await _issue(polled, running, sid, "a")
    a = await _socket(running, sid, token)
    revoked = await polled.http.delete(f"{other.base_url}/api/v1/sessions/{sid}/tokens/{jti}")
    assert revoked.status_code == 204, revoked.text
    try:
        reply = await a.command({"type": "message", "id": "m", "text": "still here?"})
    except (ConnectionError, websockets.ConnectionClosed):  # closed already: as good
        reply = {"type": "closed"}
    assert reply["type"] != "ack"
    assert await a.wait_closed(timeout=20) == 4401
    transcript = await polled.http.get(f"{running.base_url}/api/v1/sessions/{sid}/transcript")
    assert transcript.status_code == 200 and "still here?" not in transcript.text


@shared
async def test_a_following_node_admits_sockets_by_the_members_as_stored(polled: Cluster) -> None:
    """Review (same answer everywhere): a node following a session judged a new socket by
    the members it last read, refreshed every poll: a member removed on another node was
    admitted there and sent the document (8 of 8), one added there refused 4403 for good,
    and a removed member's open socket there stayed open until the poll."""
    sid = await polled.new_session({"o": "owner", "eve": "editor", "carl": "editor"})
    running, other = await polled.running_and_other(sid)
    admin = httpx.AsyncClient(
        base_url=running.base_url,
        headers=dict(polled.http.headers),
        timeout=30,
    )
    async with admin:
        watcher = await polled.connect(other, sid, "o")  # the other node follows it
        eve = await polled.token(running, sid, "eve")
        carl = await _socket(other, sid, await polled.token(running, sid, "carl"))
        for gone in ("eve", "carl"):
            removed = await admin.delete(f"/api/v1/sessions/{sid}/members/{gone}")
            assert removed.status_code == 204, removed.text
        refused = await YClient.connect(other.ws_url, sid, eve)
        assert await refused.wait_closed(timeout=20) == 4403
        assert await carl.wait_closed(timeout=20) == 4403
        added = await admin.put(f"/api/v1/sessions/{sid}/members/ned", json={"role": "editor"})
        assert added.status_code == 200, added.text
        ned = await _socket(other, sid, await polled.token(running, sid, "ned"))
        assert ned.close_code is None
        await ned.close()
        await watcher.close()


@shared
async def test_a_token_from_a_link_dies_with_its_maker_on_every_node(polled: Cluster) -> None:
    """Review RI-2, in cluster mode: a token exchanged from alice's link for carol, used
    on the node following the session, is refused there once alice is removed through
    the running node (its socket closes 4401, REST 401)."""
    sid = await polled.new_session({"alice": "owner", "carol": "editor"})
    running, other = await polled.running_and_other(sid)
    alice = await polled.token(running, sid, "alice")
    async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
        minted = await client.post(
            f"/api/v1/sessions/{sid}/invites",
            json={"user_id": "carol"},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert minted.status_code == 201, minted.text
    async with httpx.AsyncClient(base_url=other.base_url, timeout=30) as client:
        exchanged = await client.post(
            "/api/v1/invites/exchange", json={"invite": minted.json()["secret"]}
        )
        assert exchanged.status_code == 200, exchanged.text
    carol = exchanged.json()["token"]
    socket = await _socket(other, sid, carol)
    removed = await polled.http.delete(f"{running.base_url}/api/v1/sessions/{sid}/members/alice")
    assert removed.status_code == 204, removed.text
    assert await socket.wait_closed(timeout=20) == 4401
    assert socket.ws.close_reason is not None and "alice" in socket.ws.close_reason
    assert await _status(other, sid, carol) == 401
    assert await _status(running, sid, carol) == 401


@shared
async def test_invites_dead_with_their_membership_are_not_live_on_any_node(
    polled: Cluster,
) -> None:
    """Review RV40-F3, in cluster mode: carol removed through one node and added back
    through the other, her links from before are refused, listed as live on neither node,
    and leave room for a new link, which works on both."""
    sid = await polled.new_session({"carol": "editor"})
    running, other = await polled.running_and_other(sid)
    invites = f"/api/v1/sessions/{sid}/invites"
    old = await polled.http.post(
        f"{running.base_url}{invites}", json={"user_id": "carol", "max_uses": 5}
    )
    assert old.status_code == 201, old.text
    member = f"/api/v1/sessions/{sid}/members/carol"
    removed = await polled.http.delete(f"{running.base_url}{member}")
    assert removed.status_code == 204, removed.text
    assert (await polled.http.get(f"{other.base_url}{invites}")).json()["invites"] == []
    added = await polled.http.put(f"{other.base_url}{member}", json={"role": "viewer"})
    assert added.status_code == 200, added.text
    exchange = "/api/v1/invites/exchange"
    async with httpx.AsyncClient(base_url=other.base_url, timeout=30) as client:
        refused = await client.post(exchange, json={"invite": old.json()["secret"]})
    assert refused.status_code == 401, refused.text
    for node in (running, other):
        assert (await polled.http.get(f"{node.base_url}{invites}")).json()["invites"] == []
    new = await polled.http.post(f"{other.base_url}{invites}", json={"user_id": "carol"})
    assert new.status_code == 201, new.text
    for node in (running, other):
        listed = (await polled.http.get(f"{node.base_url}{invites}")).json()["invites"]
        assert [i["id"] for i in listed] == [new.json()["id"]]
    async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
        exchanged = await client.post(exchange, json={"invite": new.json()["secret"]})
    assert exchanged.status_code == 200 and exchanged.json()["user_id"] == "carol"
