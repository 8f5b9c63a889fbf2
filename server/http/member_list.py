"""The member list as ``GET …/members`` answers it, encoded once per version of each member.

Reading every member from the store and validating a ``MemberOut`` for each on every read
cost 110-180 ms of the event loop for a session of 600 members (review R4-1, "bounded": a
viewer's reads, each one command of their budget, stalled every other client). The room's
``Membership`` holds the members and names in force, and counts their changes
(``Membership.version``); each member's JSON is kept beside the membership and name it was
made from, so a read of an unchanged list sends the bytes it sent before, and a read after
one member's change encodes that member alone. What the list shows is the same for every
reader, so one copy per room serves them all.
"""

from __future__ import annotations

from parley.authz.policy import Subject
from parley.authz.roles import Member, RoleTable
from parley.server.http.models import MemberOut
from parley.server.runtime.membership import Membership


def member_out(member: Member, display_name: str, roles: RoleTable) -> MemberOut:
    """What the API shows of ``member``: their role, grants and denials, and what they may
    do now by ``roles``."""
    subject = Subject.of(member, roles)
    return MemberOut(
        user_id=member.user_id,
        role=member.role,
        grants=sorted(member.grants),
        denials=sorted(member.denials),
        capabilities=sorted(subject.capabilities),
        created_at=member.joined_at,
        display_name=display_name,
    )


class MemberListBody:
    """The encoded member list of one room (``encode``), kept between reads."""

    __slots__ = ("_body", "_made_at", "_pieces")

    def __init__(self) -> None:
        # user id -> (the membership as encoded, the name then, its JSON)
        self._pieces: dict[str, tuple[Member, str, bytes]] = {}
        self._body = b""  # the last answer: handed out again while nothing changed
        self._made_at: tuple[int, RoleTable] | None = None  # (membership version, roles)

    @property
    def size(self) -> int:
        """The last answer's length: what the next one will be, about."""
        return len(self._body)

    def encode(self, membership: Membership, roles: RoleTable) -> bytes:
        """``{"members": [...]}`` as ``MemberList``, by when each joined, then user id."""
        made_at = (membership.version, roles)
        if self._made_at == made_at:
            return self._body
        # Another role table changes what members may do: every one is encoded again.
        kept = self._pieces if self._made_at is not None and self._made_at[1] == roles else {}
        pieces: dict[str, tuple[Member, str, bytes]] = {}
        for user_id, member in sorted(
            membership.members.items(), key=lambda item: (item[1].joined_at, item[0])
        ):
            name = membership.display_names.get(user_id, "")
            piece = kept.get(user_id)
            if piece is None or piece[0] != member or piece[1] != name:
                piece = (member, name, member_out(member, name, roles).model_dump_json().encode())
            pieces[user_id] = piece
        self._pieces, self._made_at = pieces, made_at
        self._body = b'{"members":[' + b",".join(p[2] for p in pieces.values()) + b"]}"
        return self._body
