"""Webhook signatures: what Parley sends verifies; anything altered, late or replayed does not."""

from __future__ import annotations

from authz.webhooks import sign, verify_signature

SECRET = "s3cret"
BODY = b'{"tool":"deploy","arguments":{}}'


def test_a_fresh_correct_signature_verifies() -> None:
    signature = sign(SECRET, 1_700_000_000, BODY)
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, BODY, "1700000000", signature, now=1_700_000_010)


def test_altered_body_secret_or_timestamp_fails() -> None:
    signature = sign(SECRET, 1_700_000_000, BODY)
    now = 1_700_000_000
    assert not verify_signature(SECRET, BODY + b" ", "1700000000", signature, now=now)
    assert not verify_signature("other", BODY, "1700000000", signature, now=now)
    assert not verify_signature(SECRET, BODY, "1700000001", signature, now=now)
    assert not verify_signature(SECRET, BODY, None, signature, now=now)
    assert not verify_signature(SECRET, BODY, "1700000000", None, now=now)
    assert not verify_signature(SECRET, BODY, "-5", signature, now=now)


def test_an_old_request_is_a_replay() -> None:
    signature = sign(SECRET, 1_700_000_000, BODY)
    assert not verify_signature(SECRET, BODY, "1700000000", signature, now=1_700_000_301)
    assert not verify_signature(SECRET, BODY, "1700000000", signature, now=1_699_999_699)
