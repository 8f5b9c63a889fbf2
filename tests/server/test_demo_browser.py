"""The browser demo (client-demo/, served at /demo) in a real Chromium against a live server.

Needs node + npm (to build the demo when ``server/http/demo_files`` is missing), the ``playwright``
Python package and Debian's ``/usr/bin/chromium`` (Playwright's own browser download is not
used). Without them the test skips with the reason, or fails under
``PARLEY_TEST_FORBID_SKIPS=1``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, RunningServer, make_settings, serve_in_process, sqlite_url

pytestmark = pytest.mark.node

DEMO_DIR = REPO_ROOT / "client-demo"
DEMO_BUILD = REPO_ROOT / "server" / "http" / "demo_files"
SDK_DIR = REPO_ROOT / "clients" / "js"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


def _missing(reason: str) -> None:
    if os.environ.get("PARLEY_TEST_FORBID_SKIPS") == "1":
        pytest.fail(f"the browser demo test cannot run: {reason}")
    pytest.skip(reason)


def _build_demo() -> None:
    """``npm ci && npm run build`` in client-demo/ unless its build (server/http/demo_files)
    exists, after the same in clients/js/ unless its dist/ exists (the demo links to the
    SDK's build)."""
    if (DEMO_BUILD / "index.html").is_file():
        return
    npm = shutil.which("npm")
    assert npm is not None

    def build(folder: Path, tool: str) -> list[tuple[Path, list[str]]]:
        install = [] if (folder / "node_modules" / tool).is_dir() else [[npm, "ci", "--no-audit"]]
        return [(folder, args) for args in [*install, [npm, "run", "build"]]]

    sdk_built = (SDK_DIR / "dist" / "index.js").is_file()
    steps = [*([] if sdk_built else build(SDK_DIR, "typescript")), *build(DEMO_DIR, "vite")]
    for folder, args in steps:
        result = subprocess.run(
            args,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"`{' '.join(args[1:])}` failed:\n{result.stdout}"


def _require_tools() -> None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("the `playwright` Python package is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("node and npm are needed to build client-demo/")


async def test_demo_in_three_browsers(tmp_path: Path) -> None:
    await asyncio.to_thread(_require_tools)
    from playwright.async_api import async_playwright

    await asyncio.to_thread(_build_demo)

    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", offline_token_delay_ms=20)
    async with serve_in_process(settings) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await _scenario(server, browser)
        finally:
            await browser.close()


async def _scenario(server: RunningServer, browser: Any) -> None:
    sid = await server.new_session(
        {"alice": "editor", "bob": "editor", "vera": "viewer"}, title="Incident 42"
    )
    problems: list[str] = []
    pages: dict[str, Any] = {}
    for name, extra in (("alice", ""), ("bob", ""), ("vera", "&role=viewer")):
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc, n=name: problems.append(f"{n}: {exc}"))
        page.on(
            "console",
            lambda msg, n=name: (
                problems.append(f"{n} console {msg.type}: {msg.text}")
                if msg.type in ("error", "warning")
                else None
            ),
        )
        token = await server.token(sid, name)
        await page.goto(f"{server.base_url}/demo/?session={sid}&token={token}{extra}")
        pages[name] = page
    alice, bob, vera = pages["alice"], pages["bob"], pages["vera"]

    for page in pages.values():
        await page.wait_for_selector("#conn[data-state=connected]")
    # Everyone sees everyone else present (awareness, stamped by the server).
    for page in pages.values():
        for other in pages:
            await page.wait_for_selector(f"#presence li[data-user={other}]")

    # Alice and Bob prompt at the same moment, through the UI.
    await alice.fill("#composer-text", "What changed in the last deploy?")
    await bob.fill("#composer-text", "Is the database healthy?")
    await bob.wait_for_selector("#presence li[data-user=alice].typing")
    await asyncio.gather(alice.click("#send-prompt"), bob.click("#send-prompt"))
    # The reply streams in: the page shows it while it is still being written.
    await bob.wait_for_selector("#transcript li.kind-reply[data-status=streaming] .content")

    done = "document.querySelectorAll('#transcript li.kind-reply[data-status=done]').length === 2"
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

    # The context panel shows what the model would be given: alice repeats bob's question
    # as a message, and her next input has it once, folded.
    await alice.fill("#composer-text", "is the database   healthy?")
    await alice.click("#send-message")
    await alice.wait_for_selector("#context-folded[data-count='1']")
    assert "of" in await alice.inner_text("#context-tokens")
    assert await alice.inner_text("#context-withheld") == "0"

    # A message for the people only, and a prompt its author cancels while it runs.
    await bob.fill("#composer-text", "I'll check the dashboards")
    await bob.click("#send-message")
    await alice.wait_for_selector(
        "#transcript li.kind-message[data-author=bob][data-status=posted]"
    )
    await alice.fill("#composer-text", "Write me a very long postmortem")
    await alice.click("#send-prompt")
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

    # The viewer's submit control is disabled up front (?role=viewer) ...
    assert await vera.is_disabled("#send-prompt")
    assert await vera.is_disabled("#send-message")
    # ... and a prompt forced through the page's API gets a readable `forbidden` error.
    reply = await vera.evaluate("window.parleyDemo.sendPrompt('let me in')")
    assert reply["type"] == "error" and reply["code"] == "forbidden", reply
    error = vera.locator("#errors .error[data-code=forbidden]")
    await error.wait_for()
    assert "Not allowed (prompt)" in await error.inner_text()
    assert await vera.locator("#errors .error").count() == 1

    # Without ?role, a forbidden answer to a prompt disables the control too.
    vera_plain = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await vera_plain.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    token = await server.token(sid, "vera")
    await page.goto(f"{server.base_url}/demo/?token={token}")  # the session from the token
    await page.wait_for_selector("#conn[data-state=connected]")
    assert await page.is_enabled("#send-prompt")
    await page.fill("#composer-text", "may I?")
    await page.click("#send-prompt")
    await page.wait_for_selector("#errors .error[data-code=forbidden]")
    assert await page.is_disabled("#send-prompt")

    ARTIFACTS.mkdir(exist_ok=True)
    for name, p in pages.items():
        await p.screenshot(path=str(ARTIFACTS / f"demo-{name}.png"))
    assert not problems, problems


async def _transcript(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        "#transcript li.entry",
        """rows => rows.map(r => ({
            kind: r.dataset.kind, author: r.dataset.author, status: r.dataset.status,
            content: r.querySelector('.content').textContent}))""",
    )
    return rows
