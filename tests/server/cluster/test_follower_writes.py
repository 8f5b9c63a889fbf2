"""Every REST write of a session is refused the same way on every node, whichever runs it.

A write of the shared document (a fact, a pin, the policy) made on a node that does not run
the session is forwarded to the one that does, which judges it; its refusal comes back and
is answered there. The whole answer must cross: its status, code, message and ``details``
(review RA-1: a fact's line break was ``at: "value"`` on the running node and
``at: "body"`` through a follower, the field lost on the way back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess
from tests.server.cluster.nodes import cluster

pytestmark = pytest.mark.postgres


async def call(
    node: ServerProcess, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any, str | None]:
    """The status, JSON body and ``Retry-After`` of one call through ``node``."""
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        response = await http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
    answer = response.json() if response.content else None
    return response.status_code, answer, response.headers.get("retry-after")


async def test_a_refused_write_answers_the_same_through_every_node(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, PARLEY_COMMANDS_BURST="1000") as nodes:
        sid = await nodes.new_session({"bob": "editor", "vic": "viewer"})
        running, follower = await nodes.running_and_other(sid)
        base = f"/api/v1/sessions/{sid}"
        tokens = {
            user: (await nodes.http.post(f"{base}/tokens", json={"user_id": user})).json()["token"]
            for user in ("bob", "vic")
        }
        long_key = "k" * 101
        writes: list[tuple[str, str, Any]] = [
            ("PUT", "/facts/acct", {"value": "a\nb"}),
            ("PUT", "/facts/acct", {"value": "a\rb"}),
            ("PUT", f"/facts/{long_key}", {"value": "v"}),
            ("PUT", "/facts/__proto__", {"value": "v"}),
            ("PUT", "/facts/..", {"value": "v"}),
            ("PUT", "/facts/acct", {"value": "v" * 100_000}),
            ("DELETE", f"/facts/{long_key}", None),
            ("POST", "/pins", {"entry_id": "nope"}),
            ("DELETE", "/pins/nope", None),
            ("PATCH", "", {"policy": "bogus"}),
        ]
        callers = {"admin": ADMIN_KEY, **tokens}
        differ = []
        refused = 0
        for method, path, body in writes:
            for who, token in callers.items():
                on_runner = await call(running, method, base + path, token, body)
                on_follower = await call(follower, method, base + path, token, body)
                refused += on_runner[0] >= 400
                if on_runner != on_follower:
                    differ.append((method, path, who, on_runner, on_follower))
        assert differ == [], "\n".join(map(str, differ))
        assert refused == len(writes) * len(callers)  # not vacuous: every one was refused
        line_break = await call(follower, "PUT", f"{base}/facts/acct", ADMIN_KEY, {"value": "a\nb"})
        assert line_break[0] == 422
        assert [d["at"] for d in line_break[1]["error"]["details"]] == ["value"]
        too_long = await call(
            follower, "PUT", f"{base}/facts/{long_key}", tokens["bob"], {"value": "v"}
        )
        assert [d["at"] for d in too_long[1]["error"]["details"]] == ["key"]
