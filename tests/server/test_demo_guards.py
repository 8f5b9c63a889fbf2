"""The browser demo does what the member meant, once, as the member they are: one command
per Send, no sign-in swapped by a link without asking, a final close explained with the
server's reason, a side-thread title cut where the server accepts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import Browser, compose, on_the_browsers_loop

pytestmark = [pytest.mark.node, on_the_browsers_loop]

STORE = "parley.sessions.v1"  # client-demo/src/join.js


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return make_settings(
        sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5, **overrides
    )


async def test_a_double_enter_or_click_sends_once(tmp_path: Path, browser: Browser) -> None:
    """Review: Enter twice (or a double click on Send) before the ack posted the prompt
    twice under two ids: two model runs, two entries for everyone."""
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor"})
        alice = await browser.member(server, sid, "alice")
        box = alice.locator("#composer-text")
        await box.fill("deploy to prod now?")
        await box.press("Enter")
        await box.press("Enter")
        await alice.click("#mode-team")
        await box.fill("hello team")
        await alice.dblclick("#send")
        await alice.wait_for_selector("#composer-text:text-is('')", state="attached")
        # A last message: the page's commands are answered in order, so any second copy of
        # the two above is in the transcript before it.
        await compose(alice, "the end", to="team")
        await alice.wait_for_selector("#transcript li.kind-message:has-text('the end')")
        await alice.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        entries = await alice.evaluate("window.parleyDemo.session.transcript")
        sent = [(e["kind"], e["content"]) for e in entries if e["kind"] != "reply"]
        assert sent == [
            ("prompt", "deploy to prod now?"),
            ("message", "hello team"),
            ("message", "the end"),
        ], sent
        assert not browser.problems, browser.problems


async def test_a_token_link_of_another_member_asks_first(tmp_path: Path, browser: Browser) -> None:
    """Review: a `?token=` link of bob's replaced alice's saved sign-in for the session
    without a word (her token lost; her next "Ask privately" went into bob's thread)."""
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        link = f"{server.base_url}/demo/?session={sid}&token={await server.token(sid, 'bob')}"
        saved = f"JSON.parse(localStorage.getItem('{STORE}'))['{sid}'].user"
        await alice.goto(link)
        question = alice.locator("#switch[role=alertdialog], #switch [role=alertdialog]")
        await question.wait_for()
        text = await question.inner_text()
        assert "as bob" in text and "as alice" in text
        assert "token" not in alice.url
        assert await alice.evaluate(saved) == "alice"  # nothing replaced while it asks
        await alice.click("#switch-keep")
        await alice.wait_for_selector("#whoami[data-role=editor]", state="attached")
        assert await alice.inner_text("#whoami strong") == "alice"
        assert await alice.evaluate(saved) == "alice"
        # Switching is the user's choice (here from an invite link), and then it holds.
        invite = await server.http.post(f"/api/v1/sessions/{sid}/invites", json={"user_id": "bob"})
        assert invite.status_code == 201, invite.text
        await alice.goto(server.base_url + invite.json()["link"])
        await alice.click("#switch-take")
        await alice.wait_for_selector("#whoami[data-role=editor]", state="attached")
        assert await alice.inner_text("#whoami strong") == "bob"
        assert await alice.evaluate(saved) == "bob"
        assert not browser.problems, browser.problems


async def test_a_token_link_for_another_session_changes_no_sign_in(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K8: `?session=S2&token=<a token of S1 for a member also named alice>` replaced
    alice's saved sign-in for S2 without asking (the address's session won over the
    token's), and S2 then closed 4401 on every visit. Such a link is refused in words and
    no sign-in changes."""
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        s1 = await server.new_session({"alice": "editor"})
        s2 = await server.new_session({"alice": "editor"})
        alice = await browser.member(server, s2, "alice")
        kept = await alice.evaluate(f"JSON.parse(localStorage.getItem('{STORE}'))['{s2}'].token")
        await alice.goto(
            f"{server.base_url}/demo/?session={s2}&token={await server.token(s1, 'alice')}"
        )
        problem = alice.locator("#join-error")
        await problem.wait_for()
        assert "another session" in await problem.inner_text()
        saved = await alice.evaluate(f"JSON.parse(localStorage.getItem('{STORE}'))")
        assert saved[s2]["token"] == kept and s1 not in saved
        await alice.goto(f"{server.base_url}/demo/?session={s2}")
        await alice.wait_for_selector("#conn[data-state=connected]")
        assert not browser.problems, browser.problems


async def test_a_side_thread_socket_past_the_cap_says_so_and_comes_back(
    tmp_path: Path, browser: Browser
) -> None:
    """Review K9: a side-thread's socket refused (one connection too many) failed in
    silence: the panel stayed empty, with no note and no error. Review RK-2: it was closed
    4429, final to a stock client, so the thread never showed. It is refused at the upgrade
    (429), which the page retries: the panel says so, and shows the thread once there is
    room."""
    settings = _settings(tmp_path, max_connections_per_user=2)
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"bob": "editor"})
        bob = await browser.member(server, sid, "bob")
        second = await bob.context.new_page()
        await second.goto(f"{server.base_url}/demo/?session={sid}")
        await second.wait_for_selector("#conn[data-state=connected]")
        await bob.fill("#composer-text", "is the proxy at fault?")
        await bob.click("#ask-privately")  # its socket is bob's third
        await bob.wait_for_selector("#side-thread-note:has-text('retrying')")
        await second.close()
        await bob.wait_for_selector("#side-thread-turns li[data-kind=reply][data-status=done]")
        assert "retrying" not in await bob.inner_text("#side-thread-note")
        refused = "console error: WebSocket connection to"  # the browser's own words
        assert [p for p in browser.problems if refused not in p] == [], browser.problems


async def test_a_final_close_says_the_servers_reason(tmp_path: Path, browser: Browser) -> None:
    """Review: a page refused for too many sockets of its user read "Too many refused
    commands" (the fixed sentence for 4429); the server's reason and the code were lost.
    Review RK-2: that refusal is now at the upgrade, and the page comes back once there is
    room; a final close (bob removed) still shows the server's reason and its code."""
    settings = _settings(tmp_path, max_connections_per_user=1)
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"bob": "editor"})
        held = await server.connect(sid, "bob")
        token = await server.token(sid, "bob")
        bob = await browser.page("bob", f"{server.base_url}/demo/?session={sid}&token={token}")
        await held.close()
        await bob.wait_for_selector("#conn[data-state=connected]")
        assert (await server.http.delete(f"/api/v1/sessions/{sid}/members/bob")).is_success
        error = bob.locator("#errors .error[data-code=forbidden]")
        await error.wait_for()
        said = (await error.inner_text()).lower()
        assert "removed: you are no longer a member" in said, said
        assert "4403" in said, said
        refused = "console error: WebSocket connection to"  # the browser's own words
        assert [p for p in browser.problems if refused not in p] == [], browser.problems


async def test_ask_privately_cuts_the_title_between_characters(
    tmp_path: Path, browser: Browser
) -> None:
    """Review: the title was the question's first 80 UTF-16 units; an emoji across the
    80th was cut in half and the server refused the lone surrogate."""
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor"})
        alice = await browser.member(server, sid, "alice")
        question = "a" * 79 + "😀 is this ok?"
        await alice.fill("#composer-text", question)
        await alice.click("#ask-privately")
        await alice.wait_for_selector("#side-thread-turns li[data-kind=reply][data-status=done]")
        assert await alice.locator("#errors .error").count() == 0
        token = await server.token(sid, "alice")
        listed = await server.http.get(
            f"/api/v1/sessions/{sid}/threads", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200, listed.text
        assert [t["title"] for t in listed.json()["threads"]] == ["a" * 79 + "😀"]
        assert not browser.problems, browser.problems
