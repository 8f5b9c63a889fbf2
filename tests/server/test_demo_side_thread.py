"""The browser demo's private side-thread in a real Chromium against a live server: bob asks
privately, the answer streams into his side panel alone, he summarises, edits and shares it,
and alice sees only what he shared (the tools and the build as in ``test_demo_browser``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import chromium, screenshot

pytestmark = pytest.mark.node

MARKER = "ZQX-private-7f3e"
SHARED = "Checked privately: the proxy is fine."


async def test_ask_privately_then_share_to_session(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server, chromium() as browser:
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
