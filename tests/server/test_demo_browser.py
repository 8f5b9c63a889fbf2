"""The browser demo (client-demo/, served at /demo) in a real Chromium against a live server:
three members, one of them a viewer, through the UI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.demo_browser import Browser, HeldModel, compose, on_the_browsers_loop, screenshot
from tests.yclient import all_replies_settled

pytestmark = [pytest.mark.node, on_the_browsers_loop]


async def test_demo_in_three_browsers(tmp_path: Path, browser: Browser) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    model = HeldModel(token_delay_s=0.02)
    async with serve_in_process(settings, model) as server, browser:
        sid = await server.new_session(
            {"alice": "editor", "bob": "editor", "vera": "viewer"}, title="Incident 42"
        )
        pages = {name: await browser.member(server, sid, name) for name in ("alice", "bob", "vera")}
        alice, bob, vera = pages["alice"], pages["bob"], pages["vera"]

        # Everyone sees everyone else present (awareness, stamped by the server).
        for page in pages.values():
            for other in pages:
                await page.wait_for_selector(f"#presence li[data-user={other}]")

        # Alice and Bob prompt at the same moment, through the UI.
        await alice.fill("#composer-text", "What changed in the last deploy?")
        await bob.fill("#composer-text", "Is the database healthy?")
        await bob.wait_for_selector("#presence li[data-user=alice].typing")
        model.hold()
        await asyncio.gather(alice.click("#send"), bob.click("#send"))  # "Ask the AI" mode
        # The reply streams in: the page shows it while it is still being written.
        await bob.wait_for_selector("#transcript li.kind-reply[data-status=streaming] .content")
        model.release()

        done = (
            "document.querySelectorAll('#transcript li.kind-reply[data-status=done]').length === 2"
        )
        for page in pages.values():
            await page.wait_for_function(done)
        views = {name: await _transcript(page) for name, page in pages.items()}
        assert views["alice"] == views["bob"] == views["vera"], views
        entries = views["alice"]
        assert [e["kind"] for e in entries] == ["prompt", "reply", "prompt", "reply"], entries
        assert {entries[0]["author"], entries[2]["author"]} == {"alice", "bob"}
        for prompt, reply in (entries[0:2], entries[2:4]):
            assert prompt["status"] == "done" and reply["status"] == "done"
            assert f"{prompt['author']} asked" in reply["content"]
        assert await alice.locator("#queue li").count() == 0
        assert await alice.input_value("#composer-text") == ""
        for page in (alice, bob):  # no error was shown to the editors
            assert await page.locator("#errors .error").count() == 0

        # The context panel shows what the model would be given: alice pastes again, as
        # written, what bob pasted, and her next input has it once (hers a reference).
        pasted = "ERROR 14:02:11 payments-api: connection pool exhausted (40 of 40 in use)"
        await compose(bob, pasted, to="team")
        await compose(alice, pasted, to="team")
        await alice.click("#context-panel > summary")  # asked for while it is open
        await alice.wait_for_selector("#context-folded[data-count='1']")
        assert "of" in await alice.inner_text("#context-tokens")
        assert await alice.inner_text("#context-withheld") == "0"

        # A message for the people only, and a prompt its author cancels while it runs.
        await compose(bob, "I'll check the dashboards", to="team")
        await alice.wait_for_selector(
            "#transcript li.kind-message[data-author=bob][data-status=posted]"
        )
        model.hold()  # so the reply cannot end before the cancel, however loaded the machine
        await compose(alice, "Write me a very long postmortem")
        live = (
            "#transcript li.kind-prompt[data-author=alice]"
            ":is([data-status=queued], [data-status=running])"
        )
        prompt_id = await alice.get_attribute(live, "data-id")
        await alice.click(f"{live} button.cancel")
        for page in pages.values():
            await page.wait_for_selector(
                f"#transcript li[data-id='{prompt_id}'][data-status=cancelled]"
            )
        assert await alice.locator("#errors .error").count() == 0

        # The viewer's controls are disabled from the start: the role comes from the server.
        assert await vera.is_disabled("#send")
        assert await vera.is_disabled("#composer-text")
        # ... and a prompt forced through the page's API gets a readable `forbidden` error.
        reply = await vera.evaluate("window.parleyDemo.sendPrompt('let me in')")
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        error = vera.locator("#errors .error[data-code=forbidden]")
        await error.wait_for()
        assert "Not allowed (prompt)" in await error.inner_text()
        assert await vera.locator("#errors .error").count() == 1

        for name, p in pages.items():
            await screenshot(p, f"demo-{name}")
        assert not browser.problems, browser.problems


async def _transcript(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        "#transcript li.entry",
        """rows => rows.map(r => ({
            kind: r.dataset.kind, author: r.dataset.author, status: r.dataset.status,
            content: r.querySelector('.content').textContent}))""",
    )
    return rows


async def test_a_reader_sees_restricted_text_in_place_after_a_reload(
    tmp_path: Path, browser: Browser
) -> None:
    """Review (browser client): a reply drawn from a document only bob may read showed bob
    the placeholder, like everyone else, and a reload kept it so. His page shows the text
    in place, marked; alice's shows the placeholder and never the text."""
    secret = "the vault code is 7731"

    def script(sent: Sent) -> Answer:
        if "vault" in sent.asked_text():
            return ["Let me look. ", call("search_documents", {"query": "vault code"})]
        return ["ok"]

    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, FakeModel(script)) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        made = await server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "Vault", "text": secret, "readers": {"users": ["bob"]}},
        )
        assert made.status_code == 201
        bob_socket = await server.connect(sid, "bob")
        await bob_socket.command({"type": "prompt", "id": "p", "text": "what is the vault code?"})
        await bob_socket.wait_until(lambda c: all_replies_settled(c, 1))
        bob = await browser.member(server, sid, "bob")  # opened after: greeted with it
        alice = await browser.member(server, sid, "alice")
        restricted = "#transcript li.kind-reply .content.restricted"
        await bob.wait_for_selector(restricted)
        assert "7731" in await bob.inner_text(restricted)
        await alice.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        assert await alice.locator(restricted).count() == 0
        assert "7731" not in await alice.inner_text("#transcript")
        # What he reads is what he copies and what his Pinned panel shows (review: both
        # gave him the placeholder).
        await bob.context.grant_permissions(["clipboard-read", "clipboard-write"])
        reply = bob.locator("#transcript li.kind-reply", has=bob.locator(".content.restricted"))
        await reply.locator("button.copy:visible").click()
        await reply.locator("button.copy[data-copied=yes]").wait_for(state="attached")
        copied = await bob.evaluate("navigator.clipboard.readText()")
        assert copied == await bob.evaluate(
            "(id) => window.parleyDemo.app.restricted.get(id)",
            await reply.get_attribute("data-id"),
        )
        assert "7731" in copied
        await reply.locator("button.pin").click()
        pinned = bob.locator("#pins li .pin-text")
        await pinned.wait_for()
        shown = await pinned.inner_text()
        assert shown.startswith("Assistant: ") and "restricted" not in shown, shown
        await alice.wait_for_selector("#pins li")
        assert "7731" not in await alice.inner_text("#pins")
