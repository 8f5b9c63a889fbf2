"""The browser client for keyboard and screen-reader users: axe-core (injected by
Playwright) finds no serious or critical violation on the join page or in a busy session,
every control is reached with Tab, and the focused one is visibly outlined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import (
    Browser,
    axe_violations,
    compose,
    on_the_browsers_loop,
    screenshot,
)

pytestmark = [pytest.mark.node, on_the_browsers_loop]

# Every control a member uses, by id: each must be reached by Tab alone.
CONTROLS = {
    "composer-text",
    "mode-ai",
    "send",
    "fact-key",
    "fact-value",
    "my-name",
    "model",
    "policy",
    "invite-user",
    "document-file",
    "all-sessions",
}

# Focus the page itself, so the next Tab goes to its first control.
FROM_THE_TOP = """() => { document.body.tabIndex = -1; document.body.focus();
                        document.body.removeAttribute('tabindex') }"""


async def _tab_through(page: Any, presses: int) -> tuple[set[str], list[dict[str, str]]]:
    """Press Tab ``presses`` times from the top; the ids focused, and how each focused
    element's outline looked."""
    await page.evaluate(FROM_THE_TOP)
    ids: set[str] = set()
    looks: list[dict[str, str]] = []
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused: dict[str, str] = await page.evaluate(
            """() => { const e = document.activeElement, s = getComputedStyle(e)
                 return {id: e.id, tag: e.tagName, style: s.outlineStyle,
                         width: s.outlineWidth} }"""
        )
        ids.add(focused["id"])
        looks.append(focused)
    return ids, looks


async def test_no_serious_axe_violation_and_a_keyboard_path(
    tmp_path: Path, browser: Browser
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"olga": "owner", "vera": "viewer"}, title="Ops")
        join = await browser.page("guest", f"{server.base_url}/demo/")
        await join.wait_for_selector("#invite-input")
        assert await axe_violations(join) == []

        olga = await browser.member(server, sid, "olga")
        await compose(olga, "Here is a fix:\n\n```python\nprint('ok')\n```", to="team")
        await compose(olga, "Does it work?")
        await olga.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        await olga.fill("#fact-key", "env")
        await olga.fill("#fact-value", "staging")
        await olga.click("#fact-form button[type=submit]")
        await olga.wait_for_selector("#facts li[data-key=env]")
        await olga.click("#context-panel > summary")
        await olga.click(".context-details summary")
        await olga.wait_for_selector("#context-items li")
        await olga.wait_for_selector("#model:enabled")
        violations = await axe_violations(olga)
        assert violations == [], violations

        vera = await browser.member(server, sid, "vera")
        assert await axe_violations(vera) == []

        # Keyboard: the skip link comes first and lands in the message box.
        await olga.evaluate(FROM_THE_TOP)
        await olga.keyboard.press("Tab")
        assert await olga.evaluate("document.activeElement.className") == "skip-link"
        await olga.keyboard.press("Enter")
        await olga.wait_for_function("location.hash === '#composer-text'")
        ids, looks = await _tab_through(olga, 80)
        assert ids >= CONTROLS, CONTROLS - ids
        for look in looks:
            if look["tag"] in ("BUTTON", "A", "INPUT", "SELECT", "TEXTAREA", "SUMMARY"):
                assert look["style"] != "none" and float(look["width"][:-2]) >= 2, look
        await olga.focus("#send")
        await screenshot(olga, "demo-a11y-owner")
        assert not browser.problems, browser.problems
