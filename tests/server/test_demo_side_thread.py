"""The browser demo's private side-thread in a real Chromium against a live server: bob asks
privately, the answer streams into his side panel alone, he summarises, edits and shares it,
and alice sees only what he shared (the tools and the build as in ``test_demo_browser``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.test_demo_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    _build_demo,
    _require_tools,
)

pytestmark = pytest.mark.node

MARKER = "ZQX-private-7f3e"
SHARED = "Checked privately: the proxy is fine."


async def test_ask_privately_then_share_to_session(tmp_path: Path) -> None:
    await asyncio.to_thread(_require_tools)
    from playwright.async_api import async_playwright

    await asyncio.to_thread(_build_demo)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            sid = await server.new_session({"alice": "editor", "bob": "editor"})
            problems: list[str] = []
            pages: dict[str, Any] = {}
            for name in ("alice", "bob"):
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.on("pageerror", lambda exc, n=name: problems.append(f"{n}: {exc}"))
                token = await server.token(sid, name)
                await page.goto(f"{server.base_url}/demo/?session={sid}&token={token}")
                await page.wait_for_selector("#conn[data-state=connected]")
                pages[name] = page
            alice, bob = pages["alice"], pages["bob"]

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
            assert not problems, problems
        finally:
            await browser.close()
