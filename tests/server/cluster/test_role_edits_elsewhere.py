"""A custom role edited through another node binds the node that runs a session where a
member holds it from the edit's commit, in force there or not yet (as a member change
does: ``test_changes_elsewhere``): what it writes into the shared document because
"every member may read it", and what its runs may use."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.server.store.access import AccessStore
from tests.conftest import RunningServer
from tests.fake_model import FakeModel
from tests.server.cluster.nodes import two_in_process
from tests.server.cluster.test_changes_elsewhere import CODE, reply_done, shown, vault_script
from tests.yclient import YClient

pytestmark = pytest.mark.postgres

BASE = ("read_session", "be_present", "prompt", "tool:search_documents")


@dataclass
class Nodes:
    """Session ``sid`` runs on ``first``: ann an owner, bob an ``auditor`` (a custom role
    that may prompt, search documents and read the vault, a document only owners are
    listed to read); ``edit`` stores
    a new definition of the role through the second node's store, never put in force on
    ``first`` (nobody is asked to reload)."""

    first: RunningServer
    second: RunningServer
    sid: str
    document: str
    ann: YClient
    bob: YClient

    async def edit(self, capabilities: set[str]) -> None:
        store = AccessStore(self.second.app.state.parley.store)
        await store.put_role("auditor", frozenset(capabilities), int(time.time() * 1000))
        roles = self.first.app.state.parley.rooms.roles
        assert f"read:{self.document}" in roles.capabilities("auditor")  # not in force there


@contextlib.asynccontextmanager
async def auditor_nodes(tmp_path: Path, model: FakeModel) -> AsyncIterator[Nodes]:
    async with two_in_process(tmp_path, model) as (_, first, second):
        role = await first.http.put("/api/v1/roles/auditor", json={"capabilities": BASE})
        assert role.status_code == 200, role.text
        sid = await first.new_session({"ann": "owner", "bob": "auditor"})
        vault = {"title": "Vault", "text": f"the vault code is {CODE}"}
        made = await first.http.post(
            f"/api/v1/sessions/{sid}/documents", json={**vault, "readers": {"roles": ["owner"]}}
        )
        assert made.status_code == 201, made.text
        document = made.json()["id"]
        reads = {"capabilities": [*BASE, f"read:{document}"]}
        role = await first.http.put("/api/v1/roles/auditor", json=reads)
        assert role.status_code == 200, role.text
        ann = await first.connect(sid, "ann", commands="text")  # runs on the first node
        bob = await first.connect(sid, "bob", commands="text")
        yield Nodes(first, second, sid, document, ann, bob)


async def test_text_every_member_may_read_is_judged_by_a_role_edited_elsewhere(
    tmp_path: Path,
) -> None:
    """bob's role lost its right to read the vault through another node; the node running
    the session, the role as it was in its memory, judged that every member might read
    the vault and wrote its code into the shared document, for bob. The edit counts on
    the lease row of the sessions where a member holds the role: judged by the roles as
    stored, the reply is kept private, pushed to ann alone."""
    async with auditor_nodes(tmp_path, vault_script()) as nodes:
        await nodes.edit(set(BASE))
        await nodes.ann.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.bob.wait_until(reply_done, timeout=30)
        assert CODE not in shown(nodes.bob)

        def pushed(client: YClient) -> Any:
            return any(CODE in m["text"] for m in client.unsolicited if m["type"] == "restricted")

        await nodes.ann.wait_until(pushed, timeout=30)


async def test_a_run_may_not_use_a_tool_its_role_lost_elsewhere(tmp_path: Path) -> None:
    """bob's role lost the right to search documents through another node, before his
    prompt: his run, judged by the role in the running node's memory, searched the vault
    and streamed its code. Judged by the roles as stored (the prompt's write saw the edit
    counted), the call is refused and the vault stays unread."""
    async with auditor_nodes(tmp_path, vault_script()) as nodes:
        reads = {*BASE, f"read:{nodes.document}"} - {"tool:search_documents"}
        await nodes.edit(reads)
        await nodes.bob.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.bob.wait_until(reply_done, timeout=30)
        assert CODE not in shown(nodes.bob)
        steps = [e for e in nodes.bob.entries() if e["kind"] == "tool"]
        assert [s["status"] for s in steps] == ["refused"], steps
