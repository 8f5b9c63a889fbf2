"""A JSON document that never changes while the server runs, answered as fixed bytes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response


class FixedJSON:
    """``document`` encoded once (at its first request) and answered as those bytes, with an
    ``ETag``: a request whose ``If-None-Match`` names it is answered 304 with no body.

    For routes anyone may call (``/api/v1/openapi.json``): encoding the 144 KB API document
    anew took ~15 ms of the event loop for a request of ~80 bytes, so a few anonymous
    connections slowed every member's calls 40-60 times (review RL-1). Fixed bytes cost what
    a static file does, and need no budget of their own."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._document: dict[str, Any] | None = document
        self._body = b""
        self._etag = ""

    def _encoded(self) -> tuple[bytes, str]:
        if self._document is not None:
            # As Starlette's ``JSONResponse`` renders it.
            text = json.dumps(
                self._document, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
            self._body = text.encode()
            self._etag = '"' + hashlib.sha256(self._body).hexdigest()[:32] + '"'
            self._document = None
        return self._body, self._etag

    async def answer(self, request: Request) -> Response:
        """The endpoint (a Starlette route takes a callable object as an ASGI app)."""
        body, etag = self._encoded()
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weakly compared, RFC 9110
    13.1.2: ``W/"x"`` names ``"x"``) or is ``*``."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags
