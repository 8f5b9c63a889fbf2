"""Summaries turned off: turns that no longer fit are left out, never summarised. In a room
on the in-memory store; the rest of the summary rules are in
``tests/server/runtime/test_summaries.py``."""

from __future__ import annotations

from tests.server.runtime.harness import RecordingOffline, memory_session
from tests.server.runtime.test_summaries import SMALL_WINDOW, ask, chat, preview


async def test_summaries_can_be_turned_off() -> None:
    provider = RecordingOffline()
    async with memory_session({"alice": "editor"}, provider, summaries=False, **SMALL_WINDOW) as s:
        await chat(s, "alice", 0, 40)
        await ask(s, "alice", "status 1?")
        # A later run is given the over-budget turns' absence, never a summary of them.
        await ask(s, "alice", "status 2?")
        later = provider.calls("reply")[-1]
        assert len(provider.calls("reply")) == 2
        assert "[Summary of the conversation" not in later.system
        assert provider.calls("summary") == []
        built = preview(s, "alice")  # what the context preview shows (the REST handler's build)
        assert built.summary is None
        assert any(x.reason == "over budget" for x in built.excluded)
