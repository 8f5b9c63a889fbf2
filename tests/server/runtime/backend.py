"""The layer under the app: the rooms of a process (``RoomRegistry``) and the state the REST
handlers take (``AppState``), on a store — the in-memory one, or the real SQLite or
PostgreSQL store (``sql_store``; the REST handlers' access rows need it) — with no app, no
HTTP server and no socket. A test calls a REST handler as its route would (``Backend.call``:
the door's check of a member's token first; ``rest_body`` validates a body as the door
does), or the route's endpoint itself (``Backend.request``), and prompts through the one
door of a loaded room (``Backend.session``).

    async with sql_store(url) as store, backend(memory_settings(), store=store,
                                                model=FakeModel()) as b:
        sid = await b.new_session({"alice": "editor"})
        s = await b.session(sid)
        await s.prompt("alice", "hi")
"""

from __future__ import annotations

import contextlib
import json as json_module
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.routing import Match

from parley.authz.tokens import verify_token
from parley.server.app import API_OPERATIONS
from parley.server.http import members, sessions
from parley.server.http.models import MemberPut, SessionCreate, TokenCreate
from parley.server.http.rest import (
    ADMIN,
    Caller,
    Handler,
    Operation,
    authorize,
    invalid_body,
    route,
)
from parley.server.keys import Keys
from parley.server.providers.registry import open_models
from parley.server.runtime.rooms import RoomRegistry
from parley.server.settings import Settings
from parley.server.state import AppState
from parley.server.store.db import create_engine
from parley.server.store.memory import MemoryStore
from parley.server.store.sessions import Store
from parley.server.ws.send_budget import SendBudget
from parley.session.model import ModelProvider
from tests.conftest import ADMIN_KEY, SECRET_KEY, migrated_database
from tests.fake_model import FakeModel
from tests.server.runtime.harness import ManualClock, MemorySession, Watcher

Body = TypeVar("Body", bound=BaseModel)
OPERATIONS: list[Operation] = API_OPERATIONS  # the app's own list


def rest_body(model: type[Body], **fields: Any) -> Body:
    """A request body as the REST door reads it: invalid input is its ``InvalidInput``."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid_body(exc) from None


@contextlib.asynccontextmanager
async def sql_store(database_url: str) -> AsyncIterator[Store]:
    """The real store on a migrated database (SQLite file or PostgreSQL)."""
    await migrated_database(database_url)
    store = Store(create_engine(database_url))
    try:
        yield store
    finally:
        await store.close()


@dataclass
class Backend:
    state: AppState
    model: FakeModel | None = None

    @property
    def store(self) -> Any:
        return self.state.store

    @property
    def rooms(self) -> RoomRegistry:
        return self.state.rooms

    async def new_session(self, roles: dict[str, str], policy: str = "queue") -> str:
        """A session made and filled through the REST handlers, as the admin."""
        created = await sessions.create_session(self.state, SessionCreate(title="t", policy=policy))
        for user_id, role in roles.items():
            await members.put_member(self.state, created.id, user_id, MemberPut(role=role), ADMIN)
        return created.id

    async def token(self, session_id: str, user_id: str) -> str:
        """A client token issued to ``user_id``."""
        issued = await members.create_token(self.state, session_id, TokenCreate(user_id=user_id))
        return issued.token

    async def member(self, session_id: str, user_id: str) -> Caller:
        """The caller of a client token issued to ``user_id``, as the door verifies it."""
        token = await self.token(session_id, user_id)
        claims = verify_token(self.state.keys.signing_key, token, now=int(self.state.clock()))
        return Caller(claims.user_id, claims.session_id, claims)

    async def call(self, handler: Handler, caller: Caller = ADMIN, **kwargs: Any) -> Any:
        """``handler`` as its route calls it for ``caller``: first the door's check of a
        member's token and capability (``Forbidden``, audited), then the handler."""
        op = next(o for o in OPERATIONS if o.handler is handler)
        await authorize(op, caller, self.state, kwargs.get("session_id"))
        if op.with_caller:
            kwargs["caller"] = caller
        return await handler(self.state, **kwargs)

    async def request(
        self, method: str, url: str, json: Any = None, *, token: str | None = None
    ) -> httpx.Response:
        """A request to the REST route that matches ``url``, answered by the route's
        endpoint with no app around it (its authentication, query and body reading,
        handler and error mapping); sent with ``token`` (a client token; the admin key
        when None)."""
        path, _, query = url.partition("?")
        body = b"" if json is None else json_module.dumps(json).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        if json is not None:
            headers.append((b"content-type", b"application/json"))
        key = self.state.keys.admin_key if token is None else token
        headers.append((b"authorization", f"Bearer {key}".encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "method": method,
            "path": unquote(path),
            "query_string": query.encode(),
            "headers": headers,
            "app": SimpleNamespace(state=SimpleNamespace(parley=self.state)),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        for op in OPERATIONS:
            door = route(op)
            match, child = door.matches(scope)
            if match is Match.FULL:
                answer = await door.endpoint(Request({**scope, **child}, receive))
                return httpx.Response(
                    answer.status_code, headers=dict(answer.headers), content=bytes(answer.body)
                )
        raise AssertionError(f"no route for {method} {path}")

    async def session(self, session_id: str) -> MemorySession:
        """The session's loaded room, with a ``Watcher`` among its sockets."""
        room = await self.rooms.get(session_id)
        if not any(isinstance(c, Watcher) for c in room.connections):
            room.connections.add(Watcher())  # type: ignore[arg-type]
        return MemorySession(self.store, room, None, self.model, self.state.clock)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def backend(
    settings: Settings,
    *,
    store: Any = None,
    model: FakeModel | None = None,
    provider: ModelProvider | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Backend]:
    """Rooms and handler state on ``store`` (in memory unless given). The models are those
    ``settings`` configure, reached through ``transport`` (the network unless given; a
    ``model``: its configuration and its transport), or ``provider`` alone. The clock is a
    ``ManualClock`` unless given."""
    clock = clock or ManualClock()
    store = store if store is not None else MemoryStore()
    if model is not None:
        settings, transport = model.configure(settings), model.transport
    async with contextlib.AsyncExitStack() as stack:
        if provider is None:
            provider = await stack.enter_async_context(open_models(settings, transport))
        rooms = RoomRegistry(store, settings, provider, clock)
        stack.push_async_callback(rooms.close)
        await rooms.load_access()
        keys = Keys(ADMIN_KEY, SECRET_KEY, False)
        budget = SendBudget(settings.send_buffer_total_max_bytes, settings.send_stall_timeout_s)
        yield Backend(AppState(settings, store, keys, rooms, clock, budget), model)
