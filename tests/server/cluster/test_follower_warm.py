"""A following node makes a session's history ready for the fold as it loads its replica,
as a node that runs it does: what is kept of texts is in memory only, and a replica's
reads build context too (a preview), which folded a long history at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from parley.session.shape import shape_of
from parley.session.tokens import count_tokens
from tests.conftest import make_settings, postgres_database, serve_in_process
from tests.server.runtime.test_context import texts_read

pytestmark = pytest.mark.postgres


async def test_a_replica_is_made_ready_as_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = uuid.uuid4().hex
    async with postgres_database(migrated=True) as url:
        first = make_settings(url, tmp_path / "a", cluster=True, node_id="a")
        second = make_settings(url, tmp_path / "b", cluster=True, node_id="b")
        async with serve_in_process(first) as runs, serve_in_process(second) as follows:
            sid = await runs.new_session({"ann": "editor", "bob": "editor"})
            ann = await runs.connect(sid, "ann")  # the session runs on the first node
            for i in range(3):
                text = "".join(f"x y z {marker} {i}\n" for _ in range(200))
                reply = await ann.command({"type": "message", "id": f"m{i}", "text": text})
                assert reply["type"] == "ack", reply
            shape_of.clear()  # the second node as a process of its own: nothing kept
            count_tokens.clear()
            read = texts_read(monkeypatch)
            await follows.connect(sid, "bob")  # loads the replica here
            assert follows.app.state.parley.rooms.cluster.live_elsewhere == {sid}
            assert sum(marker in text for text in read) == 6  # shaped and counted
