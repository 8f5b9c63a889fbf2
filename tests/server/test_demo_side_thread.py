"""The browser demo's private side-thread in a real Chromium against a live server: bob asks
privately, the answer streams into his side panel alone, he summarises, edits and shares it,
and alice sees only what he shared (the tools and the build as in ``test_demo_browser``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import Browser, on_the_browsers_loop, screenshot

pytestmark = [pytest.mark.node, on_the_browsers_loop]

MARKER = "ZQX-private-7f3e"
SHARED = "Checked privately: the proxy is fine."


async def test_ask_privately_then_share_to_session(tmp_path: Path, browser: Browser) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")

        await bob.fill("#composer-text", f"{MARKER} is the proxy at fault?")
        await bob.click("#ask-privately")
        reply = "#side-thread-turns li[data-kind=reply][data-status=done]"
        await bob.wait_for_selector(reply)
        assert await bob.input_value("#composer-text") == ""
        assert await bob.input_value("#side-thread-draft") != ""
        await bob.click("#side-thread-summarise")
        await bob.wait_for_function(
            "document.querySelectorAll('#side-thread-turns li[data-kind=reply]"
            "[data-status=done]').length === 2"
        )
        await screenshot(bob, "demo-side-thread")
        await bob.fill("#side-thread-draft", SHARED)
        await bob.click("#side-thread-share")
        posted = f"#transcript li.kind-message[data-author=bob]:has-text('{SHARED}')"
        for page in (alice, bob):
            await page.wait_for_selector(posted)
        assert await alice.locator("#transcript li.entry").count() == 1
        await alice.wait_for_selector(f"{posted}[data-source=private_thread]")
        assert await alice.is_hidden("#side-thread")
        assert MARKER not in await alice.content()
        assert MARKER in await bob.inner_text("#side-thread-turns")
        assert await bob.locator("#errors .error").count() == 0
        assert not browser.problems, browser.problems


async def test_a_shared_message_is_marked_when_drawn_later(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K6: the "from a private thread" mark was set only on rows that existed two
    frames after a transcript change, so a shared message drawn later (by *Show earlier*,
    past the newest 200 entries) read as an ordinary one. Each row now carries its source."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        commands_per_second=1000.0,
        commands_burst=1000,
        user_commands_per_second=1000.0,
    )
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        token = await server.token(sid, "bob")
        bob = {"Authorization": f"Bearer {token}"}
        opened = await server.http.post(f"/api/v1/sessions/{sid}/threads", json={}, headers=bob)
        assert opened.is_success, opened.text
        thread = opened.json().get("thread_id") or opened.json()["id"]
        shared = await server.http.post(
            f"/api/v1/sessions/{sid}/threads/{thread}/share", json={"text": SHARED}, headers=bob
        )
        assert shared.is_success, shared.text
        for n in range(205):
            posted = await server.http.post(
                f"/api/v1/sessions/{sid}/messages", json={"text": f"filler {n}", "as_user": "bob"}
            )
            assert posted.is_success, posted.text
        alice = await browser.member(server, sid, "alice")
        await alice.wait_for_selector("#transcript li:has-text('filler 204')")
        await alice.click("#transcript-earlier")
        row = f"#transcript li.kind-message:has-text('{SHARED}')"
        await alice.wait_for_selector(row)
        assert await alice.get_attribute(row, "data-source") == "private_thread"
        assert not browser.problems, browser.problems
