"""The node that runs a session pushes restricted text stored after a member change made
on another node, and answers ``…/private`` for it, only to those the change leaves its
readers, whether or not the change is in force there yet (review RH-3)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.cluster.test_changes_elsewhere import reply_done, two_nodes
from tests.yclient import YClient

pytestmark = pytest.mark.postgres


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text():
        return ["Let me look. ", call("search_documents", {"query": "vault code"})]
    return ["ok"]


def restricted(client: YClient) -> dict[str, dict[str, Any]]:
    return {m["entry_id"]: m for m in client.unsolicited if m["type"] == "restricted"}


@dataclass
class Window:
    """Session ``sid`` runs on ``first``; bob's change (to ``after``) is stored through the
    second node's store and never put in force on ``first``; then dave's prompt drew on a
    document editors alone may read, and its tool step and reply were pushed to dave."""

    first: RunningServer
    sid: str
    bob: YClient
    dave: YClient
    room: Any


@contextlib.asynccontextmanager
async def bob_changed_elsewhere(tmp_path: Path, after: str | None) -> AsyncIterator[Window]:
    async with two_nodes(tmp_path, FakeModel(script), readers=("editor",)) as nodes:
        await nodes.change(after)
        await nodes.dave.command({"type": "prompt", "id": "p", "text": "the vault code?"})
        await nodes.dave.wait_until(lambda c: len(restricted(c)) == 2, timeout=30)
        assert any("7731" in m["text"] for m in restricted(nodes.dave).values())
        yield Window(nodes.first, nodes.sid, nodes.bob, nodes.dave, nodes.room)


@pytest.mark.parametrize("after", ["viewer", None], ids=["demoted", "removed"])
async def test_restricted_text_stored_after_a_change_elsewhere_is_not_pushed_to_who_lost_it(
    tmp_path: Path, after: str | None
) -> None:
    """Review RH-3: bob was demoted to viewer (or removed) through another node; until the
    node that runs the session put it in force there, a reply restricted to editors that
    it stored after the change was pushed to bob's socket on it, judged by his role in
    memory (a follower, judging by the store, did not). Here dave, an editor still, is
    pushed the tool step and the reply; bob nothing."""
    async with bob_changed_elsewhere(tmp_path, after) as window:
        # Restricted text is pushed before the update that stores it goes out: once bob's
        # socket has the reply done, whatever was pushed to it has come.
        await window.bob.wait_until(reply_done, timeout=30)
        assert restricted(window.bob) == {}


async def test_restricted_text_stored_after_a_demotion_elsewhere_is_not_read_by_who_lost_it(
    tmp_path: Path,
) -> None:
    """Review RH-3, the REST read on the node that runs the session: bob, demoted through
    another node, read ``…/entries/{id}/private`` of a reply stored after it (judged by his
    role in memory there). Now refused ``forbidden``, as on a follower; dave reads it."""
    async with bob_changed_elsewhere(tmp_path, "viewer") as window:
        first, sid = window.first, window.sid
        for entry_id in restricted(window.dave):
            path = f"/api/v1/sessions/{sid}/entries/{entry_id}/private"
            for user, status in (("dave", 200), ("bob", 403)):
                token = await first.token(sid, user)
                async with httpx.AsyncClient(base_url=first.base_url) as http:
                    read = await http.get(path, headers={"Authorization": f"Bearer {token}"})
                assert read.status_code == status, (user, read.text)
