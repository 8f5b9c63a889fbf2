"""The browser demo words every error code: a refusal is shown to a person under a title
they read, never under the machine code (review RH-1: ``session_full``, ``quota_exceeded``,
``provider_error`` and the side-thread codes were shown as such)."""

from __future__ import annotations

import re
from pathlib import Path

from parley.session.errors import ErrorCode

REPO = Path(__file__).resolve().parents[2]
ERRORS_JS = REPO / "client-demo" / "src" / "errors.js"
API_MD = REPO / "docs" / "api.md"


def _worded() -> set[str]:
    """The keys of ``ERROR_TEXT`` in ``client-demo/src/errors.js``."""
    source = ERRORS_JS.read_text(encoding="utf-8")
    block = re.search(r"export const ERROR_TEXT = \{(.*?)\n\}", source, re.S)
    assert block is not None, "ERROR_TEXT not found in errors.js"
    return set(re.findall(r"^\s*([a-z_]+):\s*'[^']+',?$", block.group(1), re.M))


def _documented() -> set[str]:
    """The codes of the error table in ``docs/api.md``."""
    rows = re.findall(r"^\| `([a-z_]+)` \| \d{3} \|", API_MD.read_text(encoding="utf-8"), re.M)
    assert rows, "no error table found in api.md"
    return set(rows)


def test_every_documented_error_code_has_words_in_the_demo() -> None:
    assert sorted(_documented() - _worded()) == []


def test_every_error_code_of_the_server_is_in_the_docs_error_table() -> None:
    """Review RN: ``internal`` (500) was in both SDKs' code lists, which mirror the table,
    and in no row of it."""
    assert sorted({code.value for code in ErrorCode} - _documented()) == []


def test_every_error_code_of_the_server_has_words_in_the_demo() -> None:
    assert sorted({code.value for code in ErrorCode} - _worded()) == []
