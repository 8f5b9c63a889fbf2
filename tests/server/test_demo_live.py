"""The browser demo while replies stream, roles come from the server and the server goes
away: what a member clicks keeps working, and what the page shows stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import HeldModel, chromium, screenshot

pytestmark = pytest.mark.node

STREAMING = "#transcript li.kind-reply[data-status=streaming]"


async def test_queue_cancel_and_context_while_a_reply_streams(tmp_path: Path) -> None:
    # Some seventy words at 80 ms each, and the model held after forty of them: bob's reply
    # streams for seconds and cannot end before the checks below release it.
    model = HeldModel(token_delay_s=0.08)
    model.hold(after=40)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, model) as server, chromium() as browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        await bob.evaluate("window.parleyDemo.sendPrompt('first, a long answer please')")
        await alice.wait_for_selector(STREAMING)
        refreshed = int(await alice.get_attribute("#context", "data-refreshed") or 0)
        await alice.evaluate("window.parleyDemo.sendPrompt('then mine')")
        queued = "#queue li.queue-item[data-author=alice] button.cancel"
        await alice.wait_for_selector(queued)
        # A real mouse click (down, then up) on the queue's button while the reply streams:
        # the row is kept by key, so the button under the mouse is the same node throughout.
        await alice.click(queued)
        prompt = "#transcript li.kind-prompt[data-author=alice]"
        await alice.wait_for_selector(f"{prompt}[data-status=cancelled]")
        assert await alice.locator(STREAMING).count() == 1  # it happened during the stream
        # "What the model sees" refreshed while the reply was still streaming ...
        await alice.wait_for_function(
            f"Number(document.querySelector('#context').dataset.refreshed) > {refreshed}"
        )
        assert await alice.locator(STREAMING).count() == 1
        model.release()
        # ... and once more after it ended: the two messages (bob's prompt, its reply).
        await alice.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        await alice.wait_for_function(
            "document.querySelector('#context-messages').textContent === '2'"
        )
        assert await alice.locator("#errors .error").count() == 0
        await screenshot(alice, "demo-queue-cancel")
        assert not browser.problems, browser.problems


async def test_role_and_controls_come_from_the_server(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server, chromium() as browser:
        sid = await server.new_session({"olga": "owner", "ed": "editor", "vera": "viewer"})
        roles = {}
        for name in ("olga", "ed", "vera"):
            page = await browser.member(server, sid, name)
            roles[name] = page
            assert (
                await page.get_attribute("#whoami", "data-role")
                == {
                    "olga": "owner",
                    "ed": "editor",
                    "vera": "viewer",
                }[name]
            )
        assert await roles["olga"].is_enabled("#policy")
        assert await roles["ed"].is_disabled("#policy")
        assert await roles["ed"].is_enabled("#send")
        assert await roles["vera"].is_disabled("#send")
        assert await roles["vera"].is_disabled("#composer-text")
        # A role changed over REST is what the page shows once it is loaded again.
        put = await server.http.put(f"/api/v1/sessions/{sid}/members/vera", json={"role": "editor"})
        assert put.status_code == 200, put.text
        vera = await browser.member(server, sid, "vera")
        assert await vera.get_attribute("#whoami", "data-role") == "editor"
        assert await vera.is_enabled("#send")
        assert not browser.problems, browser.problems


async def test_presence_clears_others_when_the_server_is_gone(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with chromium() as browser:
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor", "bob": "editor"})
            alice = await browser.member(server, sid, "alice")
            await browser.member(server, sid, "bob")
            await alice.wait_for_selector("#presence li[data-user=bob]")
        # The server stopped: alice's page shows only herself, and says why.
        await alice.wait_for_selector("#conn:not([data-state=connected])")
        await alice.wait_for_selector("#presence li[data-user=bob]", state="detached")
        assert await alice.locator("#presence li").count() == 1
        assert await alice.is_visible("#presence-offline")
        await screenshot(alice, "demo-offline")
    # The lost connection's console errors (the socket failing to reconnect) are expected.
