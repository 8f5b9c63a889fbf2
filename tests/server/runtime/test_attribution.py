"""Issue 17 in a room on the in-memory store: the model is never told the wrong person
asked. (The forgery test, which also goes through REST, stays with the app:
``tests/server/test_attribution.py``.)"""

from __future__ import annotations

from tests.server.runtime.harness import RecordingOffline, memory_session

ROLL_BACK = "We should roll back the checkout deploy from 14:02 now"


async def test_a_message_folded_into_a_prompt_is_not_an_ask() -> None:
    provider = RecordingOffline()
    async with memory_session({"alice": "editor", "bob": "editor"}, provider) as s:
        posted = await s.message("alice", ROLL_BACK)
        assert posted["type"] == "ack"
        asked = await s.prompt("bob", f"{ROLL_BACK}?")
        await s.settled(asked["prompt_id"])

        (request,) = provider.requests
        assert request.issuers == ("bob",)
        last = request.messages[-1]
        assert last.content == f"[alice wrote, bob asks you]\n{ROLL_BACK}?"
        assert last.author == "bob" and last.authors == ("alice", "bob")
        (reply,) = [e.content for e in s.room.doc.entries() if e.kind == "reply"]
        assert f"bob asked: \u201c{ROLL_BACK}?\u201d (alice wrote much the same)" in reply
        assert "[" not in reply  # the server's line is never quoted back

        # Once answered, both are earlier content: each wrote it, nobody asks it.
        built = s.room.context.build((), s.room.runs.scope_for(["alice"], preview=True))
        contents = [m.content for m in built.request.messages]
        assert f"[alice and bob each wrote]\n{ROLL_BACK}?" in contents
