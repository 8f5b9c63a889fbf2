"""What an integrator meets first: the root, the API page, the model list, and the REST
details (``Location`` on creates, 415 for a body that is not JSON, every validation
problem listed, stable codes for a wrong method)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url


async def test_the_root_says_what_this_is_and_where_to_go(sqlite_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as anonymous:
        root = await anonymous.get("/")
        assert root.status_code == 200
        links = root.json()["links"]
        for path in (links["api"], links["api_docs"], links["health"]):
            assert (await anonymous.get(path)).status_code == 200, path


async def test_the_api_page_is_served_from_here_without_a_cdn(sqlite_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as anonymous:
        page = await anonymous.get("/api/v1/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "https://" not in page.text and "//cdn" not in page.text
        assert "/api/v1/openapi.json" in page.text
        for asset in ("swagger-ui.css", "swagger-ui-bundle.js"):
            served = await anonymous.get(f"/api/v1/docs/assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 10_000, asset
        for outside in (
            "/api/v1/docs/assets/%2e%2e/%2e%2e/pyproject.toml",
            "/api/v1/docs/assets/x.js",
        ):
            assert (await anonymous.get(outside)).status_code == 404, outside


async def test_models_are_listed_for_the_admin(sqlite_server: RunningServer) -> None:
    listed = await sqlite_server.http.get("/api/v1/models")
    assert listed.status_code == 200
    models = listed.json()["models"]
    assert [m["name"] for m in models if m["default"]] == [models[0]["name"]]
    session = (await sqlite_server.http.post("/api/v1/sessions", json={"title": "t"})).json()
    chosen = await sqlite_server.http.patch(
        f"/api/v1/sessions/{session['id']}", json={"model": models[0]["name"]}
    )
    assert chosen.status_code == 200
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as anonymous:
        assert (await anonymous.get("/api/v1/models")).status_code == 401


async def test_creates_say_where_the_new_resource_is(sqlite_server: RunningServer) -> None:
    http = sqlite_server.http
    created = await http.post("/api/v1/sessions", json={"title": "t"})
    assert created.status_code == 201
    location = created.headers["location"]
    assert location == f"/api/v1/sessions/{created.json()['id']}"
    assert (await http.get(location)).json() == created.json()
    sid = created.json()["id"]
    await http.put(f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"})
    token = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "alice"})
    assert token.headers["location"] == f"/api/v1/sessions/{sid}/tokens/{token.json()['jti']}"
    assert (await http.delete(token.headers["location"])).status_code == 204
    prompt = await http.post(
        f"/api/v1/sessions/{sid}/prompts", json={"text": "hello", "as_user": "alice"}
    )
    assert prompt.status_code == 202
    status = await http.get(prompt.headers["location"])
    assert status.json()["prompt_id"] == prompt.json()["prompt_id"]


async def test_a_body_that_is_not_declared_json_is_415(sqlite_server: RunningServer) -> None:
    body = json.dumps({"title": "t"})
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {} if content_type is None else {"content-type": content_type}
        refused = await sqlite_server.http.post("/api/v1/sessions", content=body, headers=headers)
        assert refused.status_code == 415, content_type
        assert refused.json()["error"]["code"] == "unsupported_media_type"
    for content_type in ("application/json", "application/json; charset=utf-8"):
        fine = await sqlite_server.http.post(
            "/api/v1/sessions", content=body, headers={"content-type": content_type}
        )
        assert fine.status_code == 201, content_type
    listed = (await sqlite_server.http.get("/api/v1/sessions")).json()["sessions"]
    assert len(listed) == 2  # nothing half-written by the refusals


async def test_every_validation_problem_is_listed(sqlite_server: RunningServer) -> None:
    bad = {"title": "t" * 501, "policy": "whenever", "surprise": 1}
    refused = await sqlite_server.http.post("/api/v1/sessions", json=bad)
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "invalid"
    where = {d["at"] for d in error["details"]}
    assert where == {"title", "policy", "surprise"}
    for at in where:
        assert at in error["message"]


async def test_a_broken_rule_is_listed_in_the_details_too(sqlite_server: RunningServer) -> None:
    """Review I4: a body of the right form that broke a rule (blank text, a fact with a
    line break, an unknown role or model) was ``invalid`` with ``details: null``."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    at = f"/api/v1/sessions/{sid}"
    alice = {"Authorization": f"Bearer {await server.token(sid, 'alice')}"}
    cases = [
        ("POST", f"{at}/prompts", {"text": "   "}, alice, "text"),
        ("PUT", f"{at}/facts/k", {"value": "a\nb"}, alice, "value"),
        ("PUT", f"{at}/members/bob", {"role": "nope"}, None, "role"),
        ("PATCH", at, {"model": "nope"}, None, "model"),
        ("GET", "/api/v1/sessions?limit=0", None, None, "limit"),
    ]
    for method, path, body, headers, where in cases:
        sent = {} if body is None else {"json": body}
        refused = await server.http.request(method, path, headers=headers, **sent)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid"
        ((at, what),) = ((d["at"], d["message"]) for d in error["details"])
        assert at == where and what and what in error["message"], error


async def test_validation_problems_are_bounded(sqlite_server: RunningServer) -> None:
    sid = (await sqlite_server.http.post("/api/v1/sessions", json={"title": "t"})).json()["id"]
    readers = [{"nonsense": n} for n in range(2000)]
    refused = await sqlite_server.http.post(
        f"/api/v1/sessions/{sid}/documents", json={"title": "d", "text": "x", "readers": readers}
    )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert 0 < len(error["details"]) <= 50
    assert len(error["message"]) < 20_000


async def test_a_wrong_method_has_its_code(sqlite_server: RunningServer) -> None:
    wrong = await sqlite_server.http.put("/api/v1/sessions", json={})
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) >= {"GET", "POST"}  # RFC 9110: it must
    mounted = await sqlite_server.http.post("/demo/index.html")  # the demo's files
    assert mounted.status_code == 405 and mounted.headers.get("allow", "GET") != ""


async def test_the_api_document_groups_and_describes_operations(
    sqlite_server: RunningServer,
) -> None:
    spec = (await sqlite_server.http.get("/api/v1/openapi.json")).json()
    operations = [op for item in spec["paths"].values() for op in item.values()]
    assert all(op.get("tags") for op in operations)
    tags = {op["tags"][0] for op in operations}
    assert {"sessions", "members", "tokens", "prompts", "webhooks", "models"} <= tags
    create = spec["paths"]["/api/v1/sessions"]["post"]
    assert "Location" in create["responses"]["201"]["headers"]
    assert "415" in create["responses"]
    assert all(op.get("summary") for op in operations)
    models = spec["paths"]["/api/v1/models"]["get"]  # a handler's docstring describes it
    assert "PARLEY_MODELS" in models["description"]


async def test_metrics_can_need_the_admin_key_or_move_to_a_port_of_their_own(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The admin key by default (reviews RI-1, RL-7: open, anyone could read the sizes of
    # other sessions' replies and the token counts the audit withholds).
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", metrics_port=port)
    async with serve_in_process(settings) as running:
        assert (await running.http.get("/metrics")).status_code == 200
        async with httpx.AsyncClient(base_url=running.base_url) as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401
            sid = await running.new_session({"mallory": "viewer"})
            member = {"Authorization": f"Bearer {await running.token(sid, 'mallory')}"}
            assert (await anonymous.get("/metrics", headers=member)).status_code == 403
            apart = await anonymous.get(f"http://127.0.0.1:{port}/metrics")
            assert apart.status_code == 200 and "parley_open_connections" in apart.text
    with socket.socket() as free_again:  # the exporter let its port go with the app
        free_again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        free_again.bind(("127.0.0.1", port))
        free_again.listen()
    hidden = make_settings(sqlite_url(tmp_path), tmp_path / "data", metrics_access="off")
    async with serve_in_process(hidden) as running:
        assert (await running.http.get("/metrics")).status_code == 404


async def test_a_query_string_with_a_nul_is_invalid_input(server: RunningServer) -> None:
    # As in a path or a body: no database can be asked about it (PostgreSQL refuses NUL in
    # text, which read as ``503 unavailable`` though the database was fine).
    sid = await server.new_session({})
    for query in ("kind=%00", "actor=a%00b"):
        answer = await server.http.get(f"/api/v1/sessions/{sid}/audit?{query}")
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["error"]["code"] == "invalid"


async def test_the_api_document_declares_what_the_routes_answer(
    sqlite_server: RunningServer,
) -> None:
    """Review (integrators): a client token on an admin-only route is answered 403, which
    the document did not declare; nor the event stream's content type, its resume header
    and its 400 ``bad_event_id``."""
    server = sqlite_server
    document = (await server.http.get("/api/v1/openapi.json")).json()
    sid = await server.new_session({"bob": "editor"})
    token = await server.token(sid, "bob")
    as_bob = {"Authorization": f"Bearer {token}"}
    for method, path in (("GET", "/api/v1/sessions"), ("GET", "/api/v1/roles")):
        answered = await server.http.request(method, path, headers=as_bob)
        assert answered.status_code == 403, (path, answered.text)
        assert "403" in document["paths"][path][method.lower()]["responses"], path
    events = document["paths"]["/api/v1/sessions/{session_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "400" in events["responses"]
    resume = {p["name"]: p for p in events["parameters"]}["Last-Event-ID"]
    assert resume["in"] == "header" and resume["schema"]["type"] == "string"
    bad = await server.http.get(
        f"/api/v1/sessions/{sid}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "nonsense"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_event_id"


async def test_numbers_in_queries_and_event_ids_are_ascii_digits(
    sqlite_server: RunningServer,
) -> None:
    """Review: ``\\d`` matches any script's digits, so ``?limit=٣`` was read as 3, and an
    event id written in fullwidth digits resumed a stream."""
    server = sqlite_server
    sid = await server.new_session({"bob": "editor"})
    for digits in ("\u0663", "\uff12\uff10\uff10"):
        listed = await server.http.get("/api/v1/sessions", params={"limit": digits})
        assert listed.status_code == 422 and listed.json()["error"]["code"] == "invalid"
        resumed = await server.http.get(
            f"/api/v1/sessions/{sid}/events",
            params={"last_event_id": digits},
            headers={"Accept": "text/event-stream"},
        )
        assert resumed.status_code == 400 and resumed.json()["error"]["code"] == "bad_event_id"


async def test_an_encoded_slash_keeps_an_id_one_segment_on_every_route(
    sqlite_server: RunningServer,
) -> None:
    """Review I4: ``%2F`` was decoded before routing, so ``DELETE /sessions/<sid>%2Fmembers%2Fbob``
    (an id no session has) removed bob and ``GET /sessions/<sid>%2Ftranscript`` answered the
    transcript. A segment's ``%2F`` is data (RFC 3986): such a path names nothing."""
    server = sqlite_server
    sid = await server.new_session({"bob": "editor"})
    put = await server.http.put(f"/api/v1/sessions/{sid}/facts/k", json={"value": "v"})
    assert put.status_code == 200, put.text
    thread = await server.http.post(
        f"/api/v1/sessions/{sid}/threads",
        json={"title": "t"},
        headers={"Authorization": f"Bearer {await server.token(sid, 'bob')}"},
    )
    tid = thread.json()["thread_id"]
    for method, path in (
        ("DELETE", f"/api/v1/sessions/{sid}%2Fmembers%2Fbob"),
        ("DELETE", f"/api/v1/sessions/{sid}%2ffacts%2fk"),
        ("GET", f"/api/v1/sessions/{sid}%2Ftranscript"),
        ("GET", f"/api/v1/sessions/{sid}/threads/{tid}%2F"),
        ("GET", "/api%2Fv1%2Fsessions"),
    ):
        refused = await server.http.request(method, path)
        assert refused.status_code == 404, (path, refused.text)
        assert refused.json()["error"]["code"] == "not_found"
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()
    assert [m["user_id"] for m in members["members"]] == ["bob"]
    assert (await server.http.get(f"/api/v1/sessions/{sid}/facts")).json()["facts"] != {}
    token = await server.token(sid, "bob")
    for path in (f"{sid}%2Fthreads%2F{tid}", f"{sid}%2F"):
        with pytest.raises(websockets.InvalidStatus) as refused_socket:
            await websockets.connect(f"{server.ws_url}/ws/sessions/{path}?token={token}")
        assert refused_socket.value.response.status_code == 403, path  # as a path no route has
    # An encoded slash in the query is not in the path.
    listed = await server.http.get(f"/api/v1/sessions/{sid}/audit", params={"actor": "a/b"})
    assert listed.status_code == 200, listed.text


async def test_a_trailing_slash_names_no_route_and_redirects_nowhere(
    sqlite_server: RunningServer,
) -> None:
    """Review RL-6: a path with a trailing ``/`` was answered ``307`` with an empty body
    and a ``Location`` built from the request's ``Host`` (a client following it sent its
    body, and maybe its key, wherever ``Host`` said). It is a path no route has: ``404
    not_found`` in the error shape, key or none."""
    server = sqlite_server
    sid = await server.new_session({"bob": "editor"})
    document = (await server.http.get("/api/v1/openapi.json")).json()
    paths = [
        template.replace("{session_id}", sid).replace("{", "").replace("}", "") + "/"
        for template in document["paths"]
    ]
    paths += ["/api/v1/openapi.json/", "/api/v1/docs/", "/healthz/", "/readyz/", "/metrics/"]
    wrong = []
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        for path in paths:
            for client in (server.http, anonymous):
                for method in ("GET", "POST", "DELETE"):
                    answer = await client.request(method, path, headers={"Host": "evil.example"})
                    code = answer.json()["error"]["code"] if answer.content else None
                    moved = answer.headers.get("location")
                    if answer.status_code != 404 or code != "not_found" or moved is not None:
                        wrong.append((method, path, answer.status_code, moved))
    assert wrong == [], wrong
    demo = await server.http.get("/demo", headers={"Host": "evil.example"})
    assert demo.is_redirect and demo.headers["location"] == "/demo/"  # relative: no Host in it


async def test_a_deleted_sessions_token_is_unauthenticated_outside_its_session(
    sqlite_server: RunningServer,
) -> None:
    """Review RL-6: a client token of a deleted session got ``404 not_found`` from the
    routes that name no session (``/models``, ``/me/sessions``), which their documented
    answers do not list. It signs in nobody any more: ``401 unauthenticated``, as a revoked
    token; its session's own routes answer ``404`` (the session named is unknown)."""
    server = sqlite_server
    sid = await server.new_session({"bob": "editor"})
    as_bob = {"Authorization": f"Bearer {await server.token(sid, 'bob')}"}
    assert (await server.http.get("/api/v1/models", headers=as_bob)).status_code == 200
    assert (await server.http.delete(f"/api/v1/sessions/{sid}")).status_code == 204
    document = (await server.http.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/models", "/api/v1/me/sessions"):
        answer = await server.http.get(path, headers=as_bob)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"]["code"] == "unauthenticated"
        assert "401" in document["paths"][path]["get"]["responses"]
    own = await server.http.get(f"/api/v1/sessions/{sid}/me", headers=as_bob)
    assert own.status_code == 404 and own.json()["error"]["code"] == "not_found"


def _controls(answer: httpx.Response) -> list[str]:
    """The texts of an error body holding a control character (a NUL, ``\\x01``…)."""
    error = answer.json()["error"]
    texts = [error["message"]] + [
        text for detail in error.get("details") or [] for text in detail.values()
    ]
    return [t for t in texts if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in t)]


async def test_an_error_echoes_no_control_character_of_the_request(
    sqlite_server: RunningServer,
) -> None:
    """Review RY-2: a 422 copied a NUL of a body's key into its message and its
    ``details[].at``, which the documented error shape forbids (``^[^\\u0000]*$``); other
    control characters read as garbage in a log. What the answer says of the request
    is escaped as JSON would write it: ``a\\u0000b``."""
    http = sqlite_server.http
    json_type = {"Content-Type": "application/json"}
    for body in (
        '{"a\\u0000b": 1}',
        '{"title": "x", "\\u0001\\u001f\\u007f\\u009b": 1}',
        '{"x\\u0000": {"y": 1}}',
        '{"title": {"\\u0000": 1}}',
        '{"title": "a\\u0000b"}',
    ):
        answer = await http.post("/api/v1/sessions", content=body, headers=json_type)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid", body
        assert _controls(answer) == [], (body, answer.text)
    nul_key = await http.post("/api/v1/sessions", content='{"a\\u0000b": 1}', headers=json_type)
    assert [d["at"] for d in nul_key.json()["error"]["details"]] == ["a\\u0000b"]
    for query in ("a%00b=1", "a%01=1&a%01=2", "limit=1&%1b[31m=x"):
        answer = await http.get(f"/api/v1/sessions?{query}")
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid", query
        assert _controls(answer) == [], (query, answer.text)


async def test_an_unknown_query_parameter_is_refused_on_every_route(
    sqlite_server: RunningServer,
) -> None:
    """Review RY-8: a query parameter a route does not take was ignored, so a typo'd filter
    (``audit?kinds=``) listed every record and a typo'd cursor (``?curser=``) gave page one
    again, while an unknown body field is ``422 invalid``. Every route the document lists
    refuses one, naming it (but the probes, which take a monitor's cache-buster); the
    parameters it lists are taken."""
    server = sqlite_server
    document = (await server.http.get("/api/v1/openapi.json")).json()
    for path, item in document["paths"].items():
        if path in ("/healthz", "/readyz"):
            continue
        for method in item:
            url = re.sub(r"{\w+}", "x", path)
            answer = await server.http.request(method.upper(), url, params={"kinds": "k"})
            assert answer.status_code == 422, (method, path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid" and error["details"][0]["at"] == "kinds", error
            assert "422" in item[method]["responses"], (method, path)
    sid = await server.new_session({"bob": "editor"})
    await server.new_session({})
    first = (await server.http.get("/api/v1/sessions", params={"limit": 1})).json()
    again = await server.http.get(
        "/api/v1/sessions", params={"limit": 1, "curser": first["next_cursor"]}
    )
    assert again.status_code == 422 and "curser" in again.json()["error"]["message"]
    token = await server.token(sid, "bob")
    stream = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
    typo = await server.http.get(
        f"/api/v1/sessions/{sid}/events", params={"last_event": "1"}, headers=stream
    )
    assert typo.status_code == 422 and typo.json()["error"]["details"][0]["at"] == "last_event"
    # What the routes take is still taken, the stream's resume parameter too.
    for url, params in (
        ("/api/v1/sessions", {"limit": "1", "cursor": first["next_cursor"]}),
        (f"/api/v1/sessions/{sid}/audit", {"kind": "k", "actor": "a", "limit": "5"}),
        (f"/api/v1/sessions/{sid}/events", {"after": "0", "limit": "5", "last_event_id": "0"}),
        (f"/api/v1/sessions/{sid}/usage", {"user_id": "bob"}),
    ):
        taken = await server.http.get(url, params=params)
        assert taken.status_code == 200, (url, taken.text)
    # A probe takes a monitor's cache-buster.
    for probe in ("/healthz", "/readyz"):
        assert (await server.http.get(probe, params={"_": "1700000000"})).status_code == 200
    async with server.http.stream(
        "GET", f"/api/v1/sessions/{sid}/events?last_event_id=0", headers=stream
    ) as resumed:
        assert resumed.status_code == 200


async def test_a_strangers_token_is_refused_before_its_query_is_judged(
    sqlite_server: RunningServer,
) -> None:
    """Review FX36: a member's token on another session's route with a typo'd query
    parameter was ``422 invalid`` (the unknown-query refusal ran before authorization), so
    a stranger learnt what the route takes. Who may touch the session is judged first, on
    every route the document lists, the event stream too: ``403 forbidden``, as without
    the typo."""
    server = sqlite_server
    own = await server.new_session({"bob": "owner"})
    other = await server.new_session({"carol": "owner"})
    token = await server.token(own, "bob")
    member = {"Authorization": f"Bearer {token}"}
    document = (await server.http.get("/api/v1/openapi.json")).json()
    judged = 0
    for path, item in document["paths"].items():
        if "{session_id}" not in path:
            continue
        url = re.sub(r"{\w+}", "x", path.replace("{session_id}", other))
        for method in item:
            for params in ({"kinds": "k"}, {"limit": "-1", "cursor": "\x00"}):
                answer = await server.http.request(
                    method.upper(), url, params=params, headers=member
                )
                assert answer.status_code == 403, (method, path, params, answer.text)
                assert answer.json()["error"]["code"] == "forbidden", answer.text
                judged += 1
    assert judged > 20
    # A path of no form at all is not judged for a stranger either.
    answer = await server.http.get(f"/api/v1/sessions/{'e' * 201}/members", headers=member)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    stream = {**member, "Accept": "text/event-stream"}
    for params in ({"last_event": "1"}, {"last_event_id": "x" * 5000}):
        typo = await server.http.get(
            f"/api/v1/sessions/{other}/events", params=params, headers=stream
        )
        assert typo.status_code == 403 and typo.json()["error"]["code"] == "forbidden", typo.text
    # In its own session, the same typo is still named (the member may call the route).
    typo = await server.http.get(
        f"/api/v1/sessions/{own}/members", params={"kinds": "k"}, headers=member
    )
    assert typo.status_code == 422 and typo.json()["error"]["details"][0]["at"] == "kinds"
