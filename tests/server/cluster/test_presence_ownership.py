"""A member's presence is theirs on every node: another node's socket cannot overwrite or
clear it (one node's rule, ``Presence``'s ownership of client ids, holds across nodes)."""

from __future__ import annotations

from functools import partial

import pytest

from parley.session.yprotocol import AwarenessState, encode_awareness, encode_awareness_update
from tests.server.cluster.nodes import Cluster, module_cluster, on_module_cluster
from tests.server.kept_clients import kept_for_its_member, show_then_leave
from tests.server.test_presence_kept import stored

pytestmark = pytest.mark.postgres

# None of these tests stops or reconfigures a node: they share two, each on its own session.
nodes = module_cluster()
shared = on_module_cluster(__name__)


@pytest.mark.parametrize("spoof", [{"name": "not X"}, None], ids=["overwrite", "clear"])
@shared
async def test_a_member_on_another_node_cannot_speak_for_anothers_client(
    nodes: Cluster, spoof: dict[str, str] | None
) -> None:
    sid = await nodes.new_session({"x": "editor", "z": "editor", "w": "viewer"})
    x = await nodes.connect(nodes.nodes[0], sid, "x")
    watcher = await nodes.connect(nodes.nodes[0], sid, "w")
    await x.set_awareness(111, 1, {"name": "X"})
    await watcher.wait_until(lambda c: (c.awareness.get(111) or {}).get("name") == "X", 5)
    z = await nodes.connect(nodes.nodes[1], sid, "z")
    await z.wait_until(lambda c: (c.awareness.get(111) or {}).get("name") == "X", 5)
    # z speaks for x's client 111 (a later clock) and for a client of its own, in one
    # update: the watcher sees z's own state, and x's still as x sent it.
    states = [AwarenessState(111, 50, spoof), AwarenessState(333, 1, {"name": "Z"})]
    await z.ws.send(encode_awareness(encode_awareness_update(states)))
    for client in (watcher, z):
        await client.wait_until(lambda c: 333 in c.awareness, 5)
        assert client.awareness[111] == {"name": "X", "parley": {"user_id": "x"}}
    for client in (x, watcher, z):
        await client.close()


@shared
async def test_a_node_that_loads_the_session_keeps_the_client_ids_that_left_another(
    nodes: Cluster,
) -> None:
    """Review (presence not stored): a client id that left a socket on one node was kept
    for its member there alone, so on a node that loaded the session later another member
    could introduce it. Each node stores the ones that leave its sockets, and a node that
    loads the session reads them."""
    sid = await nodes.new_session({"alice": "viewer", "vera": "editor", "mallory": "editor"})
    first, second = nodes.nodes
    alice = await nodes.connect(first, sid, "alice")
    await show_then_leave(await nodes.connect(first, sid, "vera"), alice, 777)
    await stored(nodes.url, sid, 777)
    watcher = await nodes.connect(second, sid, "alice")  # loads it on the second node
    mallory = await nodes.connect(second, sid, "mallory")
    back = partial(nodes.connect, second, sid, "vera")
    await kept_for_its_member(back, "vera", mallory, watcher, 777)
    for client in (alice, watcher, mallory):
        await client.close()


@shared
async def test_a_member_denied_be_present_on_one_node_is_taken_down_on_every_node(
    nodes: Cluster,
) -> None:
    """Review: a member denied ``be_present`` who went silent kept showing their state.
    The node their socket is on hears of the change from the node that made it (a deny of
    their own, their custom role edited), takes the state down there, and the other nodes
    hear of it as of any leave."""
    lurker = {"capabilities": ["read_session", "be_present"]}
    assert (await nodes.http.put("/api/v1/roles/lurker", json=lurker)).is_success
    sid = await nodes.new_session({"mal": "editor", "lu": "lurker", "w": "viewer"})
    mal = await nodes.connect(nodes.nodes[1], sid, "mal")
    lu = await nodes.connect(nodes.nodes[1], sid, "lu")
    here = await nodes.connect(nodes.nodes[0], sid, "w")
    there = await nodes.connect(nodes.nodes[1], sid, "w")
    await mal.set_awareness(42, 1, {"name": "Mal"})
    await lu.set_awareness(43, 1, {"name": "Lu"})
    for client in (here, there):
        await client.wait_until(lambda c: bool(c.awareness.get(42) and c.awareness.get(43)))
    put = await nodes.http.put(  # through the first node
        f"/api/v1/sessions/{sid}/members/mal",
        json={"role": "editor", "denials": ["be_present"]},
    )
    assert put.status_code == 200, put.text
    for client in (here, there):
        await client.wait_until(lambda c: 42 in c.awareness and c.awareness[42] is None, 10)
    lurker = {"capabilities": ["read_session"]}
    assert (await nodes.http.put("/api/v1/roles/lurker", json=lurker)).is_success
    for client in (here, there):
        await client.wait_until(lambda c: 43 in c.awareness and c.awareness[43] is None, 10)
    for client in (mal, lu, here, there):
        await client.close()
