"""A path segment's encoded ``/`` is data: a path holding one names no route.

The ASGI server hands the app ``path`` percent-decoded, and Starlette routes on it, so
``DELETE /api/v1/sessions/<sid>%2Fmembers%2Fbob`` (a session id holding "/", quoted as one
segment, as the SDK quotes every id) matched the member route and removed bob (review I4).
RFC 3986 keeps an encoded "/" inside its segment; no id this server gives or takes holds
one, so such a path is answered as a path no route has: ``404 not_found``, and a socket
refused before it is accepted (403), as Starlette's router refuses one on an unknown path.
The undecoded path is ``raw_path``; an ASGI server that gives none decodes nothing it could
confuse.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from parley.server.http.error_body import error_body

NOT_ONE_SEGMENT = "no route: a path segment holds an encoded '/' (%2F), and an id is one segment"


def holds_encoded_slash(scope: Scope) -> bool:
    """Whether the request's undecoded path has a ``%2F`` (either case) in a segment."""
    raw: bytes | None = scope.get("raw_path")
    return raw is not None and b"%2f" in raw.lower()


class OneSegmentIds:
    """Answer a request whose path holds an encoded ``/`` as one no route matches, before
    any route sees its decoded path (the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not holds_encoded_slash(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose()(scope, receive, send)
        else:
            await JSONResponse(error_body("not_found", NOT_ONE_SEGMENT), 404)(scope, receive, send)
