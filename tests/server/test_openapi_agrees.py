"""The OpenAPI document and the server agree on a sample of requests the review found they
judged apart (review I3): each request is judged by the served document (its body and path
parameters, with ``jsonschema``, not Parley's code) and sent; one the document allows is
not refused as invalid (422) or too large (413), and one it forbids is refused (4xx)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema

from tests.conftest import make_settings, serve_in_process, sqlite_url

SESSION = "/api/v1/sessions/{session_id}"


def _allows(document: dict[str, Any], method: str, template: str, path: str, body: Any) -> bool:
    """Whether ``document`` allows ``body`` (None: no body) to ``path`` of ``template``."""
    operation = document["paths"][template][method.lower()]
    names = re.findall(r"{(\w+)}", template)
    pattern = re.escape(template)
    for name in names:
        pattern = pattern.replace(re.escape(f"{{{name}}}"), "([^/]+)")
    values = re.fullmatch(pattern, path)
    assert values is not None, (template, path)
    schemas = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "path"}
    checks: list[tuple[Any, dict[str, Any]]] = list(
        zip(values.groups(), (schemas[n] for n in names), strict=True)
    )
    request_body = operation.get("requestBody")
    if body is None:
        if request_body is not None and request_body["required"]:
            return False
    else:
        ref = request_body["content"]["application/json"]["schema"]
        checks.append((body, {**ref, "components": document["components"]}))
    for value, schema in checks:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return False
    return True


async def test_the_document_allows_what_the_server_takes_and_forbids_what_it_refuses(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", webhook_allow_private=True)
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        hook = await http.post(
            "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["run.failed"]}
        )
        webhook = f"/api/v1/webhooks/{hook.json()['id']}"
        webhooks = ("/api/v1/webhooks/{webhook_id}", webhook)
        threads = (f"{SESSION}/threads", f"{at}/threads")
        documents = (f"{SESSION}/documents", f"{at}/documents")
        facts = f"{SESSION}/facts/{{key}}"
        roles = "/api/v1/roles/{name}"
        document = {"title": "d", "text": "x"}
        cases: list[tuple[str, str, str, Any]] = [
            ("PATCH", *webhooks, {"events": None}),
            ("PATCH", *webhooks, {"status": None}),
            ("PATCH", *webhooks, {"sessions": None}),
            ("PATCH", *webhooks, None),
            ("POST", *threads, {"title": "t" * 201, "as_user": "alice"}),
            ("POST", *threads, {"title": "t" * 200, "as_user": "alice"}),
            ("POST", *documents, {**document, "readers": {}}),
            ("POST", *documents, {**document, "readers": {"users": []}}),
            ("POST", *documents, {**document, "readers": {"users": [], "roles": ["editor"]}}),
            ("POST", "/api/v1/sessions", "/api/v1/sessions", None),
            ("PATCH", SESSION, at, None),
            ("DELETE", f"{SESSION}/pins/{{entry_id}}", f"{at}/pins/{'e' * 65}", None),
            ("PUT", facts, f"{at}/facts/a%20b", {"value": "v"}),
            ("PUT", facts, f"{at}/facts/{'k' * 101}", {"value": "v"}),
            ("PUT", facts, f"{at}/facts/{'k' * 100}", {"value": "v"}),
            ("PUT", f"{SESSION}/members/{{user_id}}", f"{at}/members/a%20b", {"role": "viewer"}),
            ("PUT", roles, "/api/v1/roles/Auditor", {"capabilities": ["prompt"]}),
            ("PUT", roles, "/api/v1/roles/auditor", {"capabilities": ["prompt"]}),
            # Review RP-1: a NUL, which no column stores, refused and not said so.
            ("POST", "/api/v1/sessions", "/api/v1/sessions", {"title": "a\u0000b"}),
            ("POST", *documents, {**document, "readers": {"users": ["a\u0000b"]}}),
        ]
        disagree = []
        for method, template, path, body in cases:
            allowed = _allows(served, method, template, path.replace("%20", " "), body)
            sent = {} if body is None else {"json": body}
            answer = await http.request(method, path, **sent)
            refused = answer.status_code in (413, 422) if allowed else answer.status_code >= 400
            if (allowed and refused) or (not allowed and not refused):
                disagree.append((method, path[-40:], body, allowed, answer.status_code))
        assert disagree == [], disagree
        nul = await http.post("/api/v1/sessions", json={"title": "a\u0000b"})
        assert nul.json()["error"]["message"] == "body: title contains a NUL character"


async def test_a_bound_left_to_a_setting_is_named_where_the_document_allows_past_it(
    tmp_path: Path,
) -> None:
    """Review RB-1: a token's lifetime and a document's text were refused past a setting's
    bound that the document did not state (no maximum, no word of it). A bound that an
    operator sets cannot be the document's maximum: the field's description names it."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"alice": "editor"})
        at = SESSION.format(session_id=sid)
        past_ttl = settings.token_ttl_max_s + 1
        past_text = "x" * (settings.max_document_chars + 1)
        cases = [
            ("TokenCreate", "ttl_seconds", "PARLEY_TOKEN_TTL_MAX_S", f"{SESSION}/tokens",
             f"{at}/tokens", {"user_id": "alice", "ttl_seconds": past_ttl}),
            ("InviteCreate", "token_ttl_seconds", "PARLEY_TOKEN_TTL_MAX_S", f"{SESSION}/invites",
             f"{at}/invites", {"user_id": "alice", "token_ttl_seconds": past_ttl}),
            ("DocumentCreate", "text", "PARLEY_MAX_DOCUMENT_CHARS", f"{SESSION}/documents",
             f"{at}/documents", {"title": "d", "text": past_text, "readers": {"users": ["alice"]}}),
        ]  # fmt: skip
        for schema, field, setting, template, path, body in cases:
            assert _allows(served, "POST", template, path, body), schema
            answer = await http.post(path, json=body)
            assert answer.status_code in (413, 422), (schema, answer.status_code)
            described = served["components"]["schemas"][schema]["properties"][field]
            assert setting in described.get("description", ""), (schema, described)


# A body of the right form for each route under an id that takes one.
_BODIES = {"prompts": {"text": "hi"}, "share": {"text": "hi"}, "share-replies": {"turn_ids": ["t"]}}


async def test_a_path_id_past_its_bound_is_invalid_on_every_route_and_one_within_not_found(
    tmp_path: Path,
) -> None:
    """Review RL-2: the document gave a prompt's and a side-thread's id up to 200
    characters; cancel and the side-thread routes refused one past 64 (``invalid``), and
    the GETs answered the same id ``not_found``. Every path parameter has one form, the
    document's, on every route: one past its ``maxLength`` is ``422 invalid`` (judged
    before the handler), one at it that names nothing is ``404 not_found``."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        http = server.http
        served = (await http.get("/api/v1/openapi.json")).json()
        sid = await server.new_session({"bob": "owner"})
        as_bob = {"Authorization": f"Bearer {await server.token(sid, 'bob')}"}
        checked, wrong = 0, []
        for template, item in served["paths"].items():
            for method, operation in item.items():
                params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
                for param in params:
                    bound, name = param["schema"]["maxLength"], param["name"]
                    others = {p["name"]: sid for p in params if p["name"] != name}
                    for length in (bound, bound + 1):
                        path = template.format(**others, **{name: "e" * length})
                        # The admin key's: a member's is let in (or not) first, and a
                        # stranger to the path's session, or to an admin route, is
                        # ``forbidden`` whatever its form (review FX36).
                        answer = await http.request(method, path)
                        code = answer.json()["error"]["code"] if answer.is_error else None
                        if length > bound and code != "invalid":
                            wrong.append((method, template, name, length, answer.status_code))
                    checked += 1
                    if name in ("prompt_id", "thread_id", "entry_id"):
                        # An entry's id as a socket takes it (docs/api.md).
                        if bound != 64:
                            wrong.append((method, template, name, "maxLength", bound))
                        path = template.format(**others, **{name: "e" * bound}).replace(
                            "{session_id}", sid
                        )
                        body = _BODIES.get(path.rsplit("/", 1)[1])
                        answer = await http.request(method, path, headers=as_bob, json=body)
                        if answer.status_code != 404:
                            wrong.append((method, template, name, bound, answer.text))
        streamed = await http.get(
            SESSION.format(session_id="e" * 201) + "/events",
            headers={"Accept": "text/event-stream"},
        )
        if streamed.status_code != 422:
            wrong.append(("stream", streamed.status_code))
        assert checked > 30 and wrong == [], "\n".join(map(str, wrong))
