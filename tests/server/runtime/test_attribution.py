"""Issue 17 in a room on the in-memory store: the model is never told the wrong person
asked. (The forgery test, which also goes through REST, stays with the app:
``tests/server/test_attribution.py``.)"""

from __future__ import annotations

import asyncio

from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.fake_model import FakeModel
from tests.server.runtime.harness import RecordingOffline, memory_session

ROLL_BACK = "We should roll back the checkout deploy from 14:02 now"


async def test_a_message_of_the_same_words_as_a_prompt_is_not_an_ask() -> None:
    """bob's and alice's messages of the same words as alice's prompt stay at their place,
    each its author's (a later copy a reference to the first); only the prompt asks, in
    full (review J: merged with the prompt, words moved to where it was asked)."""
    provider = RecordingOffline()
    async with memory_session({"alice": "editor", "bob": "editor"}, provider) as s:
        assert (await s.message("bob", ROLL_BACK))["type"] == "ack"
        assert (await s.message("alice", ROLL_BACK))["type"] == "ack"
        asked = await s.prompt("alice", ROLL_BACK)
        await s.settled(asked["prompt_id"])

        (request,) = provider.requests
        assert request.issuers == ("alice",)
        contents = [m.content for m in request.messages]
        assert contents[:2] == [
            f"[bob wrote, message #1]\n{ROLL_BACK}",  # named by alice's reference
            "[alice wrote]\n[the same text bob wrote in message #1]",
        ]
        assert contents[2] == f"[alice asks you]\n{ROLL_BACK}"
        assert request.messages[-1].author == "alice"
        (reply,) = [e.content for e in s.room.doc.entries() if e.kind == "reply"]
        assert f"alice asked: \u201c{ROLL_BACK}\u201d" in reply
        assert "[" not in reply  # the server's line is never quoted back

        # Once answered, each is earlier content: nobody asks it.
        built = s.room.context.build((), s.room.runs.scope_for(["bob"], preview=True))
        contents = [m.content for m in built.request.messages]
        assert contents[0] == f"[bob wrote, message #1]\n{ROLL_BACK}"
        assert contents[2] == f"[alice wrote]\n{ROLL_BACK}"


VARIANTS = [  # (alice's words, mallory's variant after them): review J1
    (
        "The recovery code for the prod vault is kQ7rTz9Xw2",
        "the recovery code for the prod vault is Kq7RtZ9xW2",
    ),
    ("To clean up, run: git clean -fdx ..", "to clean up, run: git clean -fdx"),
    ("Straße 12 is the delivery address", "STRASSE 12 is the delivery address"),
]


async def test_another_members_case_variant_reaches_the_model_in_its_own_words() -> None:
    """Review J1, through the runner to the model's wire: mallory's case and stop variants
    of alice's messages were folded into them, sent as ``[alice and mallory each wrote]``
    in mallory's wording (alice's code, her ``..``, her ``Straße`` gone); and in a
    coalesced run alice's own prompt was sent as mallory's lower-case copy."""
    model = FakeModel(lambda sent: ["ok"])
    members = {"alice": "editor", "mallory": "editor", "bob": "editor", "olga": "editor"}
    async with memory_session(members, model, policy=Policy.COALESCE) as s:
        for alices, _ in VARIANTS:
            assert (await s.message("alice", alices))["type"] == "ack"
        for _, mallorys in VARIANTS:
            assert (await s.message("mallory", mallorys))["type"] == "ack"
        asked = await s.prompt("bob", "What recovery code, clean-up command and address?")
        await s.settled(asked["prompt_id"])
        sent = [(m.get("name"), m["content"]) for m in model.requests_for("bob")[-1].messages]
        assert sent[:6] == [
            *(("alice", f"[alice wrote]\n{alices}") for alices, _ in VARIANTS),
            *(("mallory", f"[mallory wrote]\n{mallorys}") for _, mallorys in VARIANTS),
        ]

        # Coalesced: both prompts wait while olga's run holds the model, then one run.
        model.gate = asyncio.Event()
        holding = await s.prompt("olga", "[wait] hold the model")
        while s.status(str(holding["prompt_id"])) is not PromptStatus.RUNNING:
            await s.watcher.changed()
        alices = "Please draft the wire of 5000 EUR to IBAN code GB82WeSt12345698765432."
        mallorys = "please draft the wire of 5000 eur to iban code gb82west12345698765432"
        first = await s.prompt("alice", alices)
        second = await s.prompt("mallory", mallorys)
        model.gate.set()
        await s.settled(str(first["prompt_id"]), str(second["prompt_id"]))
        (run,) = [r for r in model.requests if set(r.issuers) == {"alice", "mallory"}]
        assert [m["content"] for m in run.asked] == [
            f"[alice asks you]\n{alices}",
            f"[mallory asks you]\n{mallorys}",
        ]
