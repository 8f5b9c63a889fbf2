"""Redefining a role through the REST handlers applies at once to its members: their
commands, and their sockets in the room (a ``Watcher`` in the place of a member's socket),
on the real SQLite store with no app. (Run scopes and restricted items across a reload are
tested on a room over the in-memory store: ``tests/server/runtime/test_scope_runs.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.server.http import access as access_api
from parley.server.http import members as members_api
from parley.server.http.models import RolePut
from parley.server.http.rest import ADMIN
from parley.session.closes import CloseCode
from parley.session.commands import PromptCommand
from parley.session.errors import Conflict
from tests.conftest import sqlite_url
from tests.fake_model import FakeModel
from tests.server.runtime.backend import backend, sql_store
from tests.server.runtime.harness import Watcher, memory_settings


async def test_redefining_a_role_applies_at_once(tmp_path: Path) -> None:
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel()) as b,
    ):
        state = b.state
        await access_api.put_role(
            state, "support", RolePut(capabilities=["read_session", "prompt"])
        )
        sid = await b.new_session({"sam": "support"})
        s = await b.session(sid)
        sam = Watcher("sam")  # sam's socket
        s.room.connections.add(sam)  # type: ignore[arg-type]
        ok = await s.send("sam", PromptCommand("1", "hello"))
        assert ok["type"] == "ack"
        await access_api.put_role(state, "support", RolePut(capabilities=["read_session"]))
        denied = await s.send("sam", PromptCommand("2", "again"))
        assert denied["code"] == "forbidden"
        listed = json.loads((await members_api.list_members(state, sid, ADMIN)).body)
        assert listed["members"][0]["capabilities"] == ["read_session"]
        with pytest.raises(Conflict) as held:
            await access_api.delete_role(state, "support")
        assert held.value.http_status == 409  # sam still holds it
        assert sam.closed is None
        await access_api.put_role(state, "support", RolePut(capabilities=[]))
        assert sam.closed is not None and sam.closed[0] == CloseCode.FORBIDDEN == 4403
