"""``python -m parley.server.openapi_dump``: the OpenAPI document the app serves, on stdout.

``docs/openapi.json`` is this output, rendered by the docs site (``docs/openapi.md``);
``tests/docs/test_openapi_json.py`` fails when the file differs from what a live server
answers, so regenerate it after changing a route:
``python -m parley.server.openapi_dump > docs/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from parley.server.app import create_app
from parley.server.http.home import OPENAPI
from parley.server.settings import Settings


async def served_document() -> dict[str, Any]:
    """The document ``GET /api/v1/openapi.json`` answers, asked of the app in memory: no
    database is opened (the lifespan does not run) and nothing listens on a port."""
    settings = Settings(_env_file=None, database_url="sqlite+aiosqlite:///:memory:")  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://parley") as http:
        response = await http.get(OPENAPI)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def render(document: dict[str, Any]) -> str:
    """The file's text: indented and key-ordered as served, so a diff reads per route."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render(asyncio.run(served_document())))


if __name__ == "__main__":
    main()
