"""Commands resent after a reconnect, over a real socket: a client that lost its acks
resends everything unanswered at once (both SDKs do), past the command rate; what was
acknowledged lately is answered as it was, and nothing is stored twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.fake_model import FakeModel


async def test_a_burst_of_resent_commands_gets_its_first_acks_past_the_rate(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_per_second=0.01,
        commands_burst=5,
        user_commands_per_second=0.01,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"ann": "editor"})
        ann = await server.connect(sid, "ann")
        sent = [{"type": "message", "id": f"m{n}", "text": f"note {n}"} for n in range(5)]
        first = [await ann.command(message) for message in sent]
        assert [a["type"] for a in first] == ["ack"] * 5
        for _ in range(2):  # reconnects, resending all at once: past the member's rate
            again = await server.connect(sid, "ann")
            resent = await asyncio.gather(*(again.command(message) for message in sent))
            assert list(resent) == first
        over = await again.command({"type": "message", "id": "m5", "text": "new"})
        assert (over["type"], over["code"]) == ("error", "rate_limited")  # still in force
        texts = [e["content"] for e in again.entries() if e["kind"] == "message"]
        assert texts == [f"note {n}" for n in range(5)]
