"""Every role against every REST route and every WebSocket command: allowed or ``forbidden``.

The expectations are written from the product rules (which capability each route needs,
what each role carries), not read from the code. Each role acts with its own client token;
a removed member's token still verifies, so it shows what "not a member" gets. (The
restricted-text route, whose answer also depends on the item's readers, is exercised by
tests/server/test_confused_deputy.py.)

The routes are reached through their endpoints with no app around them
(``Backend.request``: the door's token check, the route table, the handler) and the
commands through the session's one door for command frames (``RoomRegistry.command``), on
a room over the real SQLite store. That a socket is refused at its handshake is checked
over a real socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.session.commands import MessageCommand
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import FakeModel, Forever
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.harness import memory_settings
from tests.server.test_ws import close_code_of

READ, PIN, MANAGE, MEMBERS, AUDIT = "read", "pin", "manage", "members", "audit"
ADMIN = "admin"

# What each role may do, by the capabilities the routes below need.
ROLES: dict[str, set[str]] = {
    "owner": {READ, PIN, MANAGE, MEMBERS, AUDIT},
    "editor": {READ, PIN},
    "viewer": {READ},
    "auditor": {READ, AUDIT},  # a custom role: read_session, be_present, read_audit
    "outsider": set(),  # was a member; removed
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {sid}, {entry}, {user} are filled in
    needs: str
    body: dict[str, Any] | None = None


ROUTES = [
    Route("GET", "/api/v1/sessions/{sid}", READ),
    Route("PATCH", "/api/v1/sessions/{sid}", MANAGE, {"title": "renamed"}),
    Route("GET", "/api/v1/sessions/{sid}/members", READ),
    Route("PUT", "/api/v1/sessions/{sid}/members/zed", MEMBERS, {"role": "viewer"}),
    Route("DELETE", "/api/v1/sessions/{sid}/members/zed", MEMBERS),
    Route("POST", "/api/v1/sessions/{sid}/tokens", ADMIN, {"user_id": "zed"}),
    Route("GET", "/api/v1/sessions/{sid}/transcript", READ),
    Route("GET", "/api/v1/sessions/{sid}/facts", READ),
    Route("PUT", "/api/v1/sessions/{sid}/facts/k", PIN, {"value": "v"}),
    Route("DELETE", "/api/v1/sessions/{sid}/facts/k", PIN),
    Route("GET", "/api/v1/sessions/{sid}/pins", READ),
    Route("POST", "/api/v1/sessions/{sid}/pins", PIN, {"entry_id": "{entry}"}),
    Route("DELETE", "/api/v1/sessions/{sid}/pins/{entry}", PIN),
    Route("GET", "/api/v1/sessions/{sid}/context?user_id={user}", READ),
    Route("GET", "/api/v1/sessions/{sid}/context?user_id=olga", ADMIN),  # someone else's
    Route(
        "POST",
        "/api/v1/sessions/{sid}/documents",
        MANAGE,
        {"title": "t", "text": "x", "readers": {"roles": ["viewer"]}},
    ),
    Route("GET", "/api/v1/sessions/{sid}/documents", READ),
    Route("GET", "/api/v1/sessions/{sid}/documents/{doc}", READ),
    Route("DELETE", "/api/v1/sessions/{sid}/documents/{doc}", MANAGE),
    Route("GET", "/api/v1/sessions/{sid}/audit", AUDIT),
    Route("POST", "/api/v1/tools", ADMIN, {"name": "t", "description": "d", "url": "http://x/"}),
    Route("GET", "/api/v1/tools", ADMIN),
    Route("POST", "/api/v1/sessions", ADMIN, {"title": "mine"}),
    Route("GET", "/api/v1/sessions", ADMIN),
    Route("GET", "/api/v1/roles", ADMIN),
    Route("PUT", "/api/v1/roles/hacker", ADMIN, {"capabilities": ["prompt"]}),
    Route("DELETE", "/api/v1/roles/auditor", ADMIN),
    Route("DELETE", "/api/v1/sessions/{sid}", MANAGE),  # last: it ends the session
]


def blocking() -> FakeModel:
    """A model that never finishes, so prompts stay waiting and cancellable."""
    return FakeModel(lambda sent: ["thinking ", Forever()])


async def define_auditor(request: Any) -> None:
    defined = await request(
        "PUT",
        "/api/v1/roles/auditor",
        json={"capabilities": ["read_session", "be_present", "read_audit"]},
    )
    assert defined.status_code == 200, defined.text


@pytest.fixture
async def matrix(tmp_path: Path) -> AsyncIterator[Backend]:
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=blocking()) as b,
    ):
        await define_auditor(b.request)
        yield b


@pytest.fixture
async def matrix_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, blocking()) as server:
        await define_auditor(server.http.request)
        yield server


async def _session_for(b: Backend, role: str) -> tuple[str, str, str]:
    """A session where ``u`` has ``role`` (outsider: removed), with an entry to pin and a
    document every role may read."""
    sid = await b.new_session({"u": "viewer" if role == "outsider" else role, "olga": "owner"})
    token = await b.token(sid, "u")
    if role == "outsider":
        assert (await b.request("DELETE", f"/api/v1/sessions/{sid}/members/u")).status_code == 204
    s = await b.session(sid)
    posted = await s.send("olga", MessageCommand("m", "pin me"))
    document = await b.request(
        "POST",
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "all", "text": "for all", "readers": {"roles": list(ROLES)}},
    )
    return sid, token, f"{posted['message_id']}/{document.json()['id']}"


async def _prepare(b: Backend, sid: str, route: Route, entry: str) -> None:
    """Make the target of a route exist (as the admin) so only authorization decides."""
    if route.path.endswith("/members/zed"):
        await b.request("PUT", f"/api/v1/sessions/{sid}/members/zed", json={"role": "viewer"})
    if route.path.endswith("/facts/k") and route.method == "DELETE":
        await b.request("PUT", f"/api/v1/sessions/{sid}/facts/k", json={"value": "v"})
    if route.path.endswith("/pins/{entry}"):
        pin = {"entry_id": entry.split("/")[0]}
        await b.request("POST", f"/api/v1/sessions/{sid}/pins", json=pin)


def _fill(text: str, sid: str, ids: str) -> str:
    entry, doc = ids.split("/")
    filled = text.replace("{sid}", sid).replace("{entry}", entry).replace("{doc}", doc)
    return filled.replace("{user}", "u")


@pytest.mark.parametrize("role", list(ROLES))
async def test_every_rest_route_for_every_role(matrix: Backend, role: str) -> None:
    b = matrix
    sid, token, entry = await _session_for(b, role)
    allowed_caps = ROLES[role]
    outcomes: list[str] = []
    for route in ROUTES:
        await _prepare(b, sid, route, entry)
        body = None
        if route.body is not None:
            body = {
                k: _fill(v, sid, entry) if isinstance(v, str) else v for k, v in route.body.items()
            }
        url = _fill(route.path, sid, entry)
        response = await b.request(route.method, url, json=body, token=token)
        allowed = route.needs in allowed_caps
        label = f"{route.method} {route.path}"
        if allowed:
            ok = 200 <= response.status_code < 300
            outcomes.append(f"{label}: {'ok' if ok else response.text}")
        else:
            code = response.json()["error"]["code"] if response.status_code == 403 else None
            ok = response.status_code == 403 and code == "forbidden"
            outcomes.append(f"{label}: {'denied' if ok else response.text}")
        assert ok, outcomes[-1]
    # The refusals were audited (the outsider's too: they are still named by the token).
    if role != "owner":  # (the owner deleted the session last)
        audit = await b.request("GET", f"/api/v1/sessions/{sid}/audit?kind=refused&actor=u")
        assert audit.status_code == 200, audit.text
        refused = [r["data"]["action"].split(" ")[0] for r in audit.json()["records"]]
        session_routes = [r for r in ROUTES if "{sid}" in r.path]
        # The other member's context preview is refused by its handler, audited as the
        # route table's refusals are (review RV40-F4: it was not). A reader's change of a
        # fact or pin is judged as the socket's command is, and audited so; one who may
        # not read is refused by the route table.
        expected = [
            "command" if r.needs == PIN and READ in allowed_caps else r.method
            for r in session_routes
            if r.needs not in allowed_caps
        ]
        assert refused == expected


async def test_a_token_acts_only_in_its_own_session(matrix: Backend) -> None:
    b = matrix
    mine = await b.new_session({"u": "owner"})
    other = await b.new_session({"u": "owner"})
    token = await b.token(mine, "u")
    response = await b.request("GET", f"/api/v1/sessions/{other}", token=token)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert (await b.request("GET", f"/api/v1/sessions/{mine}", token=token)).status_code == 200
    garbage = await b.request("GET", f"/api/v1/sessions/{mine}", token="nonsense")
    assert garbage.status_code == 401


COMMANDS: list[tuple[str, dict[str, Any], str | None]] = [
    # (name, command, capability needed: None for "ack for anyone who may read")
    ("prompt", {"type": "prompt", "text": "hello"}, "prompt"),
    ("message", {"type": "message", "text": "hi all"}, "post"),
    ("pin", {"type": "pin", "entry_id": "{entry}"}, "pin"),
    ("unpin", {"type": "unpin", "entry_id": "{entry}"}, "pin"),
    ("set_fact", {"type": "set_fact", "key": "k", "value": "v"}, "pin"),
    ("set_policy", {"type": "set_policy", "policy": "queue"}, "manage"),
    ("cancel_own", {"type": "cancel", "prompt_id": "{own}"}, "cancel_own"),
    ("cancel_other", {"type": "cancel", "prompt_id": "{other}"}, "cancel_any"),
]
WS_ROLES: dict[str, set[str]] = {
    "owner": {"prompt", "post", "pin", "manage", "cancel_own", "cancel_any"},
    "editor": {"prompt", "post", "pin", "cancel_own"},
    "viewer": set(),
    "auditor": set(),
}


@pytest.mark.parametrize("role", list(WS_ROLES))
async def test_every_command_for_every_role(matrix: Backend, role: str) -> None:
    b = matrix
    sid, _, ids = await _session_for(b, role)
    entry = ids.split("/")[0]
    room = await b.rooms.get(sid)

    async def send(user_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A command frame through the session's one door, as a socket hands it in."""
        return dict(json.loads(await b.rooms.command(room, user_id, json.dumps(payload))))

    await send("olga", {"type": "prompt", "id": "o1", "text": "runs forever"})
    waiting = await send("olga", {"type": "prompt", "id": "o2", "text": "waits"})
    own: str | None = None
    if "prompt" in WS_ROLES[role]:
        own = str((await send("u", {"type": "prompt", "id": "own", "text": "mine"}))["prompt_id"])
    for name, command, needs in COMMANDS:
        if name == "cancel_own" and own is None:
            continue  # nothing of their own to cancel: they could not prompt
        payload = {
            k: (
                v.replace("{entry}", entry)
                .replace("{own}", own or "")
                .replace("{other}", str(waiting["prompt_id"]))
                if isinstance(v, str)
                else v
            )
            for k, v in command.items()
        }
        reply = await send("u", {"id": f"c-{name}", **payload})
        if needs in WS_ROLES[role]:
            assert reply["type"] == "ack", (name, reply)
        else:
            assert reply["type"] == "error" and reply["code"] == "forbidden", (name, reply)


async def test_an_outsider_cannot_open_a_socket(matrix_server: RunningServer) -> None:
    server = matrix_server
    sid = await server.new_session({"u": "viewer", "olga": "owner"})
    token = await server.token(sid, "u")
    assert (await server.http.delete(f"/api/v1/sessions/{sid}/members/u")).status_code == 204
    assert await close_code_of(f"{server.ws_url}/ws/sessions/{sid}?token={token}") == 4403


async def test_a_member_manager_cannot_hand_out_more_than_they_hold(matrix: Backend) -> None:
    b = matrix
    await b.request(
        "PUT",
        "/api/v1/roles/manager",
        json={"capabilities": ["read_session", "be_present", "manage_members", "prompt"]},
    )
    sid = await b.new_session({"m": "manager", "olga": "owner", "v": "viewer"})
    token = await b.token(sid, "m")
    members = f"/api/v1/sessions/{sid}/members"
    cases = [
        ("PUT", "m", {"role": "manager", "grants": ["read_audit"]}, 403),
        ("PUT", "v", {"role": "owner"}, 403),
        ("PUT", "olga", {"role": "viewer"}, 403),  # olga holds more than m
        ("DELETE", "olga", None, 403),
        ("PUT", "v", {"role": "viewer", "denials": ["be_present"]}, 200),
        ("PUT", "newbie", {"role": "viewer"}, 200),
        ("DELETE", "newbie", None, 204),
    ]
    for method, user, body, status in cases:
        response = await b.request(method, f"{members}/{user}", json=body, token=token)
        assert response.status_code == status, (method, user, body, response.text)
    roles = {m["user_id"]: m["role"] for m in (await b.request("GET", members)).json()["members"]}
    assert roles == {"m": "manager", "olga": "owner", "v": "viewer"}
