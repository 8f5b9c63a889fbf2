"""The admin REST API over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from tests.conftest import RunningServer


async def test_session_lifecycle(server: RunningServer) -> None:
    created = await server.http.post("/api/v1/sessions", json={"title": "Incident 42"})
    assert created.status_code == 201
    session = created.json()
    assert session["title"] == "Incident 42" and session["last_seq"] == 0

    listed = (await server.http.get("/api/v1/sessions")).json()
    assert [s["id"] for s in listed["sessions"]] == [session["id"]]
    assert listed["total"] == 1

    fetched = await server.http.get(f"/api/v1/sessions/{session['id']}")
    assert fetched.json() == session

    assert (await server.http.delete(f"/api/v1/sessions/{session['id']}")).status_code == 204
    missing = await server.http.get(f"/api/v1/sessions/{session['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_session_title_is_optional(server: RunningServer) -> None:
    created = await server.http.post("/api/v1/sessions")
    assert created.status_code == 201
    assert created.json()["title"] == ""


async def test_members_and_roles(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "owner", "bob": "viewer"})
    base = f"/api/v1/sessions/{sid}/members"
    members = (await server.http.get(base)).json()["members"]
    assert {(m["user_id"], m["role"]) for m in members} == {("alice", "owner"), ("bob", "viewer")}

    changed = await server.http.put(f"{base}/bob", json={"role": "editor"})
    assert changed.status_code == 200 and changed.json()["role"] == "editor"

    assert (await server.http.delete(f"{base}/bob")).status_code == 204
    assert (await server.http.delete(f"{base}/bob")).status_code == 404
    members = (await server.http.get(base)).json()["members"]
    assert [m["user_id"] for m in members] == ["alice"]


async def test_bad_member_input(server: RunningServer) -> None:
    sid = await server.new_session({})
    base = f"/api/v1/sessions/{sid}/members"
    bad_role = await server.http.put(f"{base}/carol", json={"role": "admin"})
    assert bad_role.status_code == 422
    assert bad_role.json()["error"]["code"] == "invalid"
    extra = await server.http.put(f"{base}/carol", json={"role": "viewer", "x": 1})
    assert extra.status_code == 422
    bad_user = await server.http.put(f"{base}/bad%20user", json={"role": "viewer"})
    assert bad_user.status_code == 422
    unknown = await server.http.put("/api/v1/sessions/nope/members/carol", json={"role": "viewer"})
    assert unknown.status_code == 404


async def test_tokens(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    url = f"/api/v1/sessions/{sid}/tokens"
    minted = await server.http.post(url, json={"user_id": "alice", "ttl_seconds": 60})
    assert minted.status_code == 201
    body = minted.json()
    assert body["user_id"] == "alice" and body["role"] == "editor" and body["token"]
    not_member = await server.http.post(url, json={"user_id": "mallory"})
    assert not_member.status_code == 409
    assert not_member.json()["error"]["code"] == "conflict"
    unknown = await server.http.post("/api/v1/sessions/nope/tokens", json={"user_id": "alice"})
    assert unknown.status_code == 404
    too_long = await server.http.post(url, json={"user_id": "alice", "ttl_seconds": 10**9})
    assert too_long.status_code == 422
    zero = await server.http.post(url, json={"user_id": "alice", "ttl_seconds": 0})
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
