"""The ASGI application: routes, error mapping, and the lifespan that owns every resource."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from server import api
from server.api_models import Health, Readiness
from server.db import create_engine, current_revision, head_revision
from server.keys import resolve_keys
from server.providers.offline import OfflineProvider
from server.rest import Operation, error_response, openapi_document, route
from server.rooms import RoomRegistry
from server.settings import Settings
from server.state import AppState
from server.store import Store
from server.ws import session_socket
from session.errors import ParleyError, Unavailable
from session.model import ModelProvider

log = logging.getLogger("parley.app")
VERSION = "0.1.0"


class SchemaNotCurrent(RuntimeError):
    pass


async def healthz(state: AppState) -> Health:
    return Health(status="ok")


async def readyz(state: AppState) -> Readiness:
    try:
        revision = await current_revision(state.store.engine)
    except Exception as exc:
        raise Unavailable("database unreachable") from exc
    head = head_revision()
    if revision != head:
        raise Unavailable(f"migrations not current: at {revision}, head is {head}")
    return Readiness(status="ready", database="ok", migrations=str(revision))


PROBES = [
    Operation("GET", "/healthz", healthz, "Alive", response=Health, auth=False),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Ready: database reachable, migrations current",
        response=Readiness,
        auth=False,
        errors=(503,),
    ),
]


def create_app(
    settings: Settings | None = None,
    *,
    provider: ModelProvider | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    settings = settings or Settings()
    model = provider or OfflineProvider(settings.offline_token_delay_ms / 1000)
    operations = PROBES + api.OPERATIONS
    spec = openapi_document(operations, title="Parley admin API", version=VERSION)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        store = Store(engine)
        revision = await current_revision(engine)
        if revision != head_revision():
            await engine.dispose()
            raise SchemaNotCurrent(
                f"database schema is at {revision}, expected {head_revision()}: "
                "run 'parley migrate'"
            )
        keys = resolve_keys(settings.data_dir, settings.admin_key, settings.secret_key)
        rooms = RoomRegistry(store, settings, model, clock)
        app.state.parley = AppState(settings, store, keys, rooms, clock)
        recovered = await rooms.recover()
        if recovered:
            log.info("resumed sessions with pending prompts", extra={"sessions": recovered})
        rooms.start_reaper()
        try:
            yield
        finally:
            await rooms.close()
            await engine.dispose()

    async def openapi(_: Request) -> Response:
        return JSONResponse(spec)

    async def on_parley_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ParleyError)
        return error_response(exc)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid")
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    async def on_crash(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error"}}, status_code=500
        )

    routes: list[Any] = [route(op) for op in operations]
    routes += [
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        WebSocketRoute("/ws/sessions/{session_id}", session_socket),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ParleyError: on_parley_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
