"""Every fenced example of README.md and docs/*.md is run against a live server, parsed,
or marked with why it is not.

A block is classified by the HTML comment on the line just before its opening fence:

- ``<!-- example: run -->`` (or ``run (a note)``): run against a live server
  (``serve_in_process``, SQLite, the offline model), with the docs' address
  ``127.0.0.1:8765`` replaced by the server's. A page's ``sh`` blocks run in order in one
  bash (``set -euo pipefail``; ``curl`` fails on an HTTP error) with ``PARLEY``,
  ``KEY``/``ADMIN_KEY``/``PARLEY_ADMIN_KEY`` and ``SID`` (a session with editors alice and
  bob) set, in a folder whose ``.parley/admin_key`` is the key. A ``python`` block then
  runs as written, ``python block.py`` with the same environment; one whose marker says
  ``top-level await`` runs as a program that may ``await`` at top level, with
  ``admin_key`` bound (review RL-3: a block not so marked ran that way, and did not run
  as written).
- ``<!-- example: file NAME -->``: written to ``NAME`` in that folder first, for a ``run``
  block to use.
- ``<!-- example: skip (why) -->``: not run; the reason is required.
- An unmarked ``json`` block must parse: one document, or one per line.

Any other block fails ``test_every_block_is_classified``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, REPO_ROOT, make_settings, serve_in_process, sqlite_url

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: (run(?: \(.+\))?|file [\w.\-]+|skip \(.+\)) -->$")
DOCS_ADDRESS = "127.0.0.1:8765"
BLOCK_TIMEOUT_S = 60

# Runs a ``python`` block: top-level ``await`` allowed, ``admin_key`` bound.
PYTHON_RUNNER = """
import ast, asyncio, os, sys
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__", "admin_key": os.environ["KEY"]})
if result is not None:
    asyncio.run(result)
"""
BASH_PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --max-time 20 "$@"; }
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    marker: str | None  # the comment's text after "example: ", or None
    text: str

    @property
    def runs(self) -> bool:
        return self.marker is not None and re.fullmatch(r"run( \(.+\))?", self.marker) is not None

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line} ({self.lang or 'no language'})"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^```(\S*)$", lines[index])
        if opening is None:
            index += 1
            continue
        end = lines.index("```", index + 1)  # ValueError: an unclosed fence
        before = lines[index - 1] if index > 0 else ""
        marked = MARKER.match(before)
        marker = marked.group(1) if marked else before if before.startswith("<!--") else None
        text = "\n".join(lines[index + 1 : end]) + "\n"
        yield Block(page, index + 1, opening.group(1), marker, text)
        index = end + 1


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def problem(block: Block) -> str | None:
    """Why ``block`` cannot be classified, or None."""
    if block.marker is None:
        return None if block.lang == "json" else "unmarked, and not json"
    if MARKER.match(f"<!-- example: {block.marker} -->") is None:
        return f"unknown marker {block.marker!r}"
    if block.runs and block.lang not in ("sh", "python"):
        return f"only sh and python blocks run, not {block.lang!r}"
    return None


def test_every_block_is_classified() -> None:
    assert len(ALL_BLOCKS) >= 19  # the extractor found the pages' blocks
    problems = [f"{block}: {why}" for block in ALL_BLOCKS if (why := problem(block))]
    assert problems == [], "\n".join(problems)


def test_the_readme_keeps_the_commands_ci_relies_on() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "```sh\npip install -e . && parley serve\n```" in readme
    ci_tests = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    setup = next(b for b in ALL_BLOCKS if b.page.name == "README.md" and "pytest" in b.text)
    assert setup.text.strip().endswith(ci_tests), "README's test command is not .ci/run's"


def slug(heading: str) -> str:
    """A heading's anchor, as MkDocs (and GitHub, for these headings) makes it."""
    return re.sub(r"\s+", "-", re.sub(r"[^\w\- ]", "", heading.strip().lower()))


def test_the_readme_links_into_docs_resolve() -> None:
    """mkdocs build --strict checks the links between docs pages; this checks README's."""
    readme = (REPO_ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[\w.]+)(?:#([\w-]+))?\)", readme)
    assert len(links) >= 10
    for target, anchor in links:
        page = REPO_ROOT / target
        assert page.is_file(), target
        headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
        assert not anchor or anchor in map(slug, headings), f"{target}#{anchor}"


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.lang == "json" and b.marker is None], ids=str
)
def test_json_examples_parse(block: Block) -> None:
    try:
        json.loads(block.text)
    except json.JSONDecodeError:  # several documents: one per line
        for line in block.text.splitlines():
            if line.strip():
                json.loads(line)


RUN_PAGES = sorted({b.page for b in ALL_BLOCKS if b.runs})


async def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BLOCK_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
async def test_examples_run_against_a_live_server(page: Path, tmp_path: Path) -> None:
    mine = [b for b in ALL_BLOCKS if b.page == page]
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        address = server.base_url.removeprefix("http://")
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        work = tmp_path / "work"
        (work / ".parley").mkdir(parents=True)
        (work / ".parley" / "admin_key").write_text(ADMIN_KEY + "\n")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PARLEY": server.base_url,
            "KEY": ADMIN_KEY,
            "ADMIN_KEY": ADMIN_KEY,
            "PARLEY_ADMIN_KEY": ADMIN_KEY,
            "SID": sid,
        }
        source = {b: b.text.replace(DOCS_ADDRESS, address) for b in mine}
        for block in mine:
            if block.marker and block.marker.startswith("file "):
                (work / block.marker.removeprefix("file ")).write_text(source[block])
        outputs: list[str] = []
        shell = [source[b] for b in mine if b.runs and b.lang == "sh"]
        if shell:
            (work / "examples.sh").write_text(BASH_PRELUDE + "\n".join(shell))
            outputs.append(await run(["bash", "examples.sh"], work, env))
        for n, block in enumerate(b for b in mine if b.runs and b.lang == "python"):
            (work / f"example_{n}.py").write_text(source[block])
            top_level = block.marker is not None and "top-level await" in block.marker
            runner = ["-c", PYTHON_RUNNER] if top_level else []
            argv = [sys.executable, *runner, f"example_{n}.py"]
            outputs.append(await run(argv, work, env))
    for expected in EXPECTED.get(page.name, []):
        assert any(expected in out for out in outputs), (expected, outputs)


# What a page's examples print when they worked (beyond exiting 0).
EXPECTED = {
    "README.md": ["alice ack", "bob ack"],
    "sdks.md": ["done "],
    "api.md": ['"status"'],
}
