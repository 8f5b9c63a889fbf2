"""Sockets go straight to their endpoint, past the HTTP middleware stack.

Starlette runs every connection through its middleware stack: server errors, exception
handlers, the router, the request log, each an ``async def`` whose coroutine lasts as
long as the connection. For an HTTP request that is a moment; for an accepted WebSocket
it is its whole life, about 2 kB of memory each (``python -m bench.connection_memory``;
issue #22), for layers a socket does not use: it answers its own refusals and failures
with close codes (``server.ws.admission``). ``SocketsFirst`` hands a socket on one of the
session routes to its endpoint itself, with the server's own ``send`` (for the
``DirectWriter``): one frame stays with the socket, not six. Every other connection, and
a socket on any other path, goes through Starlette as before; so does one whose path holds an
encoded ``/`` (``server.http.segments``: it names no route, though its decoded path may).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.server.http.segments import holds_encoded_slash
from parley.server.ws.direct_send import SCOPE_KEY, DirectWriter


class SocketsFirst(Starlette):
    """Starlette with the session sockets' short way in (the module's docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        short_way = scope["type"] == "websocket" and not holds_encoded_slash(scope)
        endpoint = self._socket_endpoint(scope) if short_way else None
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope[SCOPE_KEY] = DirectWriter.beneath(send)
        await endpoint(scope, receive, send)

    def _socket_endpoint(self, scope: Scope) -> ASGIApp | None:
        """The endpoint of the socket route ``scope`` is for (its path parameters and the
        app put in ``scope``, as Starlette's router does), or None."""
        for route in self.router.routes:
            if isinstance(route, WebSocketRoute):
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope["app"] = self
                    scope.update(child)
                    return route.app
        return None
