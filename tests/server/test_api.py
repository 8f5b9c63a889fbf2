"""The admin REST API on SQLite and PostgreSQL: sessions, members and tokens through the
routes' endpoints with no app around them (``Backend.request``); the key, the body limits,
the app's own paths and the OpenAPI document over real HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import RunningServer
from tests.fake_model import FakeModel
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.harness import memory_settings


@pytest.fixture
async def rest(database_url: str) -> AsyncIterator[Backend]:
    """The REST routes and rooms on the real store of ``database_url``, with no app."""
    async with (
        sql_store(database_url) as store,
        backend(memory_settings(), store=store, model=FakeModel()) as b,
    ):
        yield b


async def test_session_lifecycle(rest: Backend) -> None:
    created = await rest.request("POST", "/api/v1/sessions", json={"title": "Incident 42"})
    assert created.status_code == 201
    session = created.json()
    assert session["title"] == "Incident 42" and session["last_seq"] == 0

    listed = (await rest.request("GET", "/api/v1/sessions")).json()
    assert [s["id"] for s in listed["sessions"]] == [session["id"]]
    assert listed["total"] == 1

    fetched = await rest.request("GET", f"/api/v1/sessions/{session['id']}")
    assert fetched.json() == session

    assert (await rest.request("DELETE", f"/api/v1/sessions/{session['id']}")).status_code == 204
    missing = await rest.request("GET", f"/api/v1/sessions/{session['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_cursor_pages_sessions_past_one_deleted_between_pages(rest: Backend) -> None:
    """Review (nothing lost): ``?offset=`` counts rows, so a session deleted before the
    next page moved the others down one and a reader paging by offset skipped one. The
    page's ``next_cursor`` is where its last session is, whatever is deleted before it."""
    for n in range(5):
        assert (await rest.request("POST", "/api/v1/sessions", json={"title": f"t{n}"})).is_success
    every = [s["id"] for s in (await rest.request("GET", "/api/v1/sessions")).json()["sessions"]]
    first = (await rest.request("GET", "/api/v1/sessions?limit=2")).json()
    assert [s["id"] for s in first["sessions"]] == every[:2] and first["next_cursor"]
    assert (await rest.request("DELETE", f"/api/v1/sessions/{every[0]}")).status_code == 204
    seen = [s["id"] for s in first["sessions"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = (await rest.request("GET", f"/api/v1/sessions?limit=2&cursor={cursor}")).json()
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
    assert seen == every  # none skipped, none twice
    for bad in ("nope!", "bm9wZQ", f"{first['next_cursor']}&offset=1"):
        refused = await rest.request("GET", f"/api/v1/sessions?cursor={bad}")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize(
    "position", [[10**30, "x"], [2**63, "x"], [-1, "x"], [1, ""], [1, "x" * 201], [True, "x"]]
)
async def test_a_cursor_out_of_the_columns_range_is_refused_invalid(
    rest: Backend, position: list[object]
) -> None:
    """Review: a cursor's number past a 64-bit integer reached the database driver, which
    failed (500 on SQLite, 503 ``unavailable`` on PostgreSQL): a caller's input, not a
    fault of the server's."""
    raw = json.dumps(position).encode()
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    refused = await rest.request("GET", f"/api/v1/sessions?cursor={cursor}")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"


async def test_session_title_is_optional(rest: Backend) -> None:
    created = await rest.request("POST", "/api/v1/sessions")
    assert created.status_code == 201
    assert created.json()["title"] == ""


async def test_members_and_roles(rest: Backend) -> None:
    sid = await rest.new_session({"alice": "owner", "bob": "viewer"})
    base = f"/api/v1/sessions/{sid}/members"
    members = (await rest.request("GET", base)).json()["members"]
    assert {(m["user_id"], m["role"]) for m in members} == {("alice", "owner"), ("bob", "viewer")}

    changed = await rest.request("PUT", f"{base}/bob", json={"role": "editor"})
    assert changed.status_code == 200 and changed.json()["role"] == "editor"

    assert (await rest.request("DELETE", f"{base}/bob")).status_code == 204
    assert (await rest.request("DELETE", f"{base}/bob")).status_code == 404
    members = (await rest.request("GET", base)).json()["members"]
    assert [m["user_id"] for m in members] == ["alice"]


async def test_bad_member_input(rest: Backend) -> None:
    sid = await rest.new_session({})
    base = f"/api/v1/sessions/{sid}/members"
    bad_role = await rest.request("PUT", f"{base}/carol", json={"role": "admin"})
    assert bad_role.status_code == 422
    assert bad_role.json()["error"]["code"] == "invalid"
    extra = await rest.request("PUT", f"{base}/carol", json={"role": "viewer", "x": 1})
    assert extra.status_code == 422
    bad_user = await rest.request("PUT", f"{base}/bad%20user", json={"role": "viewer"})
    assert bad_user.status_code == 422
    unknown = await rest.request(
        "PUT", "/api/v1/sessions/nope/members/carol", json={"role": "viewer"}
    )
    assert unknown.status_code == 404


async def test_no_member_takes_the_name_the_admin_key_acts_under(rest: Backend) -> None:
    """Audit records, events (``by``) and webhooks name the admin key ``admin``: a member
    of that name would pass for it (an owner's changes read as the admin's)."""
    sid = await rest.new_session({})
    taken = await rest.request(
        "PUT", f"/api/v1/sessions/{sid}/members/admin", json={"role": "owner"}
    )
    assert taken.status_code == 422, taken.text
    assert taken.json()["error"]["code"] == "invalid"


async def test_tokens(rest: Backend) -> None:
    sid = await rest.new_session({"alice": "editor"})
    url = f"/api/v1/sessions/{sid}/tokens"
    minted = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 60})
    assert minted.status_code == 201
    body = minted.json()
    assert body["user_id"] == "alice" and body["role"] == "editor" and body["token"]
    not_member = await rest.request("POST", url, json={"user_id": "mallory"})
    assert not_member.status_code == 409
    assert not_member.json()["error"]["code"] == "conflict"
    unknown = await rest.request("POST", "/api/v1/sessions/nope/tokens", json={"user_id": "alice"})
    assert unknown.status_code == 404
    too_long = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 10**9})
    assert too_long.status_code == 422
    zero = await rest.request("POST", url, json={"user_id": "alice", "ttl_seconds": 0})
    assert zero.status_code == 422


async def test_admin_key_is_required(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        missing = await anonymous.get("/api/v1/sessions")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthenticated"
        wrong = await anonymous.get(
            "/api/v1/sessions", headers={"Authorization": "Bearer not-the-key"}
        )
        assert wrong.status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json()["status"] == "ready"


async def test_malformed_and_oversized_bodies(server: RunningServer) -> None:
    not_json = await server.http.post(
        "/api/v1/sessions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    huge = await server.http.post("/api/v1/sessions", content=b"x" * (2 * 1024 * 1024))
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "too_large"
    long_title = await server.http.post("/api/v1/sessions", json={"title": "t" * 501})
    assert long_title.status_code == 422
    bad_paging = await server.http.get("/api/v1/sessions?limit=0")
    assert bad_paging.status_code == 422
    # The bound the API document gives is taken; a parameter given twice is refused.
    at_the_bound = await server.http.get("/api/v1/sessions?offset=1000000000")
    assert at_the_bound.status_code == 200, at_the_bound.text
    past = await server.http.get("/api/v1/sessions?offset=1000000001")
    assert past.status_code == 422 and "between" in past.json()["error"]["message"]
    twice = await server.http.get("/api/v1/sessions?limit=1&limit=2")
    assert twice.status_code == 422 and "once" in twice.json()["error"]["message"]
    nowhere = await server.http.get("/api/v1/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "not_found"


async def test_openapi_document_describes_every_route(server: RunningServer) -> None:
    spec = (await server.http.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths["/api/v1/sessions"]) == {"get", "post"}
    assert set(paths["/api/v1/sessions/{session_id}/members/{user_id}"]) == {"put", "delete"}
    post = paths["/api/v1/sessions/{session_id}/tokens"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "TokenCreate"
    )
    assert "409" in post["responses"]
    for name in ("SessionOut", "TokenOut", "TranscriptOut", "ErrorBody"):
        assert name in spec["components"]["schemas"]
