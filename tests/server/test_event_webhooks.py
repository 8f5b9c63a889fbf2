"""Event webhooks over a real server and a real loopback receiver: every delivery is
verified with the ``standardwebhooks`` package (not Parley's code), in per-session order,
through receiver failures, pauses and a killed server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.session.webhook_events import TYPES
from tests.conftest import (
    ADMIN_KEY,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    process_running,
    sender_processes,
    serve_asgi,
    serve_in_process,
    sqlite_url,
)
from tests.fake_model import Answer, FakeModel, Sent, Status, call
from tests.yclient import YClient, all_replies_settled

ALL_TYPES = sorted(TYPES)
FAST = {
    "webhook_allow_private": True,
    "webhook_retry_base_s": 0.05,
    "webhook_retry_max_s": 0.2,
    "webhook_poll_s": 0.05,
    "webhook_timeout_s": 30.0,  # a loaded machine answers slowly; a timeout resends
}

# The restricted document's number, alone: not a run of digits or hex inside a timestamp or
# an id (where "7731" turned up by chance).
SECRET_NUMBER = re.compile(rb"(?<![0-9a-fA-F])7731(?![0-9a-fA-F])")


@dataclass
class Receiver:
    """A loopback HTTP endpoint that records what it accepts; answers ``failing`` with
    503 while it is set."""

    url: str = ""
    failing: bool = False
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        if self.failing:
            self.refused += 1
            return Response(status_code=503)
        self.received.append((dict(request.headers), body))
        return Response(status_code=204)

    def verified(self, secret: str) -> list[tuple[str, dict[str, Any]]]:
        """(webhook-id, payload) of every request received, each verified."""
        check = Webhook(secret)
        return [(h["webhook-id"], check.verify(body, h)) for h, body in self.received]


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    receiver = receiver or Receiver()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with serve_asgi(app) as port:
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver


async def until(condition: Any, what: str, timeout_s: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def subscribe(http: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    response = await http.post("/api/v1/webhooks", json={"url": url, "events": ALL_TYPES, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"].startswith("whsec_")
    return created


async def deliveries(http: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params={"limit": 200})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def all_recorded(http: httpx.AsyncClient, webhook_id: str) -> Callable[[], Awaitable[bool]]:
    """Whether every delivery is recorded delivered (a receiver has a POST before its
    sender records the attempt)."""

    async def recorded() -> bool:
        return all(d["status"] == "delivered" for d in await deliveries(http, webhook_id))

    return recorded


async def expected_types(server: RunningServer, sid: str) -> list[str]:
    """The webhook types of a live session's semantic events, in its order."""
    response = await server.http.get(f"/api/v1/sessions/{sid}/events")
    by_kind = {
        "prompt_accepted": "prompt.accepted",
        "reply_completed": "reply.completed",
        "run_failed": "run.failed",
        "member_joined": "member.added",
        "member_left": "member.removed",
    }
    kinds = [e["kind"] for e in response.json()["events"]]
    return ["session.created", *(by_kind[k] for k in kinds if k in by_kind)]


def per_session(payloads: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    sessions: dict[str, list[dict[str, Any]]] = {}
    for payload in payloads:
        sessions.setdefault(payload["data"]["session_id"], []).append(payload)
    return sessions


async def busy_session(server: RunningServer, prompts: int) -> str:
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    for i in range(prompts):
        ack = await alice.command({"type": "prompt", "id": f"p{i}", "text": f"question {i}"})
        assert "prompt_id" in ack, ack
    await alice.wait_until(lambda c: all_replies_settled(c, prompts))
    removed = await server.http.delete(f"/api/v1/sessions/{sid}/members/bob")
    assert removed.status_code in (200, 204), removed.text
    return sid


@pytest.mark.parametrize("sender", ["loop", "process"])
async def test_deliveries_are_signed_and_in_order_per_session(
    database_url: str, tmp_path: Path, sender: str
) -> None:
    # The sender looks for deliveries only when a commit wakes it (or one of its own
    # attempts ends): every delivery below arrives long before its first poll.
    woken = {**FAST, "webhook_poll_s": 3600.0}
    settings = make_settings(database_url, tmp_path / "data", webhook_sender=sender, **woken)
    async with receiving() as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url)
        one, two = await asyncio.gather(busy_session(server, 3), busy_session(server, 2))
        expected = {sid: await expected_types(server, sid) for sid in (one, two)}
        assert "reply.completed" in expected[one] and "member.removed" in expected[one]
        gone = await server.http.delete(f"/api/v1/sessions/{two}")
        assert gone.status_code == 204
        expected[two].append("session.deleted")
        total = sum(len(types) for types in expected.values())

        async def all_arrived() -> bool:
            return len(receiver.received) >= total

        await until(all_arrived, f"{total} deliveries")
        verified = receiver.verified(hook["secret"])
        sessions = per_session([payload for _, payload in verified])
        for sid, types in expected.items():
            assert [p["type"] for p in sessions[sid]] == types
            seqs = [p["data"]["event_seq"] for p in sessions[sid] if p["data"]["event_seq"]]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # Every type a busy session makes arrives (run.failed and quota.exceeded: below).
        told = {p["type"] for payloads in sessions.values() for p in payloads}
        assert told == set(TYPES) - {"run.failed", "quota.exceeded"}
        completed = next(p for p in sessions[one] if p["type"] == "reply.completed")
        assert set(completed["data"]) == {
            "session_id",
            "event_seq",
            "reply_id",
            "prompt_ids",
            "text",
            "text_withheld",
        }
        assert completed["data"]["text"] and completed["data"]["text_withheld"] is False
        # Each delivery's webhook-id is the one the deliveries list shows, and unique.
        await until(all_recorded(server.http, hook["id"]), "every attempt recorded")
        listed = await deliveries(server.http, hook["id"])
        assert sorted(d["message_id"] for d in listed) == sorted(i for i, _ in verified)
        assert len({i for i, _ in verified}) == total
        assert all(d["status"] == "delivered" for d in listed)
        assert all(d["attempts"][0]["response_code"] == 204 for d in listed)


async def test_a_receiver_that_fails_then_recovers_gets_every_event_in_order(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data", **FAST)
    async with receiving(Receiver(failing=True)) as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url)
        sid = await busy_session(server, 3)
        expected = await expected_types(server, sid)

        async def retried() -> bool:
            first = (await deliveries(server.http, hook["id"]))[0]
            return len(first["attempts"]) >= 3

        await until(retried, "three failed attempts of the first delivery")
        listed = await deliveries(server.http, hook["id"])
        # In order: nothing after the first delivery was tried while it kept failing.
        assert all(not d["attempts"] for d in listed[1:])
        assert listed[0]["attempts"][0]["response_code"] == 503
        receiver.failing = False

        async def all_arrived() -> bool:
            return len(receiver.received) >= len(expected)

        await until(all_arrived, "every event after the receiver recovered")
        verified = receiver.verified(hook["secret"])
        assert [p["type"] for _, p in verified] == expected
        webhook = (await server.http.get(f"/api/v1/webhooks/{hook['id']}")).json()
        assert webhook["status"] == "active" and webhook["failures"] == 0


async def test_a_paused_subscription_gets_nothing_until_resumed(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data", **FAST)
    async with receiving() as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["session.created"])
        paused = await server.http.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"status": "paused"}
        )
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        sid = await server.new_session({})
        held = await deliveries(server.http, hook["id"])
        assert [(d["type"], d["status"], d["attempts"]) for d in held] == [
            ("session.created", "pending", [])
        ]
        assert receiver.received == []
        resumed = await server.http.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"status": "active"}
        )
        assert resumed.json()["status"] == "active"

        async def arrived() -> bool:
            return len(receiver.received) == 1

        await until(arrived, "the held delivery")
        ((_, payload),) = receiver.verified(hook["secret"])
        assert payload["data"]["session_id"] == sid
        # The secret is shown once: never in the list or the subscription's own answer.
        listed = await server.http.get("/api/v1/webhooks")
        assert hook["secret"] not in listed.text
        one = await server.http.get(f"/api/v1/webhooks/{hook['id']}")
        assert hook["secret"] not in one.text


@dataclass
class FlakyReceiver(Receiver):
    """Answers 503 to the first attempt of each ``webhook-id``, then as ``Receiver``."""

    tried: set[str] = field(default_factory=set)

    async def hook(self, request: Request) -> Response:
        message_id = request.headers["webhook-id"]
        if message_id not in self.tried:
            self.tried.add(message_id)
            await request.body()
            self.refused += 1
            return Response(status_code=503)
        return await super().hook(request)


async def test_a_delivery_held_past_the_retry_period_is_still_retried_after_resuming(
    database_url: str, tmp_path: Path
) -> None:
    """Review I2: the retry period ran from the event, so a delivery held by a paused
    subscription longer than the period got one attempt after resuming, and one 503
    failed it for good. The period runs from its first attempt."""
    period_s = 2.0
    settings = make_settings(
        database_url, tmp_path / "data", **FAST, webhook_retry_period_s=period_s
    )
    async with receiving(FlakyReceiver()) as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["session.created"])
        url = f"/api/v1/webhooks/{hook['id']}"
        assert (await server.http.patch(url, json={"status": "paused"})).status_code == 200
        sid = await server.new_session({})
        await asyncio.sleep(period_s * 1.5)  # held longer than the retry period
        assert (await server.http.patch(url, json={"status": "active"})).status_code == 200

        async def finished() -> bool:
            (delivery,) = await deliveries(server.http, hook["id"])
            return bool(delivery["status"] in ("delivered", "failed"))

        await until(finished, "the held delivery delivered or failed")
        (delivery,) = await deliveries(server.http, hook["id"])
        codes = [a["response_code"] for a in delivery["attempts"]]
        assert (delivery["status"], codes) == ("delivered", [503, 204])
        ((_, payload),) = receiver.verified(hook["secret"])
        assert payload["data"]["session_id"] == sid


@dataclass
class HangingReceiver(Receiver):
    """Answers nothing to the first attempt of each ``webhook-id`` (it times out), then as
    ``Receiver``."""

    tried: set[str] = field(default_factory=set)
    hung: asyncio.Event = field(default_factory=asyncio.Event)  # set when the test ends

    async def hook(self, request: Request) -> Response:
        message_id = request.headers["webhook-id"]
        if message_id not in self.tried:
            self.tried.add(message_id)
            await self.hung.wait()
        return await super().hook(request)


async def test_the_back_off_counts_from_when_a_failed_attempt_ended(tmp_path: Path) -> None:
    """Review I6: the wait was counted from the attempt's start, so a receiver that timed
    out (an attempt longer than the back-off) was tried again the moment it timed out."""
    base_s = 0.4  # the first wait: 0.2-0.4 s, shorter than an attempt's timeout
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "data",
        **{
            **FAST,
            "webhook_timeout_s": 1.0,
            "webhook_retry_base_s": base_s,
            "webhook_retry_max_s": base_s,
        },
    )
    receiver = HangingReceiver()
    async with receiving(receiver), serve_in_process(settings) as server:
        try:
            hook = await subscribe(server.http, receiver.url, events=["session.created"])
            await server.new_session({})

            async def finished() -> bool:
                (delivery,) = await deliveries(server.http, hook["id"])
                return bool(delivery["status"] in ("delivered", "failed"))

            await until(finished, "the delivery delivered after its timed-out attempt")
        finally:
            receiver.hung.set()
        (delivery,) = await deliveries(server.http, hook["id"])
    first, second = delivery["attempts"]
    assert first["response_code"] is None and second["response_code"] == 204
    assert first["latency_ms"] >= 1000 * settings.webhook_timeout_s * 0.9
    # At least the shortest wait (half the base) after the first attempt ended.
    assert second["at"] - (first["at"] + first["latency_ms"]) >= 1000 * base_s / 2


async def test_a_paused_subscription_past_its_cap_is_disabled_and_takes_no_more(
    database_url: str, tmp_path: Path
) -> None:
    """Review (bounded): a paused subscription took a delivery for every event without
    limit. Past ``PARLEY_WEBHOOK_MAX_WAITING`` it is disabled, saying why and since when;
    the sessions are made all the same, and once resumed it gets what it held, then new
    events."""
    settings = make_settings(database_url, tmp_path / "data", **FAST, webhook_max_waiting=2)
    async with receiving() as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["session.created"])
        url = f"/api/v1/webhooks/{hook['id']}"
        assert (await server.http.patch(url, json={"status": "paused"})).status_code == 200
        made = [await server.new_session({}) for _ in range(4)]
        held = await deliveries(server.http, hook["id"])
        assert [d["session_id"] for d in held] == made[:2]
        full = (await server.http.get(url)).json()
        assert (full["status"], full["full_at"] is not None) == ("disabled", True)
        assert "outbox full" in full["disabled_reason"]
        resumed = (await server.http.patch(url, json={"status": "active"})).json()
        assert (resumed["status"], resumed["full_at"], resumed["disabled_reason"]) == (
            "active",
            None,
            None,
        )

        async def held_arrived() -> bool:
            return len(receiver.received) == 2

        await until(held_arrived, "the held deliveries")
        await until(all_recorded(server.http, hook["id"]), "the held deliveries recorded")
        made.append(await server.new_session({}))

        async def arrived() -> bool:
            return len(receiver.received) == 3

        await until(arrived, "the new one")
        sent = [p["data"]["session_id"] for _, p in receiver.verified(hook["secret"])]
        assert sorted(sent) == sorted([*made[:2], made[4]])


async def test_events_skipped_after_resuming_a_full_outbox_stay_visible_until_acknowledged(
    database_url: str, tmp_path: Path
) -> None:
    """Review RC-3: resumed with its outbox still full, a subscription skipped the next
    events, and once its backlog drained ``full_at`` was cleared: nothing said which events
    it had skipped. The skipped range (``skipped_from`` .. ``skipped_to``) now stays until
    the integrator acknowledges it, and covers the events skipped after the resume."""
    settings = make_settings(
        database_url, tmp_path / "data", **FAST, webhook_max_waiting=2, webhook_failure_limit=1000
    )
    async with receiving(Receiver(failing=True)) as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["session.created"])
        url = f"/api/v1/webhooks/{hook['id']}"
        assert (await server.http.patch(url, json={"status": "paused"})).status_code == 200
        made = [await server.new_session({}) for _ in range(3)]  # the third is skipped
        full = (await server.http.get(url)).json()
        assert (full["status"], full["skipped_to"]) == ("disabled", None)
        assert full["skipped_from"] is not None and full["skipped_from"] >= hook["created_at"]
        resumed = (await server.http.patch(url, json={"status": "active"})).json()
        assert (resumed["full_at"], resumed["skipped_from"]) == (None, full["skipped_from"])
        assert resumed["skipped_to"] is not None
        started = int(time.time() * 1000)
        for _ in range(2):  # the old backlog still waits: these two are skipped
            await server.new_session({})
        ended = int(time.time() * 1000)
        skipping = (await server.http.get(url)).json()
        assert skipping["full_at"] is not None and skipping["skipped_to"] is None
        refused = await server.http.patch(url, json={"acknowledge_skipped": resumed["skipped_to"]})
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "conflict")
        receiver.failing = False

        async def drained() -> bool:
            return bool((await server.http.get(url)).json()["full_at"] is None)

        await until(drained, "the backlog drained, events taken again")
        await until(all_recorded(server.http, hook["id"]), "the held deliveries recorded")
        gap = (await server.http.get(url)).json()
        sent = {p["data"]["session_id"] for _, p in receiver.verified(hook["secret"])}
        assert sent == set(made[:2])
        # The skipped events, those after the resume too, lie within the range still shown.
        assert gap["skipped_from"] == full["skipped_from"] <= started
        assert gap["skipped_to"] is not None and gap["skipped_to"] >= ended
        stale = await server.http.patch(url, json={"acknowledge_skipped": resumed["skipped_to"]})
        assert (stale.status_code, stale.json()["error"]["code"]) == (409, "conflict")
        assert (await server.http.get(url)).json()["skipped_to"] == gap["skipped_to"]
        done = await server.http.patch(url, json={"acknowledge_skipped": gap["skipped_to"]})
        assert done.status_code == 200
        assert (done.json()["skipped_from"], done.json()["skipped_to"]) == (None, None)


async def test_a_run_of_failures_disables_it_and_a_retry_redelivers(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data", **FAST, webhook_failure_limit=3)
    async with receiving(Receiver(failing=True)) as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["session.created"])
        sid = await server.new_session({})

        async def disabled() -> bool:
            got = await server.http.get(f"/api/v1/webhooks/{hook['id']}")
            return bool(got.json()["status"] == "disabled")

        await until(disabled, "the subscription disabled")
        webhook = (await server.http.get(f"/api/v1/webhooks/{hook['id']}")).json()
        assert webhook["disabled_reason"].startswith("3 deliveries failed in a row")
        assert "HTTP 503" in webhook["disabled_reason"]
        receiver.failing = False
        await server.http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "active"})

        async def delivered() -> bool:
            (delivery,) = await deliveries(server.http, hook["id"])
            return bool(delivery["status"] == "delivered")

        await until(delivered, "the delivery after resuming")
        (delivery,) = await deliveries(server.http, hook["id"])
        before = len(receiver.received)  # at least once: a slow answer may be sent again
        assert before >= 1
        retried = await server.http.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry"
        )
        assert retried.status_code == 202, retried.text

        async def redelivered() -> bool:
            return len(receiver.received) > before

        await until(redelivered, "the redelivery")
        received = receiver.verified(hook["secret"])
        # Every copy is the same event under the same webhook-id (the receiver's dedup key).
        assert {message_id for message_id, _ in received} == {delivery["message_id"]}
        assert all(payload == received[0][1] for _, payload in received)
        assert received[-1][1]["data"]["session_id"] == sid
        missing = await server.http.post(f"/api/v1/webhooks/{hook['id']}/deliveries/999999/retry")
        assert missing.status_code == 404


async def test_private_targets_are_refused_without_the_setting(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as server:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.8/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
        ):
            response = await server.http.post(
                "/api/v1/webhooks", json={"url": url, "events": ["session.created"]}
            )
            assert response.status_code == 422, (url, response.text)
            assert response.json()["error"]["code"] == "invalid"
        listed = await server.http.get("/api/v1/webhooks")
        assert listed.json()["webhooks"] == []


async def refused_as_a_target(http: httpx.AsyncClient, url: str, reason: str) -> None:
    """``url`` is ``422 invalid`` for ``reason`` as an event webhook's and as a webhook
    tool's, and neither is made."""
    for path, body in (
        ("/api/v1/webhooks", {"url": url, "events": ["session.created"]}),
        ("/api/v1/tools", {"name": "t", "description": "d", "url": url}),
    ):
        response = await http.post(path, json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid" and reason in error["message"], error
    assert (await http.get("/api/v1/webhooks")).json()["webhooks"] == []
    assert (await http.get("/api/v1/tools")).json()["tools"] == []


async def test_a_url_with_a_control_character_is_refused_when_private_targets_are_allowed(
    database_url: str, tmp_path: Path
) -> None:
    """Review I1: under ``PARLEY_WEBHOOK_ALLOW_PRIVATE`` a URL with BEL or DEL was
    subscribed (201), then every attempt refused it as malformed; a webhook tool's too.
    Now refused by the published pattern, before it is parsed (review RJ-3)."""
    settings = make_settings(database_url, tmp_path / "data", **FAST)
    async with serve_in_process(settings) as server:
        for bad in ("\x07", "\x7f"):
            reason = f"format character (U+{ord(bad):04X}) at character 22"
            await refused_as_a_target(server.http, f"http://127.0.0.1:9/ok{bad}", reason)


@pytest.mark.parametrize("allow_private", [True, False])
async def test_a_host_that_is_no_dns_name_is_refused_for_a_webhook_and_a_tool(
    allow_private: bool, tmp_path: Path
) -> None:
    """Review I1 (again): ``http://a..b/``, a 64-character label or a 259-character name
    were subscribed under ``PARLEY_WEBHOOK_ALLOW_PRIVATE`` and registered as a tool's URL
    under any setting (201), then every request failed to encode or resolve the name."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "data", **{**FAST, "webhook_allow_private": allow_private}
    )
    hosts = ("a..b", "a" * 64 + ".test", ".".join(["abcdefghi"] * 26))
    async with serve_in_process(settings) as server:
        for host in hosts:
            await refused_as_a_target(server.http, f"http://{host}/hook", "is no DNS name")


async def test_crud_and_validation(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", **FAST)
    async with serve_in_process(settings) as server:
        http = server.http
        bad = await http.post(
            "/api/v1/webhooks", json={"url": "http://127.0.0.1/", "events": ["nope"]}
        )
        assert bad.status_code == 422
        hook = await subscribe(http, "http://127.0.0.1:9/", sessions=["s1"])
        changed = await http.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"events": ["run.failed"], "sessions": None}
        )
        assert changed.status_code == 200
        assert changed.json()["events"] == ["run.failed"] and changed.json()["sessions"] is None
        member = await http.get(f"/api/v1/webhooks/{hook['id']}", headers={"Authorization": ""})
        assert member.status_code == 401
        assert (await http.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
        assert (await http.get(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
        assert (await http.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 404


@pytest.mark.parametrize("delivery_id", ["\u00b2", "\u0661", "\uff11", "1_0", " 1"])
async def test_a_delivery_id_that_is_no_number_is_not_found(
    delivery_id: str, tmp_path: Path
) -> None:
    """A retry's delivery id is an ASCII number: a digit of another script ("²" passes
    ``str.isdigit``, and ``int`` refuses it) is 404 like any other unknown id, never 500."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **FAST)
    async with serve_in_process(settings) as server:
        hook = await subscribe(server.http, "http://127.0.0.1:9/")
        retried = await server.http.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery_id}/retry"
        )
        assert retried.status_code == 404, retried.text
        assert retried.json()["error"]["code"] == "not_found"


async def test_kill_9_while_deliveries_are_pending_loses_none(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    env = {
        "PARLEY_WEBHOOK_ALLOW_PRIVATE": "true",
        "PARLEY_WEBHOOK_RETRY_BASE_S": "0.05",
        "PARLEY_WEBHOOK_RETRY_MAX_S": "0.2",
        "PARLEY_WEBHOOK_POLL_S": "0.05",
    }
    async with receiving(Receiver(failing=True)) as receiver:
        process = ServerProcess(database_url, tmp_path / "data", free_port(), **env)
        server_processes.append(process)
        await process.start()  # the default: its sender in a process of its own
        assert process.process is not None
        # Not started before anything is to be delivered.
        assert sender_processes(process.process.pid) == []
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=process.base_url, headers=headers) as http:
            hook = await subscribe(http, receiver.url, events=["session.created"])
            made = [(await http.post("/api/v1/sessions", json={"title": "t"})) for _ in range(5)]
            sids = [m.json()["id"] for m in made]

            async def sender_started() -> bool:
                assert process.process is not None
                return len(sender_processes(process.process.pid)) == 1

            await until(sender_started, "the sender's process, at the first delivery", 60)
        (sender,) = sender_processes(process.process.pid)
        process.kill()

        async def sender_gone() -> bool:  # its stdin closed with the server: no orphan
            return not process_running(sender)

        await until(sender_gone, "the sender's process to end with its server")
        receiver.failing = False
        await process.start()
        async with httpx.AsyncClient(base_url=process.base_url, headers=headers) as http:

            async def all_arrived() -> bool:
                return {
                    p["data"]["session_id"] for _, p in receiver.verified(hook["secret"])
                } == set(sids)

            await until(all_arrived, "every event after the restart", timeout_s=30)
            ids = [i for i, _ in receiver.verified(hook["secret"])]
            listed = await deliveries(http, hook["id"])
            assert set(ids) == {d["message_id"] for d in listed} and len(listed) == 5
            assert json.loads(receiver.received[0][1])["type"] == "session.created"


async def test_a_prompt_over_quota_is_told_as_run_failed_and_quota_exceeded(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **FAST)
    async with receiving() as receiver, serve_in_process(settings) as server:
        hook = await subscribe(server.http, receiver.url, events=["run.failed", "quota.exceeded"])
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "prompt", "id": "1", "text": "first"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        put = await server.http.put(
            f"/api/v1/sessions/{sid}/quotas", json={"user_tokens_per_day": 1}
        )
        assert put.status_code == 200, put.text
        ack = await alice.command({"type": "prompt", "id": "2", "text": "second"})

        async def arrived() -> bool:
            return len(receiver.received) >= 2

        await until(arrived, "run.failed and quota.exceeded")
        (_, failed), (_, quota) = receiver.verified(hook["secret"])
        assert failed["type"] == "run.failed" and quota["type"] == "quota.exceeded"
        assert failed["data"] == quota["data"]
        assert failed["data"]["reason_code"] == "quota_exceeded"
        assert failed["data"]["prompt_ids"] == [ack["prompt_id"]]
        # Its only author at the quota: the run started and failed at its quota check, before
        # the model call; reply_id names its reply entry, failed and empty (webhooks.md).
        transcript = await server.http.get(f"/api/v1/sessions/{sid}/transcript")
        (reply,) = [
            m for m in transcript.json()["messages"] if m["id"] == failed["data"]["reply_id"]
        ]
        assert (reply["kind"], reply["status"], reply["content"]) == ("reply", "failed", "")
        assert reply["reason_code"] == "quota_exceeded"


SECRET = "the vault code is 7731"


def vault_script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text():
        return ["Let me look. ", call("search_documents", {"query": "vault code"})]
    return ["the plain answer, ", "in two parts"]


async def with_vault(server: RunningServer, sid: str) -> YClient:
    """Add the vault document, read by bob and olga; bob's socket."""
    made = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "Vault", "text": SECRET, "readers": {"users": ["bob", "olga"]}},
    )
    assert made.status_code == 201, made.text
    return await server.connect(sid, "bob")


async def test_reply_completed_carries_the_text_unless_the_reply_is_restricted(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **FAST)
    async with (
        receiving() as receiver,
        serve_in_process(settings, FakeModel(vault_script)) as server,
    ):
        hook = await subscribe(server.http, receiver.url, events=["reply.completed"])
        sid = await server.new_session({"olga": "owner", "bob": "editor", "alice": "viewer"})
        bob = await with_vault(server, sid)
        await bob.command({"type": "prompt", "id": "p1", "text": "say something plain"})
        await bob.command({"type": "prompt", "id": "p2", "text": "what is the vault code?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 2))
        # Shared into the document by the owner: still restricted, still never sent out.
        shared = await server.http.patch(
            f"/api/v1/sessions/{sid}", json={"restricted_replies": "shared"}
        )
        assert shared.status_code == 200, shared.text
        await bob.command({"type": "prompt", "id": "p3", "text": "the vault code again?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 3))
        replies = [e for e in bob.entries() if e["kind"] == "reply"]
        assert "7731" in replies[2]["content"]  # members read it in the shared document

        async def arrived() -> bool:
            return len(receiver.received) >= 3

        await until(arrived, "three reply.completed deliveries")
        verified = [payload for _, payload in receiver.verified(hook["secret"])]
        by_reply = {p["data"]["reply_id"]: p["data"] for p in verified}
        plain, private, shared_reply = (by_reply[r["id"]] for r in replies)
        assert plain["text"] == "the plain answer, in two parts" == replies[0]["content"]
        assert plain["text_withheld"] is False
        for withheld in (private, shared_reply):
            assert withheld["text"] is None and withheld["text_withheld"] is True
        assert all(
            not SECRET_NUMBER.search(body) and b"vault code is" not in body
            for _, body in receiver.received
        )
        # The stored events carry no text: only the webhook body does.
        events = await server.http.get(f"/api/v1/sessions/{sid}/events")
        assert "two parts" not in events.text and not SECRET_NUMBER.search(events.content)


def quoting_provider(sent: Sent) -> Answer:
    """After the search, a provider's 400 that quotes the model's input (some proxies do)."""
    if sent.messages[-1]["role"] == "tool":
        return Status(400, f"bad request near: {sent.everything()[-300:]}")
    return vault_script(sent)


async def test_run_failed_withholds_a_reason_that_may_quote_restricted_material(
    tmp_path: Path,
) -> None:
    """Review (no confused deputy): a document with readers, every member among them, so
    members are told the failure's reason; but a provider's error quoting the document
    went out in the run.failed webhook, which never carries restricted text."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **FAST)
    async with (
        receiving() as receiver,
        serve_in_process(settings, FakeModel(quoting_provider, echo_tools=False)) as server,
    ):
        hook = await subscribe(server.http, receiver.url, events=["run.failed"])
        sid = await server.new_session({"olga": "owner", "bob": "editor"})
        bob = await with_vault(server, sid)
        await bob.command({"type": "prompt", "id": "p1", "text": "what is the vault code?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 1))

        async def arrived() -> bool:
            return len(receiver.received) >= 1

        await until(arrived, "the run.failed delivery")
        [(_, failed)] = receiver.verified(hook["secret"])
        assert failed["data"]["reason_code"] == "provider_error"
        assert failed["data"]["reason_withheld"] is True
        assert not any(SECRET_NUMBER.search(body) for _, body in receiver.received)
