"""``/demo``: the browser demo's built files, or a 404 that says how to build them."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from parley.server.http.rest import error_response
from parley.session.errors import NotFound

# The demo links to the TypeScript SDK's build (client-demo/package.json: file:../clients/js).
BUILD_COMMAND = (
    "(cd clients/js && npm ci && npm run build) && (cd client-demo && npm ci && npm run build)"
)


class DemoFiles:
    """Serve ``directory`` once it holds a build (an ``index.html``), looked for on each
    request so a build made while the server runs is served without a restart."""

    def __init__(self, directory: Path) -> None:
        self.index = directory / "index.html"
        self.files = StaticFiles(directory=directory, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.index.is_file():
            missing = NotFound(f"the browser demo is not built: run {BUILD_COMMAND}, then reload")
            await error_response(missing)(scope, receive, send)
            return
        await self.files(scope, receive, send)


async def to_demo(_: Request) -> Response:
    """``/demo`` to ``/demo/``, where the demo's relative links resolve: a relative
    ``Location``, not one built from the request's ``Host`` (review RL-6)."""
    return RedirectResponse("/demo/", status_code=307)
