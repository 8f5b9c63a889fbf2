"""Invite links over REST: minted by who manages members, exchanged once (or max_uses
times) for a client token, expiring, revocable, dead with the membership; an attacker's
guesses, replays and races get nothing."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.server.http import access as access_routes
from parley.server.http import members as member_routes
from parley.server.store.invites import InviteStore
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.yclient import YClient


async def _invite(server: RunningServer, sid: str, **body: Any) -> dict[str, Any]:
    created = await server.http.post(
        f"/api/v1/sessions/{sid}/invites", json={"user_id": "alice", **body}
    )
    assert created.status_code == 201, created.text
    answer: dict[str, Any] = created.json()
    return answer


async def _exchange(
    server: RunningServer, secret: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await server.http.post(
        "/api/v1/invites/exchange",
        json={"invite": secret},
        headers={"Authorization": ""} | (headers or {}),
    )


async def test_an_invite_signs_its_member_in_once(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    invite = await _invite(server, sid)
    assert invite["link"] == f"/demo/#invite={invite['secret']}"  # in the fragment
    assert invite["max_uses"] == 1 and invite["uses"] == 0
    listed = (await server.http.get(f"/api/v1/sessions/{sid}/invites")).json()["invites"]
    assert [i["id"] for i in listed] == [invite["id"]]
    assert "secret" not in listed[0]

    token = await _exchange(server, invite["secret"])
    assert token.status_code == 200, token.text
    assert token.json()["user_id"] == "alice" and token.json()["session_id"] == sid
    me = await server.http.get(
        f"/api/v1/sessions/{sid}/me", headers={"Authorization": f"Bearer {token.json()['token']}"}
    )
    assert me.status_code == 200 and me.json()["user_id"] == "alice"

    again = await _exchange(server, invite["secret"])
    assert again.status_code == 401 and again.json()["error"]["code"] == "unauthenticated"
    assert (await server.http.get(f"/api/v1/sessions/{sid}/invites")).json()["invites"] == []


async def test_max_uses_is_the_number_of_sign_ins(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    invite = await _invite(server, sid, max_uses=2)
    assert (await _exchange(server, invite["secret"])).status_code == 200
    assert (await _exchange(server, invite["secret"])).status_code == 200
    assert (await _exchange(server, invite["secret"])).status_code == 401


async def test_racing_exchanges_of_a_single_use_invite_get_one_token(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"alice": "editor"})
    invite = await _invite(server, sid)
    answers = await asyncio.gather(*(_exchange(server, invite["secret"]) for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [200] + [401] * 5


async def test_revoked_expired_and_orphaned_invites_sign_nobody_in(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"alice": "editor"})
    revoked = await _invite(server, sid)
    url = f"/api/v1/sessions/{sid}/invites/{revoked['id']}"
    assert (await server.http.delete(url)).status_code == 204
    assert (await server.http.delete(url)).status_code == 404
    assert (await _exchange(server, revoked["secret"])).status_code == 401

    # Alice removed, then added back: invites made for her first membership are dead.
    orphaned = await _invite(server, sid)
    members = f"/api/v1/sessions/{sid}/members/alice"
    assert (await server.http.delete(members)).status_code == 204
    assert (await _exchange(server, orphaned["secret"])).status_code == 401
    assert (await server.http.put(members, json={"role": "editor"})).status_code == 200
    assert (await _exchange(server, orphaned["secret"])).status_code == 401

    expiring = await _invite(server, sid, ttl_seconds=60)
    state = server.app.state.parley
    now = state.clock()
    state.clock = lambda: now + 61
    assert (await _exchange(server, expiring["secret"])).status_code == 401


async def test_who_may_mint_invites(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "olga": "owner", "carol": "viewer"})
    for user, status in (("alice", 403), ("olga", 201)):
        token = await server.token(sid, user)
        created = await server.http.post(
            f"/api/v1/sessions/{sid}/invites",
            json={"user_id": "carol"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == status, created.text
    assert created.json()["created_by"] == "olga"
    stranger = await server.http.post(
        f"/api/v1/sessions/{sid}/invites", json={"user_id": "mallory"}
    )
    assert stranger.status_code == 409
    anonymous = await server.http.post(
        f"/api/v1/sessions/{sid}/invites", json={"user_id": "alice"}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


async def test_a_manager_cannot_mint_a_link_to_more_access_than_theirs(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"olga": "owner"})
    put = await server.http.put(
        f"/api/v1/sessions/{sid}/members/mo", json={"role": "editor", "grants": ["manage_members"]}
    )
    assert put.status_code == 200, put.text
    token = await server.token(sid, "mo")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/sessions/{sid}/invites"
    to_owner = await server.http.post(url, json={"user_id": "olga"}, headers=headers)
    assert to_owner.status_code == 403, to_owner.text
    assert "hands out their access" in to_owner.json()["error"]["message"]
    own = await server.http.post(url, json={"user_id": "mo"}, headers=headers)
    assert own.status_code == 201, own.text  # a link for one's own second device
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    assert any(r["kind"] == "refused" and r["actor"] == "mo" for r in audit)


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "alice", "max_uses": 0},
        {"user_id": "alice", "max_uses": 101},
        {"user_id": "alice", "ttl_seconds": 59},
        {"user_id": "alice", "ttl_seconds": 2_592_001},
        {"user_id": "alice", "token_ttl_seconds": 10**9},
        {"user_id": ""},
        {"user_id": "alice", "role": "owner"},
    ],
)
async def test_bad_invite_requests(server: RunningServer, body: dict[str, Any]) -> None:
    sid = await server.new_session({"alice": "editor"})
    created = await server.http.post(f"/api/v1/sessions/{sid}/invites", json=body)
    assert created.status_code == 422, created.text
    assert (await server.http.get(f"/api/v1/sessions/{sid}/invites")).json()["invites"] == []


@pytest.mark.parametrize(
    "secret",
    ["short", "a" * 101, "has spaces in it, not base64", "x" * 43, "ünïcödé" * 4, None],
)
async def test_guessed_or_malformed_secrets_get_nothing(
    server: RunningServer, secret: object
) -> None:
    sid = await server.new_session({"alice": "editor"})
    await _invite(server, sid)
    answer = await server.http.post(
        "/api/v1/invites/exchange", json={"invite": secret}, headers={"Authorization": ""}
    )
    assert answer.status_code in (401, 422), answer.text
    assert "token" not in answer.json()


async def test_a_session_has_a_bounded_number_of_live_invites(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    first = await _invite(server, sid)
    for _ in range(99):
        await _invite(server, sid)
    refused = await server.http.post(f"/api/v1/sessions/{sid}/invites", json={"user_id": "alice"})
    assert refused.status_code == 409 and "revoke" in refused.json()["error"]["message"]
    await server.http.delete(f"/api/v1/sessions/{sid}/invites/{first['id']}")
    await _invite(server, sid)


async def test_invites_dead_with_their_membership_are_not_live_nor_counted(
    server: RunningServer,
) -> None:
    """Review RV40-F3: links made for a membership that ended (alice removed, then added
    back) are refused at the exchange, so they are not listed as live, cannot be revoked
    as live, and do not fill the cap: a new link for alice works."""
    sid = await server.new_session({"alice": "editor"})
    first = await _invite(server, sid, max_uses=5)
    for _ in range(99):
        await _invite(server, sid)
    members = f"/api/v1/sessions/{sid}/members/alice"
    assert (await server.http.delete(members)).status_code == 204
    listing = f"/api/v1/sessions/{sid}/invites"
    assert (await server.http.get(listing)).json()["invites"] == []
    assert (await server.http.put(members, json={"role": "viewer"})).status_code == 200
    assert (await _exchange(server, first["secret"])).status_code == 401
    assert (await server.http.get(listing)).json()["invites"] == []
    assert (await server.http.delete(f"{listing}/{first['id']}")).status_code == 404

    fresh = await _invite(server, sid)
    listed = (await server.http.get(listing)).json()["invites"]
    assert [i["id"] for i in listed] == [fresh["id"]]
    token = await _exchange(server, fresh["secret"])
    assert token.status_code == 200 and token.json()["user_id"] == "alice", token.text


async def test_a_link_is_judged_again_when_used_as_if_its_maker_minted_it_then(
    server: RunningServer,
) -> None:
    # A link hands out its member's access as it is when used: minted for an editor by a
    # member who may add editors, it must not hand out an owner's once the member is
    # raised, nor anything once its maker was removed.
    sid = await server.new_session({"alice": "editor", "bob": "editor", "olga": "owner"})
    put = await server.http.put(
        f"/api/v1/sessions/{sid}/members/mo", json={"role": "editor", "grants": ["manage_members"]}
    )
    assert put.status_code == 200, put.text
    url = f"/api/v1/sessions/{sid}/invites"
    minted = {}
    for maker, member in (("mo", "alice"), ("olga", "bob"), ("mo", "mo")):
        headers = {"Authorization": f"Bearer {await server.token(sid, maker)}"}
        created = await server.http.post(url, json={"user_id": member}, headers=headers)
        assert created.status_code == 201, created.text
        minted[maker, member] = created.json()["secret"]
    raised = await server.http.put(f"/api/v1/sessions/{sid}/members/alice", json={"role": "owner"})
    assert raised.status_code == 200, raised.text
    removed = await server.http.delete(f"/api/v1/sessions/{sid}/members/olga")
    assert removed.status_code == 204, removed.text

    for made in (("mo", "alice"), ("olga", "bob")):
        refused = await _exchange(server, minted[made])
        assert refused.status_code == 401, (made, refused.text)
        assert refused.json()["error"]["code"] == "unauthenticated"
    own = await _exchange(server, minted["mo", "mo"])  # one's own access, whatever it is
    assert own.status_code == 200, own.text
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    refusals = [r for r in audit if r["kind"] == "refused" and "use invite" in r["data"]["action"]]
    assert {r["actor"] for r in refusals} == {"mo", "olga"}


async def test_a_link_its_maker_could_no_longer_mint_dies_at_its_first_use_audited_once(
    server: RunningServer,
) -> None:
    """Review: a dead link (its maker lowered to viewer) stayed live, and each exchange of
    it, with no key, wrote one ``refused`` audit record: 1,600 in 9 s. It is revoked at the
    first refused use, so its refusal is audited once, and it leaves the live invites."""
    sid = await server.new_session({"alice": "owner", "bob": "editor"})
    headers = {"Authorization": f"Bearer {await server.token(sid, 'alice')}"}
    url = f"/api/v1/sessions/{sid}/invites"
    created = await server.http.post(url, json={"user_id": "bob"}, headers=headers)
    assert created.status_code == 201, created.text
    lowered = await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "viewer"}
    )
    assert lowered.status_code == 200, lowered.text
    for _ in range(3):
        refused = await _exchange(server, created.json()["secret"])
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    refusals = [r for r in audit if r["kind"] == "refused" and "use invite" in r["data"]["action"]]
    assert [r["actor"] for r in refusals] == ["alice"]
    assert refusals[0]["data"]["revoked"] is True
    assert (await server.http.get(url)).json()["invites"] == []


async def test_exchanges_are_budgeted_by_client_address_and_by_invite(tmp_path: Path) -> None:
    """Review: exchanges need no key and had no limit (random secrets, 1,600 a dead link
    in 9 s). Past a client address's budget, or an invite's, an exchange is refused 429
    ``rate_limited`` with ``Retry-After``, before the store is read."""
    budget = {"invite_exchanges_per_minute": 0.01, "invite_exchanges_burst": 2}
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", **budget)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        invite = await _invite(server, sid, max_uses=5)
        guesses = [await _exchange(server, secrets.token_urlsafe(32)) for _ in range(3)]
        assert [g.status_code for g in guesses] == [401, 401, 429]
        assert guesses[2].json()["error"]["code"] == "rate_limited"
        assert int(guesses[2].headers["Retry-After"]) >= 60  # one back: 100 minutes
        assert (await _exchange(server, invite["secret"])).status_code == 429  # the address's
        # From other addresses (a proxy uvicorn trusts names them): the invite's own budget.
        answers = [
            await _exchange(server, invite["secret"], {"X-Forwarded-For": f"198.51.100.{n}"})
            for n in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["error"]["code"] == "rate_limited"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _mint(server: RunningServer, sid: str, token: str, **body: Any) -> httpx.Response:
    return await server.http.post(
        f"/api/v1/sessions/{sid}/invites", json=body, headers=_bearer(token)
    )


async def test_a_member_may_not_mint_a_link_for_a_user_the_server_already_knows(
    server: RunningServer,
) -> None:
    """Review RI-2: alice (owner) minted a link for bob (editor, signed in), exchanged it
    herself and read bob's private side-thread, listed his other sessions and prompted as
    him. A member's link for someone else may name only a user with nothing on the server
    but this membership; the admin key may still mint one for anyone."""
    sid = await server.new_session({"alice": "owner", "bob": "editor", "carol": "editor"})
    other = await server.new_session({"dave": "viewer"})
    for user in ("dave", "erin"):
        put = await server.http.put(
            f"/api/v1/sessions/{sid}/members/{user}", json={"role": "editor"}
        )
        assert put.status_code == 200, put.text
    alice = await server.token(sid, "alice")
    await server.thread_url(sid, await server.token(sid, "bob"))  # bob signs in, opens one
    said = await server.http.post(
        f"/api/v1/sessions/{sid}/messages", json={"text": "hi", "as_user": "erin"}
    )
    assert said.status_code in (200, 201, 202), said.text  # the admin key speaks as erin
    for user in ("bob", "dave", "erin"):  # signed in; in another session; spoken for
        refused = await _mint(server, sid, alice, user_id=user)
        assert refused.status_code == 403, (user, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "forbidden" and "known here already" in error["message"]
        admins = await server.http.post(f"/api/v1/sessions/{sid}/invites", json={"user_id": user})
        assert admins.status_code == 201, admins.text
    fresh = await _mint(server, sid, alice, user_id="carol")  # nobody has been carol yet
    assert fresh.status_code == 201, fresh.text
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    refusals = [r for r in audit if r["kind"] == "refused" and r["actor"] == "alice"]
    assert {r["data"]["action"] for r in refusals} == {"invite bob", "invite dave", "invite erin"}
    assert other  # dave's other session, which alice is no member of


async def test_a_members_link_for_someone_dies_once_they_are_known(
    server: RunningServer,
) -> None:
    """A link for a user nobody has been yet is judged again at each use: once its user
    has signed in (by this link or any other way), it signs nobody else in as them."""
    sid = await server.new_session({"alice": "owner", "carol": "editor", "dave": "editor"})
    alice = await server.token(sid, "alice")
    for_carol = await _mint(server, sid, alice, user_id="carol", max_uses=2)
    for_dave = await _mint(server, sid, alice, user_id="dave")
    assert for_carol.status_code == for_dave.status_code == 201
    first = await _exchange(server, for_carol.json()["secret"])
    assert first.status_code == 200, first.text
    second = await _exchange(server, for_carol.json()["secret"])  # the maker, say
    assert second.status_code == 401, second.text
    await server.token(sid, "dave")  # dave signs in another way first
    late = await _exchange(server, for_dave.json()["secret"])
    assert late.status_code == 401, late.text
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    refusals = [r for r in audit if r["kind"] == "refused" and "use invite" in r["data"]["action"]]
    assert len(refusals) == 2 and all("known here" in r["data"]["reason"] for r in refusals)


async def test_a_token_from_a_link_dies_when_its_maker_is_removed(
    server: RunningServer,
) -> None:
    """Review RI-2: the token alice exchanged from her own link outlived her removal (up to
    the link's token lifetime, 7 days at most). Removing a member revokes the tokens of the
    links they minted too: on REST and on sockets; the admin key's links and a member's
    own are not touched."""
    sid = await server.new_session(
        {"alice": "owner", "carol": "editor", "dave": "editor", "olga": "owner"}
    )
    alice = await server.token(sid, "alice")
    minted = await _mint(server, sid, alice, user_id="carol")
    assert minted.status_code == 201, minted.text
    exchanged = await _exchange(server, minted.json()["secret"])
    assert exchanged.status_code == 200, exchanged.text
    carol = exchanged.json()["token"]
    olga_own = await _mint(server, sid, await server.token(sid, "olga"), user_id="olga")
    olga = (await _exchange(server, olga_own.json()["secret"])).json()["token"]
    by_admin = await _invite(server, sid, user_id="dave")  # (carol's would revoke alice's)
    admins = (await _exchange(server, by_admin["secret"])).json()["token"]
    me = f"/api/v1/sessions/{sid}/me"
    assert (await server.http.get(me, headers=_bearer(carol))).status_code == 200
    socket = await YClient.connect(server.ws_url, sid, carol)
    server.clients.append(socket)
    async with asyncio.timeout(10):
        await socket.synced.wait()

    removed = await server.http.delete(f"/api/v1/sessions/{sid}/members/alice")
    assert removed.status_code == 204, removed.text
    assert await socket.wait_closed() == 4401
    assert socket.ws.close_reason is not None and socket.ws.close_reason.startswith("revoked:")
    refused = await server.http.get(me, headers=_bearer(carol))
    assert refused.status_code == 401 and "alice" in refused.json()["error"]["message"]
    reopened = await YClient.connect(server.ws_url, sid, carol)
    server.clients.append(reopened)
    assert await reopened.wait_closed() == 4401
    for kept in (olga, admins):
        assert (await server.http.get(me, headers=_bearer(kept))).status_code == 200
    # Added back, alice is a new membership: the token stays dead.
    readded = await server.http.put(f"/api/v1/sessions/{sid}/members/alice", json={"role": "owner"})
    assert readded.status_code == 200, readded.text
    assert (await server.http.get(me, headers=_bearer(carol))).status_code == 401


async def test_a_token_from_a_link_dies_when_its_maker_may_no_longer_mint_it(
    server: RunningServer,
) -> None:
    """A token from a link lives only while its maker may still make that link: alice,
    lowered to editor (no ``manage_members``) but still a member, kept the token carol
    exchanged from her link (only her removal killed it). Lowered, the token is refused on
    REST and its socket closes 4401; raised back, alice may mint it again, and it lives."""
    sid = await server.new_session({"alice": "owner", "carol": "editor"})
    minted = await _mint(server, sid, await server.token(sid, "alice"), user_id="carol")
    assert minted.status_code == 201, minted.text
    exchanged = await _exchange(server, minted.json()["secret"])
    assert exchanged.status_code == 200, exchanged.text
    carol = exchanged.json()["token"]
    me = f"/api/v1/sessions/{sid}/me"
    socket = await YClient.connect(server.ws_url, sid, carol)
    server.clients.append(socket)
    async with asyncio.timeout(10):
        await socket.synced.wait()

    alice = f"/api/v1/sessions/{sid}/members/alice"
    lowered = await server.http.put(alice, json={"role": "editor"})
    assert lowered.status_code == 200, lowered.text
    assert await socket.wait_closed() == 4401
    assert socket.ws.close_reason is not None and "alice" in socket.ws.close_reason
    refused = await server.http.get(me, headers=_bearer(carol))
    assert refused.status_code == 401, refused.text
    assert "may no longer" in refused.json()["error"]["message"]
    raised = await server.http.put(alice, json={"role": "owner"})
    assert raised.status_code == 200, raised.text
    assert (await server.http.get(me, headers=_bearer(carol))).status_code == 200


async def _taken(server: RunningServer, sid: str, maker: str, user_id: str) -> str:
    """The token ``maker`` takes from their own link for ``user_id`` ("testing the link")."""
    minted = await _mint(server, sid, await server.token(sid, maker), user_id=user_id)
    assert minted.status_code == 201, minted.text
    exchanged = await _exchange(server, minted.json()["secret"])
    assert exchanged.status_code == 200, exchanged.text
    return str(exchanged.json()["token"])


async def test_a_token_from_a_link_dies_once_its_member_is_known_another_way(
    server: RunningServer,
) -> None:
    """Review RM-1: alice exchanged her link for a fresh member herself and stayed that
    member after the real one signed in another way (the admin's token or link, their own
    link), opened side-threads there or was added to another session: she read their
    side-threads, listed their other sessions and posted as them. Such a token lives only
    while its link could still be exchanged: it is revoked once its member gets a token by
    any other way or joins another session; a link minted with it for oneself carries its
    maker, so it launders nothing."""
    sid = await server.new_session(
        {"alice": "owner", "carol": "editor", "dan": "editor", "erin": "owner"}
    )
    me = f"/api/v1/sessions/{sid}/me"
    carol = await _taken(server, sid, "alice", "carol")
    socket = await YClient.connect(server.ws_url, sid, carol)
    server.clients.append(socket)
    async with asyncio.timeout(10):
        await socket.synced.wait()
    assert (await server.http.get(me, headers=_bearer(carol))).status_code == 200
    real_carol = await server.token(sid, "carol")  # the admin lets the real carol in
    assert await socket.wait_closed() == 4401
    refused = await server.http.get(me, headers=_bearer(carol))
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"]
    posted = await server.http.post(
        f"/api/v1/sessions/{sid}/messages", json={"text": "I agree"}, headers=_bearer(carol)
    )
    assert posted.status_code == 401, posted.text
    assert (await server.http.get(me, headers=_bearer(real_carol))).status_code == 200

    dan = await _taken(server, sid, "alice", "dan")
    await server.new_session({"dan": "editor"}, title="dan's other session")
    listed = await server.http.get("/api/v1/me/sessions", headers=_bearer(dan))
    assert listed.status_code == 401, listed.text

    erin = await _taken(server, sid, "alice", "erin")
    own = await _mint(server, sid, erin, user_id="erin")  # a link of erin's own, by alice
    assert own.status_code == 201, own.text
    laundered = (await _exchange(server, own.json()["secret"])).json()["token"]
    assert (await server.http.get(me, headers=_bearer(laundered))).status_code == 200
    spare = await _mint(server, sid, laundered, user_id="erin")  # one more, kept for later
    assert spare.status_code == 201, spare.text
    by_admin = await _invite(server, sid, user_id="erin")  # the real erin, by the admin's link
    assert (await _exchange(server, by_admin["secret"])).status_code == 200
    for token in (erin, laundered):
        assert (await server.http.get(me, headers=_bearer(token))).status_code == 401
    assert (await _exchange(server, spare.json()["secret"])).status_code == 401
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    revoked = [r["data"] for r in audit if r["kind"] == "token" and "revoked" in r["data"]]
    assert sorted(r["user_id"] for r in revoked) == ["carol", "dan", "erin", "erin"]
    assert all(r["made_by"] == "alice" and "known another way" in r["reason"] for r in revoked)


async def test_a_token_from_a_link_dies_once_a_document_its_maker_may_not_read_reaches_it(
    server: RunningServer,
) -> None:
    """Review RW-2: olga (owner) took a token from her link for a fresh editor, fred; the
    admin then attached a document for editors, which olga may not read (404 to her own
    token), and fred's token read it (200): the reader lists were judged at membership
    changes only. Attaching a document judges the tokens from the session's links again."""
    sid = await server.new_session({"olga": "owner", "fred": "editor"})
    fred = await _taken(server, sid, "olga", "fred")
    added = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "hr", "text": "salaries", "readers": {"roles": ["editor"]}},
    )
    assert added.status_code == 201, added.text
    document = f"/api/v1/sessions/{sid}/documents/{added.json()['id']}"
    olga = await server.token(sid, "olga")
    assert (await server.http.get(document, headers=_bearer(olga))).status_code == 404
    refused = await server.http.get(document, headers=_bearer(fred))
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"]
    assert (await server.http.get(document)).status_code == 200  # the admin key reads it
    audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
    revoked = [r["data"] for r in audit if r["kind"] == "token" and "revoked" in r["data"]]
    assert [(r["user_id"], r["made_by"]) for r in revoked] == [("fred", "olga")]


async def test_a_link_minted_with_a_token_from_a_link_carries_that_tokens_maker(
    server: RunningServer,
) -> None:
    """Review RW-1: alice (owner) took fred's link herself, and with fred's token minted a
    link for gina and took that too; its maker was fred, so once the admin made alice a
    viewer fred's token died but gina's lived on as an owner, and with it alice made
    herself owner again. A link minted with a token from another member's link, for anyone,
    carries that token's maker: its tokens live while that maker may make the link."""
    sid = await server.new_session({"alice": "owner", "fred": "owner", "gina": "owner"})
    me = f"/api/v1/sessions/{sid}/me"
    fred = await _taken(server, sid, "alice", "fred")
    minted = await _mint(server, sid, fred, user_id="gina")
    assert minted.status_code == 201, minted.text
    spare = await _mint(server, sid, fred, user_id="gina")  # exchanged after the demotion
    gina = (await _exchange(server, minted.json()["secret"])).json()["token"]
    assert (await server.http.get(me, headers=_bearer(gina))).json()["role"] == "owner"
    members = f"/api/v1/sessions/{sid}/members"
    lowered = await server.http.put(f"{members}/alice", json={"role": "viewer"})
    assert lowered.status_code == 200, lowered.text
    for token in (fred, gina):
        refused = await server.http.get(me, headers=_bearer(token))
        assert refused.status_code == 401, refused.text
    raised = await server.http.put(
        f"{members}/alice", json={"role": "owner"}, headers=_bearer(gina)
    )
    assert raised.status_code == 401, raised.text
    assert (await _exchange(server, spare.json()["secret"])).status_code == 401
    listed = (await server.http.get(members)).json()["members"]
    assert {m["user_id"]: m["role"] for m in listed}["alice"] == "viewer"


async def test_a_token_from_a_link_dies_once_its_member_may_read_what_its_maker_may_not(
    server: RunningServer,
) -> None:
    """Review RM-1: alice, an owner denied document D, took a token from her link for a
    fresh editor; the admin later raised that member to owner, and with the token alice
    read D. A change of a member judges again the tokens from the links of the session
    (its reader lists included): the member raised past their maker, or the maker denied
    what the member reads, kills them."""
    sid = await server.new_session({"alice": "owner", "olga": "owner"})
    added = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "board", "text": "board minutes", "readers": {"roles": ["owner"]}},
    )
    assert added.status_code == 201, added.text
    document = f"/api/v1/sessions/{sid}/documents/{added.json()['id']}"
    members = f"/api/v1/sessions/{sid}/members"
    denied = {"role": "owner", "denials": [f"read:{added.json()['id']}"]}
    assert (await server.http.put(f"{members}/alice", json=denied)).status_code == 200
    for user in ("carol", "frank"):
        put = await server.http.put(f"{members}/{user}", json={"role": "editor"})
        assert put.status_code == 200, put.text
    carol = await _taken(server, sid, "alice", "carol")
    frank = await _taken(server, sid, "olga", "frank")
    for user in ("carol", "frank"):
        raised = await server.http.put(f"{members}/{user}", json={"role": "owner"})
        assert raised.status_code == 200, raised.text
    refused = await server.http.get(document, headers=_bearer(carol))
    assert refused.status_code == 401, refused.text
    assert (await server.http.get(document, headers=_bearer(frank))).status_code == 200
    assert (await server.http.put(f"{members}/olga", json=denied)).status_code == 200
    assert (await server.http.get(document, headers=_bearer(frank))).status_code == 401


def _hold_revocations(
    monkeypatch: pytest.MonkeyPatch, routes: Any
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``routes``' calls of ``revocations_in_force`` between a revocation's commit and
    its being in force in memory: set the first event when one is reached, go on once the
    second is set."""
    committed, release = asyncio.Event(), asyncio.Event()
    in_force = routes.revocations_in_force

    async def held(state: Any, revoked: Any, but: str = "") -> None:
        committed.set()
        await release.wait()
        await in_force(state, revoked, but)

    monkeypatch.setattr(routes, "revocations_in_force", held)
    return committed, release


async def test_a_command_with_a_links_token_revoked_not_yet_in_force_is_not_stored(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX37: attaching a document revoked fred's token from olga's link (as in RW-2); held
    between the revocation's commit and its being in force in the room's memory, a prompt
    fred sent with it meanwhile was judged by the members in memory and stored after the
    revocation had committed. It is judged at its commit by the token as stored."""
    sid = await server.new_session({"olga": "owner", "fred": "editor"})
    fred = await _taken(server, sid, "olga", "fred")
    committed, release = _hold_revocations(monkeypatch, access_routes)
    attach = asyncio.create_task(
        server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "hr", "text": "salaries", "readers": {"roles": ["editor"]}},
        )
    )
    try:
        await asyncio.wait_for(committed.wait(), 10)
        sent = await server.http.post(
            f"/api/v1/sessions/{sid}/prompts",
            json={"id": "p1", "text": "what do the editors earn?"},
            headers=_bearer(fred),
        )
    finally:
        release.set()
    assert (await attach).status_code == 201
    assert sent.status_code == 401, sent.text
    assert sent.json()["error"]["code"] == "unauthenticated"
    assert "revoked" in sent.json()["error"]["message"]
    transcript = (await server.http.get(f"/api/v1/sessions/{sid}/transcript")).json()
    assert transcript["messages"] == [], transcript


async def test_a_links_token_revoked_not_yet_in_force_lists_no_other_session(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RG-1: zed was added to another session, which revoked alice's token from her
    link for zed (RM-1) in the same commit; held between that commit and the revocation
    being in force in the first session's memory, her token listed zed's new session (its
    id, title and zed's role there), read from the store. The listing judges the token as
    stored in its own read."""
    sid = await server.new_session({"alice": "owner", "zed": "viewer"})
    other = await server.new_session({}, title="zed's private project")
    zed = await _taken(server, sid, "alice", "zed")
    listed = await server.http.get("/api/v1/me/sessions", headers=_bearer(zed))
    assert [s["id"] for s in listed.json()["sessions"]] == [sid]
    committed, release = _hold_revocations(monkeypatch, member_routes)
    added = asyncio.create_task(
        server.http.put(f"/api/v1/sessions/{other}/members/zed", json={"role": "editor"})
    )
    try:
        await asyncio.wait_for(committed.wait(), 10)
        listed = await server.http.get("/api/v1/me/sessions", headers=_bearer(zed))
    finally:
        release.set()
    assert (await added).status_code == 200
    assert listed.status_code == 401, listed.text
    assert listed.json()["error"]["code"] == "unauthenticated"
    assert "revoked" in listed.json()["error"]["message"]
    assert other not in listed.text


async def test_a_member_raised_as_a_document_is_attached_kills_the_links_token_it_reaches(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX37: fred, a viewer, took a token from olga's (owner's) link. The admin raised fred
    to editor while a document for editors, which olga may not read, was attached: the
    change judged the link's tokens by the reader lists read before its transaction, the
    attach by fred as a viewer, so neither revoked the token, and with it fred read what
    olga may not. Both are judged on the state their transactions see, under the
    session's lock: the one that commits second revokes it."""
    sid = await server.new_session({"olga": "owner", "fred": "viewer"})
    fred = await _taken(server, sid, "olga", "fred")
    store = server.app.state.parley.store
    reached, release = asyncio.Event(), asyncio.Event()
    change_member = store.change_member

    async def held(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await release.wait()
        return await change_member(*args, **kwargs)

    monkeypatch.setattr(store, "change_member", held)
    raised = asyncio.create_task(
        server.http.put(f"/api/v1/sessions/{sid}/members/fred", json={"role": "editor"})
    )
    document = await _attached_meanwhile(server, sid, reached, release)
    assert (await raised).status_code == 200
    olga = await server.token(sid, "olga")
    assert (await server.http.get(document, headers=_bearer(olga))).status_code == 404
    refused = await server.http.get(document, headers=_bearer(fred))
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"]


async def test_a_link_exchanged_as_a_document_is_attached_is_judged_with_it(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX37: olga (owner) minted a link for fred, a fresh editor. Exchanged while a
    document for editors, which olga may not read, was attached, the link was judged by
    the reader lists read before the exchange's transaction, and the attach found no
    token to revoke yet: the token read what olga may not. The exchange reads the reader
    lists in its transaction, under the session's lock: the link is dead."""
    sid = await server.new_session({"olga": "owner", "fred": "editor"})
    minted = await _mint(server, sid, await server.token(sid, "olga"), user_id="fred")
    assert minted.status_code == 201, minted.text
    reached, release = asyncio.Event(), asyncio.Event()
    redeem = InviteStore.redeem

    async def held(self: InviteStore, *args: Any, **kwargs: Any) -> Any:
        reached.set()
        await release.wait()
        return await redeem(self, *args, **kwargs)

    monkeypatch.setattr(InviteStore, "redeem", held)
    exchanged = asyncio.create_task(_exchange(server, minted.json()["secret"]))
    await _attached_meanwhile(server, sid, reached, release)
    answer = await exchanged
    assert answer.status_code == 401, answer.text  # (before: 200, and its token read it)


async def _attached_meanwhile(
    server: RunningServer, sid: str, reached: asyncio.Event, release: asyncio.Event
) -> str:
    """Once a call is held (``reached``), attach a document for editors (which an owner
    may not read), then let the call go on (``release``). The document's path."""
    try:
        await asyncio.wait_for(reached.wait(), 10)
        added = await server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "hr", "text": "salaries", "readers": {"roles": ["editor"]}},
        )
        assert added.status_code == 201, added.text
    finally:
        release.set()
    return f"/api/v1/sessions/{sid}/documents/{added.json()['id']}"
