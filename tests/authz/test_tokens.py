"""Client tokens: issue, verify, and every way a token must be refused."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.authz.roles import Member, RoleTable
from parley.authz.tokens import (
    ALGORITHM,
    AUDIENCE,
    ClientClaims,
    issue_token,
    token_refusal,
    verify_token,
)
from parley.session.errors import Unauthenticated

KEY = "k" * 43  # the length of secrets.token_urlsafe(32), as the server generates
OTHER_KEY = "z" * 43
ROLES = RoleTable()
NOW = 1_700_000_000
TTL = 600


def issue(
    user_id: str = "alice", session_id: str = "s1", now: int = NOW
) -> tuple[str, ClientClaims]:
    return issue_token(KEY, user_id=user_id, session_id=session_id, now=now, ttl_seconds=TTL)


def refused(token: str, *, key: str = KEY, now: int = NOW) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        verify_token(key, token, now=now)
    assert info.value.code == "unauthenticated"
    assert info.value.http_status == 401
    return info.value


def test_roundtrip() -> None:
    token, claims = issue()
    assert claims.user_id == "alice"
    assert claims.session_id == "s1"
    assert claims.expires_at == NOW + TTL
    assert claims.token_id
    assert verify_token(KEY, token, now=NOW) == claims
    assert verify_token(KEY, token, now=NOW + TTL - 1) == claims


def test_each_token_has_its_own_id() -> None:
    (_, first), (_, second) = issue(), issue()
    assert first.token_id != second.token_id


def test_expired() -> None:
    token, _ = issue()
    assert "expired" in refused(token, now=NOW + TTL).message
    refused(token, now=NOW + TTL + 10_000)


def test_verification_uses_only_the_given_clock() -> None:
    # A token issued by a clock ahead of this machine's (or by a test's fake clock) is valid
    # by the `now` it is checked against; the wall clock must play no part.
    future = 4_000_000_000
    token, claims = issue(now=future)
    assert verify_token(KEY, token, now=future + 1) == claims


def test_wrong_key() -> None:
    token, _ = issue()
    refused(token, key=OTHER_KEY)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_tampered_payload() -> None:
    token, _ = issue(user_id="alice")
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "owner"
    forged = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    refused(forged)


def test_tampered_signature() -> None:
    token, _ = issue()
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    refused(".".join([header, payload, flipped]))


def test_unsigned_token() -> None:
    token, _ = issue()
    _, payload, _ = token.split(".")
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    refused(f"{header}.{payload}.")


def _signed(**claims: object) -> str:
    payload = {"sub": "alice", "sid": "s1", "exp": NOW + TTL, "aud": AUDIENCE, "jti": "t"}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, KEY, algorithm=ALGORITHM)


def test_a_hand_made_token_with_all_claims_verifies() -> None:
    # Guards the refusals below: they differ from this token in one claim only.
    assert verify_token(KEY, _signed(), now=NOW).user_id == "alice"


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "some-other-service"},
        {"aud": None},
        {"sub": None},
        {"sid": None},
        {"exp": None},
        {"jti": None},
        {"sid": 5},
        {"exp": "tomorrow"},
        {"exp": float(NOW + TTL)},
        {"mby": 5},
        {"mbe": ["o1"]},
    ],
    ids=str,
)
def test_wrong_audience_or_malformed_claims(claims: dict[str, object]) -> None:
    refused(_signed(**claims))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "....", "Bearer x.y.z", "\x00"])
def test_garbage(token: str) -> None:
    refused(token)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_string_is_refused_cleanly(token: str) -> None:
    refused(token)


def test_a_token_carries_its_membership_epoch_and_id() -> None:
    token, claims = issue_token(
        KEY, user_id="alice", session_id="s1", now=NOW, ttl_seconds=TTL, epoch="e1"
    )
    verified = verify_token(KEY, token, now=NOW)
    assert verified == claims and verified.epoch == "e1" and verified.token_id


def test_a_revoked_token_or_one_of_an_earlier_membership_is_refused() -> None:
    _, claims = issue_token(
        KEY, user_id="alice", session_id="s1", now=NOW, ttl_seconds=TTL, epoch="e1"
    )
    alice = Member("alice", "editor", token_epoch="e1")
    assert token_refusal(claims, alice, set(), None, ROLES) is None
    revoked = token_refusal(claims, alice, {claims.token_id}, None, ROLES)
    assert revoked is not None and revoked.startswith("revoked:")
    readded = Member("alice", "editor", token_epoch="e2")  # removed and added back
    refused = token_refusal(claims, readded, set(), None, ROLES)
    assert refused is not None and refused.startswith("revoked:")
    _, old = issue()  # issued before epochs: valid while the membership it saw lasts
    assert (
        old.epoch == "" and token_refusal(old, Member("alice", "editor"), (), None, ROLES) is None
    )


def _from_olgas_link() -> ClientClaims:
    token, claims = issue_token(
        KEY,
        user_id="bob",
        session_id="s1",
        now=NOW,
        ttl_seconds=TTL,
        epoch="b1",
        made_by="olga",
        maker_epoch="o1",
    )
    verified = verify_token(KEY, token, now=NOW)
    assert verified == claims and (verified.made_by, verified.maker_epoch) == ("olga", "o1")
    return claims


BOB = Member("bob", "editor", token_epoch="b1")


def test_a_token_from_a_members_link_dies_with_the_makers_membership() -> None:
    """Review RI-2: the token an owner got from a link she minted outlived her removal.
    A token from another member's link names its maker and their membership's epoch, and
    is refused once that maker is no member (or removed and added back)."""
    claims = _from_olgas_link()
    olga = Member("olga", "owner", token_epoch="o1")
    assert token_refusal(claims, BOB, (), olga, ROLES) is None
    for gone in (None, Member("olga", "owner", token_epoch="o2")):
        refusal = token_refusal(claims, BOB, (), gone, ROLES)
        assert refusal is not None and refusal.startswith("revoked:") and "olga" in refusal
    _, own = issue_token(KEY, user_id="bob", session_id="s1", now=NOW, ttl_seconds=TTL)
    assert (
        own.made_by == "" and token_refusal(own, Member("bob", "editor"), (), None, ROLES) is None
    )


def test_a_token_from_a_members_link_lives_while_its_maker_may_make_that_link() -> None:
    """A maker lowered to a role that may not invite (or that holds less than the token's
    member) kept the tokens exchanged from their links: refused now, with the reason, and
    alive again once the maker may make the link again."""
    claims = _from_olgas_link()
    for lowered, why in (("editor", "may not manage members"), ("viewer", "may not manage")):
        olga = Member("olga", lowered, token_epoch="o1")
        refusal = token_refusal(claims, BOB, (), olga, ROLES)
        assert refusal is not None and refusal.startswith("revoked:"), refusal
        assert "'olga'" in refusal and "may no longer make that link" in refusal and why in refusal
    past_her = Member("bob", "owner", token_epoch="b1")  # raised past what a lowered maker holds
    denied = Member("olga", "owner", denials=frozenset({"pin"}), token_epoch="o1")
    refusal = token_refusal(claims, past_her, (), denied, ROLES)
    assert refusal is not None and "pin" in refusal, refusal
    assert token_refusal(claims, BOB, (), Member("olga", "owner", token_epoch="o1"), ROLES) is None
