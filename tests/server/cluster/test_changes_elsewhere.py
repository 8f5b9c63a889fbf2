"""A member change stored through another node binds the node that runs the session from
its commit, in force there or not yet: what it writes into the shared document because
"every member may read it", and the runs it starts (reviews RH-3's sibling, RH-2)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.settings import Settings
from tests.conftest import RunningServer, make_settings, postgres_database, serve_in_process
from tests.fake_model import Answer, FakeModel, Sent, Step, call
from tests.yclient import YClient

pytestmark = pytest.mark.postgres

CODE = "7731"


@dataclass
class Nodes:
    """Session ``sid`` runs on ``first`` (ann owner, bob and dave editors, a document
    some roles alone may read); ``change`` stores a change of bob through the
    second node's store, never put in force on ``first`` (its safety-net poll held)."""

    first: RunningServer
    second: RunningServer
    sid: str
    bob: YClient
    dave: YClient
    room: Any

    async def change(self, after: str | None) -> None:
        change = await self.second.app.state.parley.store.change_member(
            self.sid,
            "bob",
            None if after is None else Member("bob", after),
            int(time.time() * 1000),
            lambda _before, _actor: Decision(True, ""),
        )
        assert change.before is not None
        assert self.room.membership.members["bob"].role == "editor"  # not in force there


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, model: FakeModel, readers: tuple[str, ...] = ("owner", "editor")
) -> AsyncIterator[Nodes]:
    """``Nodes``, the document's readers the roles ``readers``."""
    async with postgres_database(migrated=True) as url:

        def node(name: str) -> Settings:
            return make_settings(url, tmp_path / name, cluster=True, node_id=name)

        async with (
            serve_in_process(node("a"), model) as first,
            serve_in_process(node("b"), model) as second,
        ):
            sid = await first.new_session({"ann": "owner", "bob": "editor", "dave": "editor"})
            vault = {"title": "Vault", "text": f"the vault code is {CODE}"}
            made = await first.http.post(
                f"/api/v1/sessions/{sid}/documents",
                json={**vault, "readers": {"roles": list(readers)}},
            )
            assert made.status_code == 201, made.text
            await first.connect(sid, "ann")  # the session runs on the first node
            bob = await first.connect(sid, "bob", commands="text")
            dave = await first.connect(sid, "dave", commands="text")
            room = first.app.state.parley.rooms.loaded(sid)

            async def not_in_force() -> None:
                """The first node's safety-net poll would put the change in force: held."""

            room.membership.refresh = not_in_force
            yield Nodes(first, second, sid, bob, dave, room)
            assert room.membership.members["bob"].role == "editor"  # not in force meanwhile


def vault_script(*after_tool: Step) -> FakeModel:
    """A model that looks the vault up, then says ``after_tool`` and what the tool said."""

    def script(sent: Sent) -> Answer:
        last = sent.messages[-1] if sent.messages else {}
        if last.get("role") == "tool":
            return [*after_tool, f"It says: {last['content']}"]
        if "vault" in sent.asked_text():
            return ["Let me look. ", call("search_documents", {"query": "vault code"})]
        return ["ok"]

    return FakeModel(script, echo_tools=False)


def reply_done(client: YClient) -> bool:
    return any(e["kind"] == "reply" and e["status"] == "done" for e in client.entries())


def shown(client: YClient) -> str:
    return "\n".join(str(e.get("content", "")) for e in client.entries())


@pytest.mark.parametrize("after", ["viewer", None], ids=["demoted", "removed"])
async def test_text_every_member_may_read_is_judged_by_a_change_stored_elsewhere(
    tmp_path: Path, after: str | None
) -> None:
    """RH-3's sibling: bob was demoted (or removed) through another node; the node running
    the session, every member in its memory an editor, wrote the tool step's result and
    the reply restricted to editors into the shared document, and bob's socket there was
    sent it. Now judged by the members as stored: kept private, pushed to dave alone."""
    async with two_nodes(tmp_path, vault_script()) as nodes:
        await nodes.change(after)
        await nodes.dave.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.bob.wait_until(reply_done, timeout=30)
        assert CODE not in shown(nodes.bob)
        await nodes.dave.wait_until(
            lambda c: any(CODE in m["text"] for m in c.unsolicited if m["type"] == "restricted"),
            timeout=30,
        )


async def test_a_reply_streaming_goes_private_at_a_change_stored_elsewhere(
    tmp_path: Path,
) -> None:
    """The same, the change made while the reply streams: its tool step was stored, and
    shared, before it; the text streamed after it is judged by it (refused at the group
    commit, judged again), kept private."""
    going_on = asyncio.Event()
    model = vault_script("The tool answered. ", going_on)
    async with two_nodes(tmp_path, model) as nodes:
        await nodes.dave.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.bob.wait_until(lambda c: "The tool answered." in shown(c), timeout=30)
        assert CODE in shown(nodes.bob)  # the tool step, stored before the change: shared
        await nodes.change("viewer")
        going_on.set()
        await nodes.bob.wait_until(reply_done, timeout=30)
        reply = next(e for e in nodes.bob.entries() if e["kind"] == "reply")
        assert CODE not in str(reply["content"])


async def test_a_run_does_not_start_for_who_lost_the_right_to_prompt_elsewhere(
    tmp_path: Path,
) -> None:
    """Review RH-2: bob's prompt waited behind dave's run; bob was made a viewer through
    another node. His run started on the node running the session (his role in memory)
    and streamed its reply to everyone. Now it fails ``forbidden``, no model call made."""
    first_done = asyncio.Event()

    def script(sent: Sent) -> Answer:
        return [first_done, "first answer"] if "first" in sent.asked_text() else ["Hello "]

    model = FakeModel(script)
    async with two_nodes(tmp_path, model) as nodes:
        await nodes.dave.command({"type": "prompt", "id": "p1", "text": "first"})
        await nodes.bob.command({"type": "prompt", "id": "p2", "text": "second"})
        await nodes.dave.wait_until(lambda c: len(model.requests) == 1, timeout=30)
        await nodes.change("viewer")
        first_done.set()

        def settled(client: YClient) -> dict[str, Any] | None:
            prompts = [e for e in client.entries() if e["kind"] == "prompt"]
            mine = [e for e in prompts if e["author"] == "bob"]
            return mine[0] if mine and mine[0]["status"] not in ("queued", "running") else None

        await nodes.bob.wait_until(lambda c: settled(c) is not None, timeout=30)
        prompt = settled(nodes.bob)
        assert prompt is not None
        assert (prompt["status"], prompt.get("reason_code")) == ("failed", "forbidden"), prompt
        assert model.requests_for("bob") == []


async def test_a_reply_streaming_shared_goes_private_at_a_policy_change_stored_elsewhere(
    tmp_path: Path,
) -> None:
    """The restricted-reply policy changed ``shared`` -> ``private`` through another node
    while a reply drawing on a document only owners read streams: the node running the
    session, its policy in memory still ``shared``, went on writing the vault's text into
    the shared document, for bob and dave, who may not read it. The policy is counted with
    the members: the text streamed after the change is judged by it, kept private."""
    going_on = asyncio.Event()
    model = vault_script("The tool answered. ", going_on)
    async with two_nodes(tmp_path, model, readers=("owner",)) as nodes:
        base = f"/api/v1/sessions/{nodes.sid}"
        shared = await nodes.first.http.patch(base, json={"restricted_replies": "shared"})
        assert shared.status_code == 200, shared.text
        ann = await nodes.first.connect(nodes.sid, "ann", commands="text")
        await ann.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.bob.wait_until(lambda c: "The tool answered." in shown(c), timeout=30)
        store = nodes.second.app.state.parley.store
        values = {"restricted_replies": "private", "restricted_replies_by": None}
        changed = await store.change_settings(nodes.sid, values, int(time.time() * 1000), "")
        assert changed["restricted_replies"] == "private"
        assert nodes.room.restricted_replies == "shared"  # not in force there
        going_on.set()
        await nodes.bob.wait_until(reply_done, timeout=30)
        reply = next(e for e in nodes.bob.entries() if e["kind"] == "reply")
        assert CODE not in str(reply["content"])
        assert CODE not in shown(nodes.dave)
        await ann.wait_until(
            lambda c: any(CODE in m["text"] for m in c.unsolicited if m["type"] == "restricted"),
            timeout=30,
        )
