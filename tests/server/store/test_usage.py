"""The usage ledger's quota check (``server.store.usage``): a refusal says when to come back."""

from __future__ import annotations

import json

import pytest

from parley.server.http.rest import error_response
from parley.server.store.memory import MemoryStore
from parley.server.store.usage import UsageLedger
from parley.session.commands import error_reply
from parley.session.errors import QuotaExceeded
from parley.session.model import Usage
from parley.session.quota import Quotas

DAY = 86_400.0


@pytest.mark.parametrize("quotas", [Quotas(session_tokens_per_day=100), Quotas(None, 100)])
async def test_a_quota_refusal_says_when_the_quota_resets(quotas: Quotas) -> None:
    """FX69: a quota refusal told no wait; it tells the time to the next UTC midnight, when
    the day's quotas start over: ``retry_after_ms`` in a command's error reply and a REST
    body, ``Retry-After`` in whole seconds. Its code and message are as they were."""
    store = MemoryStore()
    try:
        await store.create_session("a", "t", "queue", 0)
        ledger = UsageLedger(store, lambda: 3 * DAY + 20.5 * 3_600)  # 20:30 UTC
        await ledger.set_quotas("a", quotas)
        await store.record_usage(ledger.rows("a", ["ann"], "m", "r1", Usage(60, 40)))
        with pytest.raises(QuotaExceeded) as refused:
            await ledger.admit("a", ["ann"])
    finally:
        await store.close()
    error = refused.value
    assert error.retry_after_s == 3.5 * 3_600
    assert "quota of 100 tokens today" in error.message
    response = error_response(error)
    body = json.loads(response.body)["error"]
    assert (response.status_code, body["code"]) == (429, "quota_exceeded")
    assert response.headers["Retry-After"] == "12600"
    assert body["retry_after_ms"] == 12_600_000
    reply = json.loads(error_reply("c1", error))
    assert (reply["code"], reply["retry_after_ms"]) == ("quota_exceeded", 12_600_000)
