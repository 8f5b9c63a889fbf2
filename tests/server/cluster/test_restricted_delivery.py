"""The node that runs a session pushes restricted text stored after a member change made
on another node only to those the change leaves its readers, whether or not the change is
in force there yet (review RH-3)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.settings import Settings
from tests.conftest import make_settings, postgres_database, serve_in_process
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.yclient import YClient

pytestmark = pytest.mark.postgres


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text():
        return ["Let me look. ", call("search_documents", {"query": "vault code"})]
    return ["ok"]


def restricted(client: YClient) -> dict[str, dict[str, Any]]:
    return {m["entry_id"]: m for m in client.unsolicited if m["type"] == "restricted"}


def reply_done(client: YClient) -> bool:
    return any(e["kind"] == "reply" and e["status"] == "done" for e in client.entries())


@pytest.mark.parametrize("after", ["viewer", None], ids=["demoted", "removed"])
async def test_restricted_text_stored_after_a_change_elsewhere_is_not_pushed_to_who_lost_it(
    tmp_path: Path, after: str | None
) -> None:
    """Review RH-3: bob was demoted to viewer (or removed) through another node; until the
    node that runs the session put it in force there, a reply restricted to editors that
    it stored after the change was pushed to bob's socket on it, judged by his role in
    memory (a follower, judging by the store, did not). Here the change is stored through
    the second node's store and the first never puts it in force: dave, an editor still,
    is pushed the tool step and the reply; bob nothing."""
    async with postgres_database(migrated=True) as url:

        def node(name: str) -> Settings:
            return make_settings(url, tmp_path / name, cluster=True, node_id=name)

        model = FakeModel(script)
        async with (
            serve_in_process(node("a"), model) as first,
            serve_in_process(node("b"), model) as second,
        ):
            sid = await first.new_session({"ann": "owner", "bob": "editor", "dave": "editor"})
            vault = {"title": "Vault", "text": "the vault code is 7731"}
            made = await first.http.post(
                f"/api/v1/sessions/{sid}/documents",
                json={**vault, "readers": {"roles": ["editor"]}},
            )
            assert made.status_code == 201, made.text
            await first.connect(sid, "ann")  # the session runs on the first node
            bob = await first.connect(sid, "bob", commands="text")
            dave = await first.connect(sid, "dave", commands="text")
            room = first.app.state.parley.rooms.loaded(sid)

            async def not_in_force() -> None:
                """The first node's safety-net poll would put the change in force: held."""

            room.membership.refresh = not_in_force
            change = await second.app.state.parley.store.change_member(
                sid,
                "bob",
                None if after is None else Member("bob", after),
                int(time.time() * 1000),
                lambda _before, _actor: Decision(True, ""),
            )
            assert change.before is not None
            assert room.subject("bob") is not None and room.subject("bob").role == "editor"

            await dave.command({"type": "prompt", "id": "p", "text": "the vault code?"})
            await dave.wait_until(lambda c: len(restricted(c)) == 2, timeout=30)
            assert any("7731" in m["text"] for m in restricted(dave).values())
            # Restricted text is pushed before the update that stores it goes out: once
            # bob's socket has the reply done, whatever was pushed to it has come.
            await bob.wait_until(reply_done, timeout=30)
            assert restricted(bob) == {}
            assert room.subject("bob") is not None  # not in force there meanwhile
