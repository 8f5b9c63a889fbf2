"""Webhook signatures: what Parley sends verifies once; anything altered, late or replayed
does not."""

from __future__ import annotations

from parley.authz.webhooks import WebhookVerifier, new_delivery_id, sign, verify_signature

SECRET = "s3cret"
BODY = b'{"tool":"deploy","arguments":{}}'
T = 1_700_000_000
ID = "delivery-0123456789abcdef"


def signed(timestamp: int = T, delivery: str = ID, body: bytes = BODY) -> tuple[str, str, str]:
    return str(timestamp), delivery, sign(SECRET, timestamp, delivery, body)


def test_a_fresh_correct_signature_verifies() -> None:
    timestamp, delivery, signature = signed()
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, BODY, timestamp, delivery, signature, now=T + 10)


def test_altered_body_secret_timestamp_or_delivery_fails() -> None:
    timestamp, delivery, signature = signed()
    assert not verify_signature(SECRET, BODY + b" ", timestamp, delivery, signature, now=T)
    assert not verify_signature("other", BODY, timestamp, delivery, signature, now=T)
    assert not verify_signature(SECRET, BODY, str(T + 1), delivery, signature, now=T)
    assert not verify_signature(SECRET, BODY, timestamp, ID + "x", signature, now=T)
    assert not verify_signature(SECRET, BODY, None, delivery, signature, now=T)
    assert not verify_signature(SECRET, BODY, timestamp, None, signature, now=T)
    assert not verify_signature(SECRET, BODY, timestamp, delivery, None, now=T)
    assert not verify_signature(SECRET, BODY, "-5", delivery, signature, now=T)
    short = signed(delivery="short")
    assert not verify_signature(SECRET, BODY, *short, now=T)


def test_an_old_request_is_a_replay() -> None:
    assert not verify_signature(SECRET, BODY, *signed(), now=T + 301)
    assert not verify_signature(SECRET, BODY, *signed(), now=T - 301)


def test_the_verifier_accepts_each_delivery_once_within_the_window() -> None:
    verifier = WebhookVerifier(SECRET, tolerance_s=300)
    first = signed()
    assert verifier.verify(BODY, *first, now=T + 1)
    assert not verifier.verify(BODY, *first, now=T + 2)  # the replay
    assert not verifier.verify(BODY, *first, now=T + 299)
    assert verifier.verify(BODY, *signed(delivery=new_delivery_id()), now=T + 3)
    # A forged request does not use up (or fill) the memory.
    forged = (str(T), "forged-delivery-id-0001", "sha256=00")
    assert not verifier.verify(BODY, *forged, now=T)
    assert verifier.verify(BODY, *signed(delivery="forged-delivery-id-0001"), now=T)
    # Past the window the timestamp refuses it; the id is forgotten.
    assert not verifier.verify(BODY, *first, now=T + 301)
    assert verifier.verify(
        BODY, *signed(timestamp=T + 301, delivery=new_delivery_id()), now=T + 301
    )
    assert verifier.remembered == 1


def test_a_full_memory_refuses_what_it_forgot_instead_of_accepting_a_replay() -> None:
    verifier = WebhookVerifier(SECRET, tolerance_s=300, max_remembered=3)
    requests = [signed(timestamp=T + n, delivery=f"delivery-id-{n:08d}") for n in range(5)]
    assert all(verifier.verify(BODY, *r, now=T + 10) for r in requests)
    assert verifier.remembered == 3
    for r in requests:  # the two forgotten ones are refused by their age, the rest as seen
        assert not verifier.verify(BODY, *r, now=T + 10)
    assert not verifier.verify(
        BODY, *signed(timestamp=T + 1, delivery=new_delivery_id()), now=T + 10
    )
    assert verifier.verify(BODY, *signed(timestamp=T + 6, delivery=new_delivery_id()), now=T + 10)


def test_a_timestamp_of_other_digits_than_ascii_ones_is_refused_not_raised() -> None:
    """Review I5: ``str.isdigit`` holds for superscripts and other scripts' digits, which
    ``int`` refuses: a request stamped ``²`` (one latin-1 byte, as a header arrives) made
    ``verify`` raise, a 500 from a receiver written as permissions.md shows."""
    _, delivery, signature = signed()
    verifier = WebhookVerifier(SECRET)
    for timestamp in ("\u00b2", "\u00b9\u00b2\u00b3", "17" + "\u00b2", "\u0661\u0662", " 1", "+1"):
        assert not verify_signature(SECRET, BODY, timestamp, delivery, signature, now=T)
        assert not verifier.verify(BODY, timestamp, delivery, signature, now=T)
