"""``docs/openapi.json`` (rendered by the docs site) is what a live server serves."""

from __future__ import annotations

import json

from parley.server.openapi_dump import render, served_document
from tests.conftest import REPO_ROOT, RunningServer

DOCS_OPENAPI = REPO_ROOT / "docs" / "openapi.json"
REGENERATE = "stale: regenerate it with `python -m parley.server.openapi_dump > docs/openapi.json`"


async def test_the_docs_openapi_file_is_what_a_live_server_serves(
    sqlite_server: RunningServer,
) -> None:
    response = await sqlite_server.http.get("/api/v1/openapi.json")
    assert response.status_code == 200, response.text
    assert json.loads(DOCS_OPENAPI.read_text()) == response.json(), (
        f"docs/openapi.json is {REGENERATE}"
    )


async def test_the_dump_is_the_served_document_as_the_file_writes_it(
    sqlite_server: RunningServer,
) -> None:
    served = (await sqlite_server.http.get("/api/v1/openapi.json")).json()
    assert await served_document() == served
    assert render(served) == DOCS_OPENAPI.read_text(), f"docs/openapi.json is {REGENERATE}"
