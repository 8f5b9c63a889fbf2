"""The ASGI application: routes, error mapping, and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, Counter, start_http_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.server.cluster.node import ClusterNode
from parley.server.http import (
    access,
    context,
    events,
    home,
    invites,
    members,
    prompts,
    sessions,
    sse,
    threads,
    usage,
    webhooks,
)
from parley.server.http.demo import DemoFiles, to_demo
from parley.server.http.error_body import error_body
from parley.server.http.fixed_json import FixedJSON
from parley.server.http.models import SETTING_MAXIMA, Health, Readiness
from parley.server.http.rest import Operation, authenticate, error_response, openapi_document, route
from parley.server.http.segments import OneSegmentIds
from parley.server.keys import resolve_keys
from parley.server.metrics import Metrics
from parley.server.outbound.sender_process import SenderProcess, own_process_possible
from parley.server.outbound.webhook_sender import WebhookSender
from parley.server.providers.registry import open_models
from parley.server.runtime.rooms import RoomRegistry
from parley.server.settings import Settings
from parley.server.state import AppState
from parley.server.store.claim import claim_database
from parley.server.store.db import (
    check_schema_current,
    create_engine,
    current_revision,
    head_revision,
)
from parley.server.store.health import StorageHealth
from parley.server.store.sessions import Store
from parley.server.store.webhooks import WaitingCap
from parley.server.version import version
from parley.server.ws.admission import SocketEndpoint
from parley.server.ws.endpoint import session_socket
from parley.server.ws.send_budget import SendBudget
from parley.server.ws.socket_routes import SocketsFirst
from parley.server.ws.thread_socket import thread_socket
from parley.session.errors import Forbidden, NotFound, ParleyError, SchemaNotCurrent, Unavailable
from parley.session.model import ModelProvider

log = logging.getLogger("parley.app")


# The status a request's line says when its client left before it was answered.
CLIENT_CLOSED_REQUEST = 499


class RequestLog:
    """Give every HTTP request an id (``X-Request-ID``) and log one line when it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        gone: dict[str, Any] = {}
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client closed its connection before its body had all arrived: no one to
            # answer and nothing wrong here, so this line alone, not a crash's traceback
            # twice and a 500 (review FX36). 499: "client closed request", as proxies log it.
            status, gone = CLIENT_CLOSED_REQUEST, {"disconnected": True}
        finally:
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.monotonic() - started) * 1000, 1),
                    **gone,
                },
            )


async def healthz(state: AppState) -> Health:
    return Health(status="ok")


# ``/readyz`` waits no longer than this for SQLite's write lock when it probes.
PROBE_LOCK_TIMEOUT_S = 0.5


async def readyz(state: AppState) -> Readiness:
    return await state.readiness.run(functools.partial(_probe_readiness, state))


async def _probe_readiness(state: AppState) -> Readiness:
    try:
        revision = await current_revision(state.store.engine)
    except Exception as exc:
        raise Unavailable("database unreachable") from exc
    if state.store.health.failing is not None:
        # Writes failed last time; nothing may have tried since: try one.
        try:
            await state.store.probe_write(PROBE_LOCK_TIMEOUT_S)
        except Unavailable as exc:
            raise Unavailable(
                f"database writes fail ({state.store.health.failing}): {exc.message}"
            ) from exc
    head = head_revision()
    if revision != head:
        raise Unavailable(f"migrations not current: at {revision}, head is {head}")
    listener = "off"
    if state.rooms.cluster is not None:
        listener = state.rooms.cluster.status()
        if listener != "ok":
            raise Unavailable("the cluster notification listener is not connected")
    return Readiness(status="ready", database="ok", migrations=str(revision), listener=listener)


PROBES = [
    Operation(
        "GET", "/healthz", healthz, "Alive", response=Health, auth=False, store=False, probe=True
    ),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Ready: database reachable and taking writes, migrations current "
        "(cluster: listener connected)",
        response=Readiness,
        auth=False,
        errors=(503,),
        probe=True,
    ),
]


# Every REST operation but the probes: the routes and the OpenAPI document are made of these.
API_OPERATIONS = (
    home.OPERATIONS
    + sessions.OPERATIONS
    + members.OPERATIONS
    + invites.OPERATIONS
    + context.OPERATIONS
    + usage.OPERATIONS
    + events.OPERATIONS
    + access.OPERATIONS
    + prompts.OPERATIONS
    + threads.OPERATIONS
    + webhooks.OPERATIONS
)


def allowed_methods(request: Request) -> set[str]:
    """The methods routed for the request's path."""
    methods: set[str] = set()
    for candidate in request.app.router.routes:
        routed = isinstance(candidate, Route) and candidate.methods
        if routed and candidate.matches(request.scope)[0] is not Match.NONE:
            methods |= candidate.methods or set()
    return methods


@functools.cache
def api_document() -> dict[str, Any]:
    """The OpenAPI document of every operation, built once per process: pydantic's schema
    generation takes about 0.1 s, and it is the same for every app."""
    operations = PROBES + API_OPERATIONS
    return openapi_document(operations, title="Parley admin API", version=version())


def with_setting_maxima(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``document`` with the bound of each body field a setting bounds (``SETTING_MAXIMA``),
    as this server refuses past it (review RC-1: only its prose said)."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    for (model, name), (keyword, setting) in SETTING_MAXIMA.items():
        field = schemas[model]["properties"][name]
        for form in field.get("anyOf", [field]):
            if form.get("type") in ("integer", "string"):
                form[keyword] = getattr(settings, setting)
    return document


def create_app(
    settings: Settings | None = None,
    *,
    provider: ModelProvider | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The app on ``settings``. ``provider`` answers every model call instead of the
    configured models; ``transport`` carries the configured models' HTTP calls instead of
    the network (httpx's default when None)."""
    settings = settings or Settings()
    operations = PROBES + API_OPERATIONS
    spec = with_setting_maxima(api_document(), settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # Before anything reads or writes: another server may run on this database.
            release = await asyncio.to_thread(
                claim_database, settings.database_url, shared=settings.cluster
            )
            stack.push_async_callback(asyncio.to_thread, release)
            model = provider
            if model is None:
                model = await stack.enter_async_context(open_models(settings, transport))
            async with _resources(app, model):
                yield

    @asynccontextmanager
    async def _resources(app: Starlette, model: ModelProvider) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            # A stalled node's open transaction must not outlive its lease.
            idle_in_transaction_s=settings.lease_ttl_s if settings.cluster else None,
            lock_timeout_s=settings.db_lock_timeout_s,
        )
        metrics = Metrics()
        refusals = metrics.storage_refusals
        store = Store(
            engine,
            lock_timeout_s=settings.db_lock_timeout_s,
            health=StorageHealth(
                settings.storage_log_every_s,
                on_refused=lambda kind: refusals.labels(kind=kind).inc(),
            ),
        )
        try:
            check_schema_current(await current_revision(engine))
        except SchemaNotCurrent:
            await engine.dispose()
            raise
        store.subscriptions.cap = WaitingCap(settings.webhook_max_waiting)
        keys = resolve_keys(settings.data_dir, settings.admin_key, settings.secret_key)
        rooms = RoomRegistry(store, settings, model, clock, metrics)
        budget = SendBudget(settings.send_buffer_total_max_bytes, settings.send_stall_timeout_s)
        metrics.watch(lambda: len(rooms), rooms.queue_depth, lambda: budget.total)
        app.state.parley = AppState(settings, store, keys, rooms, clock, budget, metrics)
        await rooms.load_access()
        if settings.cluster:
            # Sessions with work are taken over by whichever node finds them free first.
            rooms.cluster = ClusterNode(settings, store, rooms)
            await rooms.cluster.start()
        else:
            recovered = await rooms.recover()
            if recovered:
                log.info("resumed sessions with pending prompts", extra={"sessions": recovered})
        rooms.start_reaper()
        # In a process of its own (not for a database only this engine reaches).
        sender: SenderProcess | WebhookSender
        if settings.webhook_sender == "process" and own_process_possible(settings.database_url):
            exits = Counter(
                "parley_webhook_sender_exits",
                "Times the webhook sender's process ended on its own (it is started again)",
                registry=metrics.registry,
            )
            sender = SenderProcess(store, settings, on_exit=exits.inc)
        else:
            sender = WebhookSender(store, settings, clock)
        # /metrics on a port of its own (a thread of prometheus_client's), e.g. for a
        # scraper inside the cluster while the API port faces the internet.
        exporter = (
            start_http_server(settings.metrics_port, settings.metrics_host, metrics.registry)[0]
            if settings.metrics_port
            else None
        )
        try:
            await sender.start(sole_sender=not settings.cluster)
            yield
        finally:
            await sender.stop()
            if rooms.cluster is not None:
                await rooms.cluster.stop()
            await rooms.close()
            await store.close()
            budget.close()
            if exporter is not None:
                await asyncio.to_thread(exporter.shutdown)
                exporter.server_close()

    async def metrics_endpoint(request: Request) -> Response:
        state: AppState = request.app.state.parley
        if settings.metrics_access == "off":
            raise NotFound("metrics are served on PARLEY_METRICS_PORT only")
        if settings.metrics_access == "admin" and not authenticate(request, state).is_admin:
            raise Forbidden("metrics need the admin key")
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def on_parley_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ParleyError)
        return error_response(exc, settings.db_retry_after_s)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid")
        headers = dict(exc.headers or {})
        methods = allowed_methods(request) if exc.status_code == 405 else set()
        if methods:
            # Every method of the path: a path's methods are routes of their own, and
            # Starlette's Allow names only the first one's (a mounted app's is its own).
            headers["Allow"] = ", ".join(sorted(methods))
        body = error_body(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def on_crash(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    routes: list[Any] = [
        sse.with_stream(route(op), op) if op.handler is events.list_events else route(op)
        for op in operations
    ]
    routes += [
        Route("/api/v1/openapi.json", FixedJSON(spec).answer, methods=["GET"]),
        *home.ROUTES,
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/demo", to_demo, methods=["GET"]),
        Mount("/demo", app=DemoFiles(settings.demo_dir), name="demo"),
        WebSocketRoute("/ws/sessions/{session_id}", SocketEndpoint(session_socket)),
        WebSocketRoute(
            "/ws/sessions/{session_id}/threads/{thread_id}", SocketEndpoint(thread_socket)
        ),
    ]
    middleware = [Middleware(RequestLog)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                # Last-Event-ID: a browser's EventSource resumes a stream with it.
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            )
        )
    # Innermost: its 404 is logged and carries CORS headers like any other.
    middleware.append(Middleware(OneSegmentIds))
    app = SocketsFirst(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ParleyError: on_parley_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
    # A path with a trailing "/" names no route (404 in the error shape): Starlette's router
    # answered it 307 with no body and a Location built from the request's Host header
    # (review RL-6), before any error handler.
    app.router.redirect_slashes = False
    return app
