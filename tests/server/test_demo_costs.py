"""What another member's input costs a page of the browser demo: bounded by what changed
and by a fixed size per entry, never by the length of a message or of the history.

No durations are asserted: the tests count the work (characters through the Markdown
parser and the highlighter, rows touched by an update)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.demo_browser import Browser, compose, on_the_browsers_loop

pytestmark = [pytest.mark.node, on_the_browsers_loop]

MARKDOWN_CHARS = 4000  # client-demo/src/markdown.js
HIGHLIGHT_CHARS = 2000
WINDOW = 200  # client-demo/src/transcript.js


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return make_settings(
        sqlite_url(tmp_path), tmp_path / "d", offline_token_delay_ms=5, **overrides
    )


async def _work(page: Any) -> dict[str, int]:
    work: dict[str, int] = await page.evaluate("({...window.parleyDemo.markdownWork})")
    return work


async def test_a_32000_character_message_costs_a_bounded_render(
    tmp_path: Path, browser: Browser
) -> None:
    """Review: valid 32,000-character messages (links, e-mail addresses, a YAML block of
    `- - -`) went whole through markdown-it, linkify and highlight.js in every member's
    page: 0.5-1.7 s of main thread each, twenty froze pages for 24 s. Now only the first
    MARKDOWN_CHARS are parsed, the rest is plain text on request, still safe."""
    async with serve_in_process(_settings(tmp_path)) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await browser.member(server, sid, "alice")
        bob = await browser.member(server, sid, "bob")
        head = "```yaml\n" + "- " * 1000 + "\n```\n" + "see http://a.b/ and a@b.c " * 40
        tail = '\n<img src=x onerror="window.pwned=1"> END-OF-MESSAGE'
        text = head + "x@y.z http://c.d/ " * ((32_000 - len(head) - len(tail)) // 18) + tail
        assert 31_000 < len(text) <= 32_000
        before = await _work(alice)
        for _ in range(3):  # the same text again is not parsed again
            reply = await bob.evaluate("(t) => window.parleyDemo.sendMessage(t)", text)
            assert reply["type"] == "ack", reply
        rows = alice.locator("#transcript li.kind-message[data-author=bob]")
        await alice.wait_for_function(
            "document.querySelectorAll('#transcript li.kind-message .show-rest').length === 3"
        )
        after = await _work(alice)
        assert 0 < after["parsedChars"] - before["parsedChars"] <= MARKDOWN_CHARS
        assert after["highlightedChars"] - before["highlightedChars"] <= HIGHLIGHT_CHARS
        first = rows.first
        # The head is Markdown (a code block, not highlighted past the limit; links) ...
        await first.locator(".content pre code").wait_for()
        assert await first.locator(".content a").count() > 0
        assert "END-OF-MESSAGE" not in await first.locator(".content").inner_text()
        # ... and the rest, asked for, is the text as it is: nothing parsed, nothing run.
        await first.locator(".show-rest").click()
        rest = first.locator(".content .rest-plain")
        assert (await rest.inner_text()).endswith("END-OF-MESSAGE")
        assert await first.locator(".content img").count() == 0
        assert (await _work(alice))["parsedChars"] == after["parsedChars"]
        assert await alice.evaluate("window.pwned === undefined")
        # A head that would make thousands of elements (a table of 2,000 cells) is text.
        table = "|a" * 100 + "|\n" + "|-" * 100 + "|\n" + ("|a" * 100 + "|\n") * 150
        reply = await bob.evaluate("(t) => window.parleyDemo.sendMessage(t)", table[:32_000])
        assert reply["type"] == "ack", reply
        await alice.wait_for_function("window.parleyDemo.markdownWork.plainHeads === 1")
        assert await rows.last.locator(".content table").count() == 0
        assert "|a|a|a" in await rows.last.locator(".content .rest-plain").first.inner_text()
        assert not browser.problems, browser.problems


async def test_a_streamed_reply_touches_its_rows_only(tmp_path: Path, browser: Browser) -> None:
    """Review: every streamed token re-filled every row of the conversation (a 3,000-entry
    session: up to 0.69 s a time). An update now fills only the rows whose entry (or what
    the row shows of it) changed; a long history opens with its newest WINDOW entries."""
    many = {"commands_per_second": 1000.0, "commands_burst": 1000}
    settings = _settings(tmp_path, user_commands_per_second=1000.0, **many)
    async with serve_in_process(settings) as server, browser:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        total = WINDOW + 30
        for n in range(total):
            posted = await server.http.post(
                f"/api/v1/sessions/{sid}/messages", json={"text": f"note {n}", "as_user": "bob"}
            )
            assert posted.status_code == 202, posted.text
        alice = await browser.member(server, sid, "alice")
        rows = "#transcript li.entry"
        await alice.wait_for_function(f"document.querySelectorAll('{rows}').length >= {WINDOW}")
        # Count the rows an update writes to (any attribute set on a row, same value or not).
        await alice.evaluate(
            """() => {
                window.touched = new Set()
                new MutationObserver((records) => {
                  for (const r of records) {
                    if (r.target.matches?.('li.entry')) window.touched.add(r.target.dataset.id)
                  }
                }).observe(document.getElementById('transcript'),
                           {attributes: true, subtree: true})
            }"""
        )
        await compose(alice, "a long answer, please")
        await alice.wait_for_selector("#transcript li.kind-reply[data-status=done]")
        ids = await alice.evaluate(
            """() => window.parleyDemo.session.transcript
                 .filter(e => e.kind !== 'message').map(e => e.id)"""
        )
        assert len(ids) == 2, ids  # the prompt and its reply
        touched = await alice.evaluate("[...window.touched]")
        assert set(touched) <= set(ids), f"{len(touched)} rows touched: {touched[:5]}…"
        # The newest entries are drawn; the earlier ones are a click away.
        assert await alice.locator(rows).count() == WINDOW
        assert await alice.inner_text("#transcript-earlier") == "Show earlier (32 more)"
        await alice.click("#transcript-earlier")
        await alice.wait_for_function(f"document.querySelectorAll('{rows}').length === {total + 2}")
        assert await alice.locator("#transcript-earlier").is_hidden()
        assert not browser.problems, browser.problems
