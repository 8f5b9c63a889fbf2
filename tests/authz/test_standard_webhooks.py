"""Event webhook signatures verify with the ``standardwebhooks`` package, and only as sent."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from parley.authz.standard_webhooks import headers, new_secret


def test_a_signed_body_verifies_with_the_reference_library() -> None:
    secret = new_secret()
    body = b'{"type":"reply.completed","timestamp":"2026-12-03T00:00:00Z","data":{}}'
    sent = headers(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, sent) == {
        "type": "reply.completed",
        "timestamp": "2026-12-03T00:00:00Z",
        "data": {},
    }


@pytest.mark.parametrize("change", ["body", "id", "secret"])
def test_anything_changed_fails_verification(change: str) -> None:
    secret = new_secret()
    body = b'{"a":1}'
    sent = headers(secret, "msg_1", int(time.time()), body)
    if change == "body":
        body = b'{"a":2}'
    elif change == "id":
        sent["webhook-id"] = "msg_2"
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, sent)


def test_secrets_are_fresh_and_prefixed() -> None:
    assert new_secret() != new_secret()
    assert new_secret().startswith("whsec_")
