"""What a team uses every day in the browser client: Markdown replies and messages (safe),
copy buttons, Stop and Esc, retry, display names, the composer's two destinations and its
keys, invite links and the session list, the model picker, documents, pins and facts, and
the items the model will get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import (
    Browser,
    HeldModel,
    acked,
    compose,
    on_the_browsers_loop,
    screenshot,
)

pytestmark = [pytest.mark.node, on_the_browsers_loop]

LIVE = ":is([data-status=queued], [data-status=running])"


def _settings(tmp_path: Path) -> Any:
    return make_settings(sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5)


async def _values(page: Any, selector: str) -> list[str]:
    found: list[str] = await page.eval_on_selector_all(selector, "ns => ns.map(n => n.value)")
    return found


async def test_markdown_is_rendered_highlighted_and_sanitised(
    tmp_path: Path, browser: Browser
) -> None:
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        await bob.context.grant_permissions(["clipboard-read", "clipboard-write"])
        text = (
            "**Deploy** notes: `v2`\n\n"
            "```python\ndef rollback(n):\n    return n - 1\n```\n\n"
            '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>\n'
            "[click](javascript:window.pwned=3) and https://example.org"
        )
        await compose(alice, text, to="team")
        row = bob.locator("#transcript li.kind-message[data-author=alice]")
        await row.locator(".content pre code .hljs-keyword").first.wait_for()
        assert await row.locator(".content strong").inner_text() == "Deploy"
        assert await row.locator(".content :not(pre) > code").inner_text() == "v2"
        # Raw HTML is text, scripts and handlers never run, javascript: links are dropped.
        assert await row.locator(".content img, .content script").count() == 0
        assert "<img" in await row.locator(".content").inner_text()
        assert await row.locator(".content a[href^='javascript']").count() == 0
        link = row.locator(".content a[href='https://example.org']")
        assert await link.get_attribute("rel") == "noopener noreferrer nofollow"
        assert await bob.evaluate("window.pwned === undefined")
        # A code block has its copy button; what it copies is the code.
        await row.locator("button.copy-code").click()
        await row.locator("button.copy-code[data-copied=yes]").wait_for(state="attached")
        copied = await bob.evaluate("navigator.clipboard.readText()")
        assert copied == "def rollback(n):\n    return n - 1\n"
        # A reply has a copy button too, once it is complete.
        await compose(alice, "summarise the deploy notes")
        reply = bob.locator("#transcript li.kind-reply[data-status=done]")
        await reply.locator("button.copy:visible").click()
        await reply.locator("button.copy[data-copied=yes]").wait_for(state="attached")
        assert "alice asked" in await bob.evaluate("navigator.clipboard.readText()")
        await screenshot(bob, "demo-markdown")
        assert not browser.problems, browser.problems


async def test_composer_keys_destinations_stop_and_retry(tmp_path: Path, browser: Browser) -> None:
    model = HeldModel()
    model.hold()  # every prompt below is stopped, cancelled or interrupted while it runs
    async with serve_in_process(_settings(tmp_path), model) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        box = alice.locator("#composer-text")
        # "Message the team": Shift+Enter is a new line, Enter sends, to the people only.
        await alice.click("#mode-team")
        assert await alice.get_attribute("#mode-team", "aria-checked") == "true"
        await box.click()
        await box.type("line one")
        await box.press("Shift+Enter")
        await box.type("line two")
        await box.press("Enter")
        await acked(alice)
        await alice.wait_for_selector("#transcript li.kind-message[data-author=alice]")
        entries = await alice.evaluate("window.parleyDemo.session.transcript")
        assert [(e["kind"], e["content"]) for e in entries] == [("message", "line one\nline two")]
        assert await box.input_value() == ""
        # @ai in a team message asks the AI.
        await box.type("@ai what is the status?")
        await box.press("Enter")
        await acked(alice)
        prompt = alice.locator(f"#transcript li.kind-prompt[data-author=alice]{LIVE}")
        await prompt.wait_for()
        assert await prompt.locator(".content").inner_text() == "what is the status?"
        # Stop stands by the composer while the prompt waits or runs; it cancels it.
        await alice.click("#stop")
        await alice.wait_for_selector("#transcript li.kind-prompt[data-status=cancelled]")
        await alice.wait_for_selector("#stop", state="hidden")
        # Esc stops the running prompt too, not one that waits behind it (review K5: the
        # newest waiting one was cancelled, and the reply went on).
        await alice.click("#mode-ai")
        await box.fill("a long answer please")
        await box.press("Enter")
        await acked(alice)  # Enter before the ack sends nothing (one command per intent)
        await alice.wait_for_selector("#transcript li.kind-prompt[data-status=running]")
        await box.fill("then this one")
        await box.press("Enter")
        await alice.wait_for_selector("#transcript li.kind-prompt[data-status=queued]")
        await box.press("Escape")
        cancelled = "#transcript li.kind-prompt[data-status=cancelled]"
        await alice.wait_for_function(f"document.querySelectorAll({cancelled!r}).length == 2")
        stopped = await alice.locator(f"{cancelled} .content").all_inner_texts()
        assert stopped == ["what is the status?", "a long answer please"]
        await box.press("Escape")  # then the one that waited (running now, or still waiting)
        await alice.wait_for_function(f"document.querySelectorAll({cancelled!r}).length == 3")
        # Retry: a prompt pre-empted by a newer one (policy interrupt) is asked again.
        patch = await server.http.patch(f"/api/v1/sessions/{sid}", json={"policy": "interrupt"})
        assert patch.status_code == 200, patch.text
        await compose(alice, "first question")
        await alice.wait_for_selector(f"#transcript li.kind-prompt{LIVE}")
        await compose(alice, "second question")
        first = alice.locator("#transcript li.kind-prompt[data-status=interrupted]")
        # A double click is one Retry (review K1: each click was a command, and ran).
        await first.locator("button.retry:visible").dblclick()
        asked = "e => e.kind === 'prompt' && e.content === 'first question'"
        await alice.wait_for_function(
            f"window.parleyDemo.session.transcript.filter({asked}).length === 2"
        )
        # Sent on the same socket after both clicks: stored after anything they sent.
        await compose(alice, "after the retry", to="team")
        await alice.wait_for_selector("#transcript li:has-text('after the retry')")
        entries = await alice.evaluate("window.parleyDemo.session.transcript")
        assert [e["content"] for e in entries].count("first question") == 2
        assert await alice.locator("#errors .error").count() == 0
        assert not browser.problems, browser.problems


async def test_people_by_display_name_in_plain_words(tmp_path: Path, browser: Browser) -> None:
    model = HeldModel()
    async with serve_in_process(_settings(tmp_path), model) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        put = await server.http.put(
            f"/api/v1/sessions/{sid}/members/alice",
            json={"role": "editor", "display_name": "Alice Martin"},
        )
        assert put.status_code == 200
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        await bob.wait_for_selector("#presence li[data-user=alice]")
        assert "Alice Martin" in await bob.inner_text("#presence li[data-user=alice]")
        assert await bob.inner_text("#presence li[data-user=alice] .avatar") == "AM"
        # Bob names himself; alice sees the name once his presence is stamped with it.
        await bob.fill("#my-name", "Bob Stone")
        await bob.click("#name-form button[type=submit]")
        await bob.wait_for_function(
            "document.querySelector('#whoami strong').textContent == 'Bob Stone'"
        )
        await compose(bob, "hello from bob", to="team")
        await alice.reload()
        await alice.wait_for_selector("#transcript li[data-author=bob] .author:text('Bob Stone')")
        # Two prompts: the second waits, shown once (in the conversation, with its place).
        model.hold()  # until then, alice's reply cannot end
        await compose(alice, "first, please")
        await compose(bob, "then me")
        waiting = alice.locator("#transcript li.kind-prompt[data-author=bob][data-status=queued]")
        await waiting.wait_for()
        assert await waiting.locator(".status").inner_text() == "waiting · next in line"
        assert "then me" not in await alice.inner_text("#queue")
        assert "Bob Stone" in await alice.inner_text("#queue")
        model.release()
        await alice.wait_for_function(
            "document.querySelectorAll('#transcript li.kind-reply[data-status=done]').length == 2"
        )
        shown = await alice.text_content("#transcript") or ""
        for label in ("parley-offline", "#1", "#2", "streaming", "posted", "queued"):
            assert label not in shown, label
        assert "Assistant" in shown and "asked the AI" in shown and "to the team" in shown
        await screenshot(alice, "demo-names")
        assert not browser.problems, browser.problems


async def test_invite_link_session_list_and_model_picker(tmp_path: Path, browser: Browser) -> None:
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        members = {"olga": "owner", "alice": "editor", "bob": "editor"}
        sid = await server.new_session(members, title="Ops room")
        other = await server.new_session({"alice": "viewer"}, title="Elsewhere")
        invite = await server.http.post(
            f"/api/v1/sessions/{sid}/invites", json={"user_id": "alice"}
        )
        assert invite.status_code == 201, invite.text
        link = server.base_url + invite.json()["link"]
        page = await browser.page("alice", link)
        await page.wait_for_selector("#conn[data-state=connected]")
        await page.wait_for_selector("#whoami[data-role=editor]", state="attached")
        # The secret left the address bar, and no token went into it.
        assert "invite" not in page.url and "token" not in page.url
        assert page.url.endswith(f"?session={sid}")
        # The session list: this browser's session, and the other one alice is in.
        await page.click("#all-sessions")
        await page.wait_for_selector(f"#session-list li[data-session='{sid}'] a:text('Ops room')")
        await page.wait_for_selector(
            f"#session-list li[data-session='{other}']:has-text('Elsewhere')"
        )
        await screenshot(page, "demo-sessions")
        await page.click(f"#session-list li[data-session='{sid}'] a")
        await page.wait_for_selector("#conn[data-state=connected]")
        assert await page.is_disabled("#model")  # an editor does not choose the model
        # A used link is refused, in words, on the join page.
        again = await browser.page("mallory", link)
        await again.wait_for_selector("#join-error:has-text('does not work')")
        assert "invite" not in again.url

        # The owner: picks the model, mints a link, attaches a document.
        olga = await browser.member(server, sid, "olga")
        await olga.wait_for_selector("#model:enabled")
        default = await olga.input_value("#model")
        assert default in await _values(olga, "#model option")
        await olga.select_option("#model", default)
        await olga.wait_for_selector("#model-note:has-text('Model changed')")
        # alice has signed in: only she or the admin key may mint her a link (review RI-2),
        # and the page says why; bob has not.
        await olga.select_option("#invite-user", "alice")
        await olga.click("#invite-form button[type=submit]")
        await olga.wait_for_selector("#invite-note:has-text('known here already')")
        await olga.select_option("#invite-user", "bob")
        await olga.click("#invite-form button[type=submit]")
        await olga.wait_for_selector("#invite-link:visible")
        minted = await olga.locator("#invite-link").input_value()
        assert "/demo/#invite=" in minted
        await olga.set_input_files(
            "#document-file",
            {"name": "runbook.md", "mimeType": "text/markdown", "buffer": b"# Runbook\nRestart."},
        )
        await olga.click("#document-form button[type=submit]")
        await olga.wait_for_selector("#documents li:text('runbook.md')")
        # Review K7: readable by the roles held at upload only; a viewer added later is
        # a reader too (every built-in role, and the custom roles held now).
        await server.http.put(f"/api/v1/sessions/{sid}/members/vic", json={"role": "viewer"})
        vic = {"Authorization": f"Bearer {await server.token(sid, 'vic')}"}
        listed = await server.http.get(f"/api/v1/sessions/{sid}/documents", headers=vic)
        assert "runbook.md" in listed.text, listed.text
        assert await page.locator("#document-form").is_hidden()  # editors only read the list
        refused = (
            "mallory console error: Failed to load resource: the server responded with a status of 401",  # noqa: E501 (the browser's words)
            "olga console error: Failed to load resource: the server responded with a status of 403",  # noqa: E501 (alice's link)
        )
        assert [p for p in browser.problems if not p.startswith(refused)] == [], browser.problems


async def test_pins_facts_and_the_items_the_model_gets(tmp_path: Path, browser: Browser) -> None:
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor", "vera": "viewer"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        vera = await browser.member(server, sid, "vera")
        await alice.fill("#fact-key", "service")
        await alice.fill("#fact-value", "payments-api")
        await alice.click("#fact-form button[type=submit]")
        await bob.wait_for_selector("#facts li[data-key=service]:has-text('payments-api')")
        await bob.click("#facts li[data-key=service] button:text('Edit')")
        await bob.fill("#fact-value", "payments-api v2")
        await bob.click("#fact-form button[type=submit]")
        await alice.wait_for_selector("#facts li[data-key=service]:has-text('payments-api v2')")
        assert await vera.locator("#fact-form").is_hidden()
        assert await vera.locator("#facts button").count() == 0

        # The same text from two people is given once: the later copy, at its own place
        # under its own author, is a reference to the first (the same as written: in
        # other spacing or case, each would be given in full).
        said = "is the database healthy? the dashboards show 40% errors on the primary since 14:02"
        await compose(bob, said, to="team")
        await compose(alice, said, to="team")
        await alice.click("#context-panel > summary")  # asked for while it is open
        await alice.wait_for_selector("#context-folded[data-count='1']")
        await alice.click(".context-details summary")
        item = alice.locator("#context-items li.ctx-user:has-text('the same text bob wrote')")
        await item.wait_for()
        assert "alice" in await item.inner_text()
        await screenshot(alice, "demo-context")
        # Then pinned (a pinned message is kept word for word):
        message = alice.locator("#transcript li.kind-message[data-author=bob]")
        await message.locator("button.pin").click()
        await vera.wait_for_selector("#pins li:has-text('is the database healthy?')")
        await alice.click("#pins li button:text('Unpin')")
        await vera.wait_for_selector("#pins li", state="detached")
        await alice.click("#facts li[data-key=service] button:text('Remove')")
        await bob.wait_for_selector("#facts li", state="detached")
        assert not browser.problems, browser.problems
