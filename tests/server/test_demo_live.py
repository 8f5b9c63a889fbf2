"""The browser demo while replies stream, roles come from the server and the server goes
away: what a member clicks keeps working, and what the page shows stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import Browser, HeldModel, compose, on_the_browsers_loop, screenshot

pytestmark = [pytest.mark.node, on_the_browsers_loop]

STREAMING = "#transcript li.kind-reply[data-status=streaming]"


async def test_queue_cancel_and_context_while_a_reply_streams(
    tmp_path: Path, browser: Browser
) -> None:
    # Some seventy words at 80 ms each, and the model held after forty of them: bob's reply
    # streams for seconds and cannot end before the checks below release it.
    model = HeldModel(token_delay_s=0.08)
    model.hold(after=40)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, model) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        await bob.evaluate("window.parleyDemo.sendPrompt('first, a long answer please')")
        previews: list[str] = []
        alice.on("request", lambda r: previews.append(r.url) if "/context?" in r.url else None)
        await alice.wait_for_selector(STREAMING)
        await alice.evaluate("window.parleyDemo.sendPrompt('then mine')")
        queued = "#queue li.queue-item[data-author=alice] button.cancel"
        await alice.wait_for_selector(queued)
        # A real mouse click (down, then up) on the queue's button while the reply streams:
        # the row is kept by key, so the button under the mouse is the same node throughout.
        await alice.click(queued)
        prompt = "#transcript li.kind-prompt[data-author=alice]"
        await alice.wait_for_selector(f"{prompt}[data-status=cancelled]")
        assert await alice.locator(STREAMING).count() == 1  # it happened during the stream
        # Review K4: every open page asked for its preview every 500 ms while anything
        # streamed, its panel folded or not. Folded, it is not asked for at all ...
        assert previews == []
        refreshed = int(await alice.get_attribute("#context", "data-refreshed") or 0)
        await alice.click("#context-panel > summary")
        # ... open, "What the model sees" refreshes while the reply is still streaming ...
        await alice.wait_for_function(
            f"Number(document.querySelector('#context').dataset.refreshed) > {refreshed}"
        )
        assert await alice.locator(STREAMING).count() == 1
        # What bob's running prompt and its reply so far add once the run ends: shown apart.
        assert int(await alice.get_attribute("#context-pending", "data-count") or 0) > 0
        model.release()
        # ... and once more after it ended: the two messages (bob's prompt, its reply).
        await alice.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        await alice.wait_for_function(
            "document.querySelector('#context-messages').textContent === '2'"
        )
        assert await alice.get_attribute("#context-pending", "data-count") == "0"
        assert await alice.locator("#errors .error").count() == 0
        await screenshot(alice, "demo-queue-cancel")
        assert not browser.problems, browser.problems


async def test_role_and_controls_come_from_the_server(tmp_path: Path, browser: Browser) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server, browser:
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


async def test_presence_clears_others_when_the_server_is_gone(
    tmp_path: Path, browser: Browser
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with browser:
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


async def test_a_role_changed_while_the_page_is_open_is_followed(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K1: the page read the member's role once, so a viewer promoted to editor could
    not write (the server would take it) and a demoted editor's every send failed."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"olga": "owner", "bob": "editor", "vera": "viewer"})
        bob = await browser.member(server, sid, "bob")
        vera = await browser.member(server, sid, "vera")
        assert await bob.is_enabled("#send") and await vera.is_disabled("#send")
        members = f"/api/v1/sessions/{sid}/members"
        demoted = await server.http.put(f"{members}/bob", json={"role": "viewer"})
        promoted = await server.http.put(f"{members}/vera", json={"role": "editor"})
        assert demoted.is_success and promoted.is_success, (demoted.text, promoted.text)
        await vera.wait_for_selector("#whoami[data-role=editor]")
        await vera.wait_for_selector("#send:enabled")
        await compose(vera, "promoted, I may write", to="team")
        await bob.wait_for_selector("#transcript li.kind-message[data-author=vera]")
        await bob.wait_for_selector("#whoami[data-role=viewer]")
        await bob.wait_for_selector("#send:disabled")
        assert await bob.is_hidden("#fact-form")
        assert await bob.locator("#transcript button.pin:visible").count() == 0
        assert await bob.locator("#errors .error").count() == 0
        assert not browser.problems, browser.problems


async def test_names_shown_are_the_ones_the_server_holds_now(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K2: names were learned once and never forgotten, so after alice renamed herself
    and carol took her old name, bob's page showed both as "Alice Boss"."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"alice": "owner", "bob": "editor", "carol": "editor"})
        path = f"/api/v1/sessions/{sid}"
        named = await server.http.put(
            f"{path}/members/alice", json={"role": "owner", "display_name": "Alice Boss"}
        )
        assert named.is_success, named.text
        bob = await browser.member(server, sid, "bob")

        async def as_member(user_id: str, method: str, url: str, body: object) -> None:
            token = await server.token(sid, user_id)
            headers = {"Authorization": f"Bearer {token}"}
            answer = await server.http.request(method, url, json=body, headers=headers)
            assert answer.is_success, answer.text

        # alice, whose page is not open (so no presence of hers tells bob's anything), posts
        await as_member("alice", "POST", f"{path}/messages", {"text": "I am alice"})
        shown = "(id) => document.querySelector(`#transcript li[data-author=${id}] .author`)"
        await bob.wait_for_function(f"({shown})('alice')?.textContent === 'Alice Boss'")
        await as_member("alice", "PATCH", f"{path}/me", {"display_name": "Alice Former"})
        await as_member("carol", "PATCH", f"{path}/me", {"display_name": "Alice Boss"})
        await as_member("carol", "POST", f"{path}/messages", {"text": "It is me, Alice"})
        await bob.wait_for_function(f"({shown})('carol')?.textContent === 'Alice Boss'")
        await bob.wait_for_function(f"({shown})('alice').textContent === 'Alice Former'")
        transcript = (await server.http.get(f"{path}/transcript")).json()["messages"]
        assert [(m["author"], m["author_name"]) for m in transcript] == [
            ("alice", "Alice Former"),
            ("carol", "Alice Boss"),
        ]
        # A name cleared shows the user id; a member removed is no longer named.
        await as_member("alice", "PATCH", f"{path}/me", {"display_name": ""})
        await bob.wait_for_function(f"({shown})('alice').textContent === 'alice'")
        removed = await server.http.delete(f"{path}/members/carol")
        assert removed.is_success, removed.text
        await bob.wait_for_function(f"({shown})('carol').textContent === 'carol'")
        transcript = (await server.http.get(f"{path}/transcript")).json()["messages"]
        assert [m["author_name"] for m in transcript] == [None, None]  # as REST says
        assert not browser.problems, browser.problems


async def test_a_role_changed_while_the_page_was_away_is_read_on_reconnect(
    tmp_path: Path,
    browser: Browser,
) -> None:
    """Review K1: what the server says while the page's socket is down is lost; the page
    reads its role and the names again when it connects again."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"olga": "owner", "vera": "viewer"})
        vera = await browser.member(server, sid, "vera")
        await vera.evaluate("window.parleyDemo.provider.disconnect()")
        await vera.wait_for_selector("#conn:not([data-state=connected])")
        put = await server.http.put(
            f"/api/v1/sessions/{sid}/members/vera", json={"role": "editor", "display_name": "V"}
        )
        assert put.is_success, put.text
        await vera.evaluate("window.parleyDemo.provider.connect()")
        await vera.wait_for_selector("#conn[data-state=connected]")
        await vera.wait_for_selector("#whoami[data-role=editor]")
        await vera.wait_for_selector("#send:enabled")
        assert await vera.text_content("#presence li[data-user=vera] .author") == "V (you)"
        assert not browser.problems, browser.problems


async def test_pins_and_facts_keep_their_buttons_while_a_reply_streams(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K3: the Pinned & facts panel was emptied and rebuilt on every streamed batch
    of any reply, so Unpin, Remove and Edit under the mouse or the keyboard's focus were
    gone before a click or a key landed. It is rebuilt only when what it shows changes."""
    model = HeldModel(token_delay_s=0.08)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, model) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        await alice.evaluate("window.parleyDemo.setFact('service', 'payments-api')")
        await alice.evaluate("window.parleyDemo.sendMessage('pin me')")
        message = "#transcript li[data-kind=message]:has-text('pin me')"
        await alice.wait_for_selector(message)
        entry = await alice.get_attribute(message, "data-id")
        await alice.evaluate(f"window.parleyDemo.pin({entry!r})")
        unpin = "#pins li button"
        await alice.wait_for_selector(unpin)
        await alice.wait_for_selector("#facts li[data-key=service] button")
        model.hold(after=60)  # the reply streams, then waits: it cannot end first
        await bob.evaluate("window.parleyDemo.sendPrompt('a long answer please')")
        await alice.wait_for_selector(STREAMING)
        buttons = await alice.query_selector_all("#pins button, #facts button")
        await alice.focus(unpin)
        shown = await alice.inner_text(STREAMING)
        # More of the reply comes in, word by word, and is drawn.
        await alice.wait_for_function(
            f"document.querySelector({STREAMING!r}).innerText !== {shown!r}"
        )
        assert [await b.evaluate("b => b.isConnected") for b in buttons] == [True] * 3
        assert await alice.evaluate("document.activeElement.textContent") == "Unpin"
        await alice.keyboard.press("Enter")
        await alice.wait_for_selector(unpin, state="detached")
        assert await alice.locator(STREAMING).count() == 1  # it happened during the stream
        await alice.click("#facts li[data-key=service] button:text('Remove')")
        await alice.wait_for_selector("#facts li[data-key=service]", state="detached")
        assert await alice.locator(STREAMING).count() == 1
        model.release()
        assert not browser.problems, browser.problems
