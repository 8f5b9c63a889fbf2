"""Signed, short-lived client tokens: which user may open which session's socket.

A token names the user and the session; the member's role is looked up live when it is
used, so a demotion takes effect at once instead of when the token expires.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

from session.errors import Unauthenticated

ALGORITHM = "HS256"
AUDIENCE = "parley-session"


@dataclass(frozen=True, slots=True)
class ClientClaims:
    user_id: str
    session_id: str
    expires_at: int  # seconds since the epoch
    token_id: str


def issue_token(
    key: str, *, user_id: str, session_id: str, now: int, ttl_seconds: int
) -> tuple[str, ClientClaims]:
    claims = ClientClaims(
        user_id=user_id,
        session_id=session_id,
        expires_at=now + ttl_seconds,
        token_id=secrets.token_urlsafe(12),
    )
    payload = {
        "sub": user_id,
        "sid": session_id,
        "iat": now,
        "exp": claims.expires_at,
        "aud": AUDIENCE,
        "jti": claims.token_id,
    }
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
    if not (isinstance(sub, str) and isinstance(sid, str) and isinstance(exp, int)):
        raise Unauthenticated("invalid token: malformed claims")
    if exp <= now:
        raise Unauthenticated("token expired")
    return ClientClaims(user_id=sub, session_id=sid, expires_at=exp, token_id=str(jti))
