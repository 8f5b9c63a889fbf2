"""Signed, short-lived client tokens: which user may open which session's socket.

A token names the user and the session; the member's role is looked up live when it is
used, so a demotion takes effect at once instead of when the token expires. It also names
itself (``jti``, so it can be revoked alone) and the membership it was issued under (its
epoch: a member who is removed and added back has a new one, so old tokens stay dead). A
token exchanged from another member's invite link names that maker and their membership's
epoch too: it lives only while its maker may still make that link (review RI-2: a removed
owner kept a token she had exchanged from her own link for up to its lifetime).
"""

from __future__ import annotations

import secrets
from collections.abc import Container
from dataclasses import dataclass

import jwt

from parley.authz.membership import judge_membership_change
from parley.authz.roles import Member, RoleTable
from parley.session.errors import Unauthenticated

ALGORITHM = "HS256"
AUDIENCE = "parley-session"
# How audit records, events and webhooks name the admin key (no member may take the name).
ADMIN_ACTOR = "admin"
# Why a token revoked (by its id) is refused, wherever it is judged.
REVOKED = "revoked: this token was revoked"


@dataclass(frozen=True, slots=True)
class ClientClaims:
    user_id: str
    session_id: str
    expires_at: int  # seconds since the epoch
    token_id: str
    epoch: str = ""  # the membership's epoch; "" in tokens issued before epochs existed
    made_by: str = ""  # whose invite link gave it, when another member's ("": none)
    maker_epoch: str = ""  # the epoch of ``made_by``'s membership then


def issue_token(
    key: str,
    *,
    user_id: str,
    session_id: str,
    now: int,
    ttl_seconds: int,
    epoch: str = "",
    made_by: str = "",
    maker_epoch: str = "",
) -> tuple[str, ClientClaims]:
    claims = ClientClaims(
        user_id=user_id,
        session_id=session_id,
        expires_at=now + ttl_seconds,
        token_id=secrets.token_urlsafe(12),
        epoch=epoch,
        made_by=made_by,
        maker_epoch=maker_epoch,
    )
    payload = {
        "sub": user_id,
        "sid": session_id,
        "iat": now,
        "exp": claims.expires_at,
        "aud": AUDIENCE,
        "jti": claims.token_id,
        "mep": epoch,
    }
    if made_by:
        payload |= {"mby": made_by, "mbe": maker_epoch}
    return jwt.encode(payload, key, algorithm=ALGORITHM), claims


def verify_token(key: str, token: str, *, now: int) -> ClientClaims:
    """Return the claims of a valid token; raise ``Unauthenticated`` otherwise."""
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            # Time is checked below against the caller's clock, never the wall clock here.
            options={
                "require": ["sub", "sid", "exp", "jti"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"invalid token: {exc}") from None
    sub, sid, exp, jti = payload["sub"], payload["sid"], payload["exp"], payload["jti"]
    epoch = payload.get("mep", "")
    made_by, maker_epoch = payload.get("mby", ""), payload.get("mbe", "")
    strings = (sub, sid, jti, epoch, made_by, maker_epoch)
    if not all(isinstance(v, str) for v in strings) or not isinstance(exp, int):
        raise Unauthenticated("invalid token: malformed claims")
    if exp <= now:
        raise Unauthenticated("token expired")
    return ClientClaims(sub, sid, exp, jti, epoch, made_by, maker_epoch)


def token_refusal(
    claims: ClientClaims,
    member: Member,
    revoked: Container[str],
    maker: Member | None,
    roles: RoleTable,
) -> str | None:
    """Why a verified token of ``member`` (its user, as a member now) may not be used any
    more, or None. ``revoked``: the ids of the session's revoked tokens; ``maker``: the
    member whose invite link gave the token (``claims.made_by``) as a member now (None:
    no member). A token from another member's link lives only while its maker may still
    make that link: the same membership, still allowed to add ``member`` with the access
    they now hold (``maker_refusal``). The same answer at authentication and at a
    command's commit, on every node (``roles``: the live role table)."""
    if claims.token_id in revoked:
        return REVOKED
    if claims.epoch != member.token_epoch:
        return "revoked: this token was issued before the member was removed"
    if claims.made_by:
        return maker_refusal(claims, member, maker, roles)
    return None


def maker_refusal(
    claims: ClientClaims, member: Member, maker: Member | None, roles: RoleTable
) -> str | None:
    """Why the maker of a token from their invite link (``maker``, as a member now) may no
    longer make that link for ``member``, or None: removed (or removed and added back: a
    new membership), or no longer allowed to add ``member`` with the capabilities of their
    role and grants (``judge_membership_change``: ``manage_members``, and nothing the
    maker does not hold). The reader lists are not judged again here (they are read from
    the store at each invite's use, not at every command): read access is the invite's."""
    who = f"revoked: {claims.made_by!r}, whose invite link gave this token"
    if maker is None or maker.token_epoch != claims.maker_epoch:
        return f"{who}, was removed"
    decision = judge_membership_change(maker, None, member, roles, ())
    if not decision.allowed:
        return f"{who}, may no longer make that link: {decision.reason}"
    return None
