"""Admin routes for event webhooks: subscriptions, their deliveries, and redelivery.

The signing secret is shown once, in the answer that creates a subscription.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from parley.authz.standard_webhooks import new_secret
from parley.server.http.cursor import PLACE_CURSOR, make_place_cursor, page_start
from parley.server.http.models import WHOLE, HttpUrl, Strict
from parley.server.http.resource_models import NEXT_CURSOR
from parley.server.http.rest import MAX_ROW_ID, Operation, QueryParam
from parley.server.outbound.targets import target_problem
from parley.server.state import AppState
from parley.server.store.horizon import Place
from parley.server.store.outbox import list_deliveries, retry
from parley.server.store.webhooks import (
    ACTIVE,
    WebhookRow,
    change_webhook,
    create_webhook,
    delete_webhook,
    get_webhook,
    list_webhooks,
    lock_subscriptions,
)
from parley.session.errors import Conflict, InvalidInput, NotFound
from parley.session.webhook_events import TYPES

EventType = Literal[
    "session.created",
    "session.deleted",
    "member.added",
    "member.removed",
    "prompt.accepted",
    "reply.completed",
    "run.failed",
    "quota.exceeded",
]
assert set(EventType.__args__) == TYPES  # type: ignore[attr-defined]
SessionId = Annotated[str, Field(min_length=1, max_length=64)]
MAX_DELIVERIES_PER_PAGE = 200


class WebhookCreate(Strict):
    url: HttpUrl
    events: list[EventType] = Field(min_length=1, max_length=len(TYPES))
    sessions: list[SessionId] | None = Field(
        default=None, max_length=1000, description="Only these sessions; absent: every one"
    )


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class WebhookChange(Strict):
    """Only the fields given are changed; `status` and `events` may be left out, not null."""

    # ``change`` reads ``model_fields_set``: the defaults are never used, nor shown (review:
    # the document said null was taken, and the server refused it).

    status: Literal["active", "paused"] = Field(
        default="active",
        description="paused: deliveries wait; active: resume (also after disabled); either "
        "takes new deliveries again after the outbox was full",
        json_schema_extra=_no_default,
    )
    events: list[EventType] = Field(
        default_factory=list, min_length=1, max_length=len(TYPES), json_schema_extra=_no_default
    )
    sessions: list[SessionId] | None = Field(
        default=None, max_length=1000, description="null: every session"
    )
    acknowledge_skipped: Annotated[int, Field(ge=1, le=MAX_ROW_ID), WHOLE] = Field(
        default=0,  # not given (a skipped_to is a time in ms: never 0); bounds: what the
        # ms column holds, read as every integer field is (``100.0`` is 100)
        description="The skipped_to read: forget that skipped range (its events read back); "
        "409 conflict if the range is still open or is another",
        json_schema_extra=_no_default,
    )


class WebhookOut(Strict):
    id: str
    url: str
    events: list[str]
    sessions: list[str] | None
    status: Literal["active", "paused", "disabled"]
    disabled_reason: str | None
    failures: int = Field(description="Failed attempts in a row")
    created_at: int
    full_at: int | None = Field(
        description="ms: when its unfinished deliveries reached PARLEY_WEBHOOK_MAX_WAITING; "
        "no event since is delivered to it (null: not full). A paused one is disabled then; "
        "an active one takes events again once half of it or fewer wait"
    )
    skipped_from: int | None = Field(
        description="ms: the first event not delivered to it because its outbox was full "
        "(null: none skipped since the last acknowledge_skipped)"
    )
    skipped_to: int | None = Field(
        description="ms: when it took events again after skipping from skipped_from (null: "
        "still skipping, or none skipped); kept until PATCHed as acknowledge_skipped"
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_…: the signing secret, shown only now")


class WebhookList(Strict):
    webhooks: list[WebhookOut]


class AttemptOut(Strict):
    at: int
    latency_ms: int
    response_code: int | None
    error: str | None


class DeliveryOut(Strict):
    id: int
    message_id: str = Field(description="The webhook-id header: the same on every attempt")
    type: str
    session_id: str
    status: Literal["pending", "sending", "delivered", "failed"]
    next_at: int
    created_at: int
    attempts: list[AttemptOut]


class DeliveryList(Strict):
    deliveries: list[DeliveryOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page")
    next_cursor: str | None = Field(description=NEXT_CURSOR)


def _out(row: WebhookRow) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=list(row.events),
        sessions=None if row.sessions is None else list(row.sessions),
        status=row.status,  # type: ignore[arg-type]
        disabled_reason=row.disabled_reason,
        failures=row.failures,
        created_at=row.created_at,
        full_at=row.full_at,
        skipped_from=row.skipped_from,
        skipped_to=row.skipped_to,
    )


def _wake(state: AppState) -> None:
    if state.store.on_outbox is not None:
        state.store.on_outbox()


async def _target(state: AppState, url: str) -> None:
    problem = await target_problem(url, allow_private=state.settings.webhook_allow_private)
    if problem is not None:
        raise InvalidInput(f"url: {problem}")


async def create(state: AppState, body: WebhookCreate) -> WebhookCreated:
    await _target(state, body.url)
    async with state.store.transaction("webhook") as tx:
        await lock_subscriptions(tx.connection)  # the cap holds against concurrent creations
        if len(await list_webhooks(tx.connection)) >= state.settings.max_webhooks:
            raise Conflict(f"at most {state.settings.max_webhooks} webhooks")
        row = await create_webhook(
            tx.connection,
            body.url,
            body.events,
            body.sessions,
            new_secret(),
            int(state.clock() * 1000),
        )
    return WebhookCreated(**_out(row).model_dump(), secret=row.secret)


async def list_all(state: AppState) -> WebhookList:
    async with state.store.read() as connection:
        return WebhookList(webhooks=[_out(row) for row in await list_webhooks(connection)])


async def _found(state: AppState, webhook_id: str) -> WebhookRow:
    async with state.store.read() as connection:
        row = await get_webhook(connection, webhook_id)
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return row


async def get_one(state: AppState, webhook_id: str) -> WebhookOut:
    return _out(await _found(state, webhook_id))


async def change(state: AppState, webhook_id: str, body: WebhookChange) -> WebhookOut:
    values = {name: getattr(body, name) for name in body.model_fields_set}
    async with state.store.transaction("webhook") as tx:
        row = await change_webhook(tx.connection, webhook_id, values, int(state.clock() * 1000))
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    if row.status == ACTIVE:
        _wake(state)  # deliveries held while it was paused may be due
    return _out(row)


async def delete(state: AppState, webhook_id: str) -> None:
    async with state.store.transaction("webhook") as tx:
        if not await delete_webhook(tx.connection, webhook_id):
            raise NotFound(f"no webhook {webhook_id!r}")


async def deliveries(
    state: AppState, webhook_id: str, after: int, limit: int, cursor: Place | None = None
) -> DeliveryList:
    """The subscription's deliveries after ``cursor`` (or ``after``, an id), oldest first."""
    start = page_start(after, cursor)
    await _found(state, webhook_id)
    async with state.store.read() as connection:
        found = await list_deliveries(connection, webhook_id, start, limit)
    last = found[-1][0] if found else None
    return DeliveryList(
        deliveries=[
            DeliveryOut(
                id=int(row.id),
                message_id=row.message_id,
                type=row.type,
                session_id=row.session_id,
                status=row.status,
                next_at=int(row.next_at),
                created_at=int(row.created_at),
                attempts=[
                    AttemptOut(
                        at=int(a.at),
                        latency_ms=int(a.latency_ms),
                        response_code=a.response_code,
                        error=a.error,
                    )
                    for a in attempts
                ],
            )
            for row, attempts in found
        ],
        next_after=int(found[-1][0].id) if len(found) == limit else None,
        next_cursor=None if last is None else make_place_cursor(Place(int(last.xid), int(last.id))),
    )


async def redeliver(state: AppState, webhook_id: str, delivery_id: str) -> None:
    if not (delivery_id.isascii() and delivery_id.isdigit()) or len(delivery_id) > 18:
        raise NotFound(f"no delivery {delivery_id!r}")
    async with state.store.transaction("webhook") as tx:
        found = await retry(tx.connection, webhook_id, int(delivery_id), int(state.clock() * 1000))
    if not found:
        raise NotFound(f"no delivery {delivery_id!r} of webhook {webhook_id!r}")
    _wake(state)


OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/api/v1/webhooks",
        create,
        "Subscribe a URL to event types; the answer shows the signing secret once",
        body=WebhookCreate,
        body_bytes=None,  # up to 1,000 session ids
        response=WebhookCreated,
        status=201,
        location="/api/v1/webhooks/{id}",
        errors=(409,),
    ),
    Operation("GET", "/api/v1/webhooks", list_all, "Every event webhook", response=WebhookList),
    Operation(
        "GET",
        "/api/v1/webhooks/{webhook_id}",
        get_one,
        "One event webhook",
        response=WebhookOut,
        errors=(404,),
    ),
    Operation(
        "PATCH",
        "/api/v1/webhooks/{webhook_id}",
        change,
        "Pause or resume an event webhook, or change its event types or sessions",
        body=WebhookChange,
        body_bytes=None,  # up to 1,000 session ids
        response=WebhookOut,
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/api/v1/webhooks/{webhook_id}",
        delete,
        "Delete an event webhook with its deliveries",
        status=204,
        errors=(404,),
    ),
    Operation(
        "GET",
        "/api/v1/webhooks/{webhook_id}/deliveries",
        deliveries,
        "An event webhook's deliveries, oldest first, each with its attempts",
        response=DeliveryList,
        errors=(404,),
        query=(
            QueryParam("after", 0, MAX_ROW_ID, 0),
            QueryParam("limit", 1, MAX_DELIVERIES_PER_PAGE, 50),
        ),
        query_str=(PLACE_CURSOR,),
    ),
    Operation(
        "POST",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        redeliver,
        "Deliver again, now (same webhook-id), with a new retry period",
        status=202,
        errors=(404,),
    ),
]
