"""``member`` frames: a socket that speaks JSON is told how a member now stands when their
membership or name changes (review K1, K2: the browser demo read roles and names once, so
a promoted viewer stayed locked out and a name given up stayed on its former owner)."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningServer
from tests.yclient import YClient


def frames_of(client: YClient, user_id: str) -> list[dict[str, Any]]:
    return [m for m in client.unsolicited if m.get("type") == "member" and m["user_id"] == user_id]


async def test_a_role_change_is_told_to_every_socket_that_speaks_json(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"alice": "owner", "bob": "editor", "vera": "viewer"})
    vera = await server.connect(sid, "vera", commands="text")
    bob = await server.connect(sid, "bob", commands="text")
    stock = await server.connect(sid, "alice")  # no command channel: never sent JSON
    promoted = await server.http.put(
        f"/api/v1/sessions/{sid}/members/vera", json={"role": "editor"}
    )
    assert promoted.is_success, promoted.text
    for client in (vera, bob):
        await client.wait_until(lambda c: bool(frames_of(c, "vera")))
        [frame] = frames_of(client, "vera")
        assert frame == {
            "type": "member",
            "user_id": "vera",
            "role": "editor",
            "display_name": "",
            "capabilities": promoted.json()["capabilities"],
        }
    reply = await vera.command({"type": "message", "id": "m", "text": "I may write now"})
    assert reply["type"] == "ack"  # what the frame says holds
    await server.http.put(f"/api/v1/sessions/{sid}/members/bob", json={"role": "viewer"})
    await bob.wait_until(lambda c: bool(frames_of(c, "bob")))
    assert frames_of(bob, "bob")[0]["role"] == "viewer"
    assert "post_message" not in frames_of(bob, "bob")[0]["capabilities"]
    await vera.wait_until(lambda c: bool(frames_of(c, "bob")))
    assert stock.unsolicited == []


async def test_a_rename_a_join_and_a_removal_are_told(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "owner", "bob": "editor", "carol": "editor"})
    named = await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "owner", "display_name": "Boss"}
    )
    assert named.is_success, named.text
    bob = await server.connect(sid, "bob", commands="text")
    path = f"/api/v1/sessions/{sid}/members"
    await server.http.put(f"{path}/alice", json={"role": "owner", "display_name": "Former"})
    await bob.wait_until(lambda c: bool(frames_of(c, "alice")))
    assert [(f["role"], f["display_name"]) for f in frames_of(bob, "alice")] == [
        ("owner", "Former")
    ]
    await server.http.put(f"{path}/alice", json={"role": "owner", "display_name": ""})
    await bob.wait_until(lambda c: len(frames_of(c, "alice")) == 2)
    assert frames_of(bob, "alice")[1]["display_name"] == ""  # cleared: the user id shows
    await server.http.put(f"{path}/dan", json={"role": "viewer", "display_name": "Dan"})
    await bob.wait_until(lambda c: bool(frames_of(c, "dan")))
    assert [(f["role"], f["display_name"]) for f in frames_of(bob, "dan")] == [("viewer", "Dan")]
    await server.http.delete(f"{path}/dan")
    await bob.wait_until(lambda c: len(frames_of(c, "dan")) == 2)
    assert frames_of(bob, "dan")[1] == {
        "type": "member",
        "user_id": "dan",
        "role": None,
        "display_name": "",
        "capabilities": [],
    }
    assert frames_of(bob, "carol") == []  # only who changed


async def test_a_custom_role_edited_is_told_for_its_holders(server: RunningServer) -> None:
    made = await server.http.put("/api/v1/roles/scribe", json={"capabilities": ["read_session"]})
    assert made.is_success, made.text
    sid = await server.new_session({"alice": "owner", "sam": "scribe"})
    sam = await server.connect(sid, "sam", commands="text")
    alice = await server.connect(sid, "alice", commands="text")
    edited = await server.http.put(
        "/api/v1/roles/scribe", json={"capabilities": ["read_session", "post_message"]}
    )
    assert edited.is_success, edited.text
    await sam.wait_until(lambda c: bool(frames_of(c, "sam")))
    assert "post_message" in frames_of(sam, "sam")[-1]["capabilities"]
    assert frames_of(sam, "alice") == []
    # The others are told nothing (the holders' role reads the same to them): alice's
    # socket hears its next frame, of a change of hers, and none before it of sam.
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "owner", "display_name": "Al"}
    )
    await alice.wait_until(lambda c: bool(frames_of(c, "alice")))
    assert [m["user_id"] for m in alice.unsolicited if m.get("type") == "member"] == ["alice"]
