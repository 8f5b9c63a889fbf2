"""Members' display names over REST (and where they show: the member list, the caller's own
row, transcripts, presence), and "my sessions" for a client token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.server.store import reads, rows
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.server.test_http_prompts import two_commands


def _as(server: RunningServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


async def test_display_name_is_set_kept_and_cleared(server: RunningServer) -> None:
    sid = await server.new_session({})
    url = f"/api/v1/sessions/{sid}/members/alice"
    put = await server.http.put(url, json={"role": "editor", "display_name": "Alice Martin"})
    assert put.status_code == 200, put.text
    assert put.json()["display_name"] == "Alice Martin"
    kept = await server.http.put(url, json={"role": "owner"})  # no name: the name stays
    assert kept.json()["display_name"] == "Alice Martin" and kept.json()["role"] == "owner"
    listed = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    assert listed[0]["display_name"] == "Alice Martin"
    cleared = await server.http.put(url, json={"role": "owner", "display_name": ""})
    assert cleared.json()["display_name"] == ""


@pytest.mark.parametrize("name", ["x" * 81, "two\nlines", "tab\there", "bell\x07", 42, ["Alice"]])
async def test_bad_display_names_are_refused(server: RunningServer, name: object) -> None:
    sid = await server.new_session({"alice": "editor"})
    put = await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor", "display_name": name}
    )
    assert put.status_code == 422, put.text
    assert put.json()["error"]["code"] == "invalid"
    async with _as(server, await server.token(sid, "alice")) as alice:
        patch = await alice.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": name})
    assert patch.status_code == 422, patch.text
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    assert members[0]["display_name"] == ""  # nothing half-written


async def test_me_reads_and_renames_only_the_caller(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "vera": "viewer"})
    async with _as(server, await server.token(sid, "vera")) as vera:
        me = await vera.get(f"/api/v1/sessions/{sid}/me")
        assert me.status_code == 200, me.text
        assert me.json()["user_id"] == "vera" and me.json()["role"] == "viewer"
        assert "prompt" not in me.json()["capabilities"]
        renamed = await vera.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": "Vera"})
        assert renamed.status_code == 200 and renamed.json()["display_name"] == "Vera"
        assert renamed.json()["role"] == "viewer"
        # Nothing but the name: a role in the body is refused, not applied.
        escalate = await vera.patch(
            f"/api/v1/sessions/{sid}/me", json={"display_name": "V", "role": "owner"}
        )
        assert escalate.status_code == 422
        assert (await vera.get(f"/api/v1/sessions/{sid}/me")).json()["role"] == "viewer"
        # Not as someone else: another member's user id or display name.
        await server.http.put(
            f"/api/v1/sessions/{sid}/members/alice",
            json={"role": "editor", "display_name": "Alice M"},
        )
        for taken in ("alice", "ALICE ", " alice m"):
            refused = await vera.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": taken})
            assert refused.status_code == 409, taken
        assert (await vera.get(f"/api/v1/sessions/{sid}/me")).json()["display_name"] == "Vera"
    # The admin key is no member.
    admin = await server.http.get(f"/api/v1/sessions/{sid}/me")
    assert admin.status_code == 403 and admin.json()["error"]["code"] == "forbidden"
    # A token acts in its own session only.
    other = await server.new_session({"vera": "owner"})
    async with _as(server, await server.token(sid, "vera")) as vera:
        elsewhere = await vera.get(f"/api/v1/sessions/{other}/me")
    assert elsewhere.status_code == 403


async def test_transcript_entries_carry_the_authors_display_name(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor", "display_name": "Alice M"}
    )
    for user in ("alice", "bob"):
        async with _as(server, await server.token(sid, user)) as client:
            posted = await client.post(f"/api/v1/sessions/{sid}/messages", json={"text": "hi"})
            assert posted.status_code == 202, posted.text
    entries = await server.transcript(sid)
    assert [(e["author"], e["author_name"]) for e in entries] == [
        ("alice", "Alice M"),
        ("bob", None),
    ]


async def test_my_sessions_lists_the_members_sessions_only(server: RunningServer) -> None:
    first = await server.new_session({"alice": "editor", "bob": "editor"}, title="One")
    second = await server.new_session({"alice": "viewer"}, title="Two")
    await server.new_session({"bob": "owner"}, title="Bob's")
    async with _as(server, await server.token(first, "alice")) as alice:
        mine = await alice.get("/api/v1/me/sessions")
        assert mine.status_code == 200, mine.text
        found = {(s["id"], s["title"], s["role"]) for s in mine.json()["sessions"]}
        assert found == {(first, "One", "editor"), (second, "Two", "viewer")}
        one = await alice.get("/api/v1/me/sessions", params={"limit": 1})
        assert [s["id"] for s in one.json()["sessions"]] == [second]  # newest first
        for bad in ("0", "201", "x", "-1"):
            refused = await alice.get("/api/v1/me/sessions", params={"limit": bad})
            assert refused.status_code == 422, bad
    admin = await server.http.get("/api/v1/me/sessions")
    assert admin.status_code == 403
    anonymous = await server.http.get("/api/v1/me/sessions", headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_my_sessions_refuses_a_revoked_token(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    created = await server.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "alice"})
    token, jti = created.json()["token"], created.json()["jti"]
    assert (await server.http.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")).status_code == 204
    async with _as(server, token) as alice:
        refused = await alice.get("/api/v1/me/sessions")
    assert refused.status_code == 401


async def test_a_member_token_lists_the_models(server: RunningServer) -> None:
    sid = await server.new_session({"vera": "viewer"})
    admin = (await server.http.get("/api/v1/models")).json()
    async with _as(server, await server.token(sid, "vera")) as vera:
        listed = await vera.get("/api/v1/models")
    assert listed.status_code == 200 and listed.json() == admin
    assert any(m["default"] for m in admin["models"])
    async with _as(server, "not-a-token") as nobody:
        assert (await nobody.get("/api/v1/models")).status_code == 401


async def test_who_manages_members_cannot_give_a_member_another_members_name(
    server: RunningServer,
) -> None:
    # ``PATCH …/me`` refuses another member's name; ``PUT …/members/{id}`` (one's own
    # row, or another's) is a second way to set the same display name.
    sid = await server.new_session({"olga": "owner", "alice": "editor", "bob": "editor"})
    async with _as(server, await server.token(sid, "olga")) as olga:
        for user_id, name in (("olga", "alice"), ("olga", " ALICE"), ("bob", "alice")):
            role = "owner" if user_id == "olga" else "editor"
            put = await olga.put(
                f"/api/v1/sessions/{sid}/members/{user_id}",
                json={"role": role, "display_name": name},
            )
            assert put.status_code == 409, (user_id, name, put.text)
            assert put.json()["error"]["code"] == "conflict"
        own = await olga.put(
            f"/api/v1/sessions/{sid}/members/olga", json={"role": "owner", "display_name": "Olga"}
        )
        assert own.status_code == 200, own.text
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    names = {m["user_id"]: m["display_name"] for m in members}
    assert names == {"olga": "Olga", "alice": "", "bob": ""}


async def test_my_sessions_leaves_out_sessions_the_member_may_not_read(
    server: RunningServer,
) -> None:
    first = await server.new_session({"alice": "editor"}, title="One")
    suspended = await server.new_session({"alice": "editor"}, title="Layoffs plan")
    put = await server.http.put(
        f"/api/v1/sessions/{suspended}/members/alice",
        json={"role": "editor", "denials": ["read_session"]},
    )
    assert put.status_code == 200, put.text
    async with _as(server, await server.token(first, "alice")) as alice:
        mine = await alice.get("/api/v1/me/sessions", params={"limit": 1})
        assert mine.status_code == 200, mine.text
        # Not its title, not that it is there: what ``GET /sessions/{id}`` refuses her.
        assert [(s["id"], s["title"]) for s in mine.json()["sessions"]] == [(first, "One")]


async def test_renaming_oneself_spends_the_members_command_budget(tmp_path: Path) -> None:
    # Each rename is a write that wakes every reader of the session: as bounded as the
    # member's commands.
    async with serve_in_process(two_commands(tmp_path)) as server:
        sid = await server.new_session({"vera": "viewer"})
        async with _as(server, await server.token(sid, "vera")) as vera:
            answers = [
                await vera.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": f"V{n}"})
                for n in range(4)
            ]
        assert [a.status_code for a in answers] == [200, 200, 429, 429]
        assert answers[-1].json()["error"]["code"] == "rate_limited"
        members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
        assert members[0]["display_name"] == "V1"


async def test_two_members_racing_for_one_name_do_not_both_get_it(
    server: RunningServer,
) -> None:
    """Review (an impersonation path): two members renaming themselves to the same name at
    once both got it, 10 of 10 (the check read the room before either write). The name is
    checked under the session's lock now: one gets it, the other 409."""
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    async with (
        _as(server, await server.token(sid, "alice")) as alice,
        _as(server, await server.token(sid, "bob")) as bob,
    ):
        me = f"/api/v1/sessions/{sid}/me"
        answers = await asyncio.gather(
            alice.patch(me, json={"display_name": "Olga (owner)"}),
            bob.patch(me, json={"display_name": "olga (owner) "}),
        )
    assert sorted(a.status_code for a in answers) == [200, 409]
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    named = [
        m["user_id"] for m in members if m["display_name"].strip().casefold() == "olga (owner)"
    ]
    assert len(named) == 1


async def test_a_manager_may_not_add_a_member_named_as_another(server: RunningServer) -> None:
    """Review: a member who manages members could add a new user whose user id is another
    member's display name (an impersonation path). Review K2: the admin key could, so the
    name taken first stood beside the member added after; nobody may now."""
    sid = await server.new_session({"olga": "owner", "bob": "editor"})
    named = await server.http.put(
        f"/api/v1/sessions/{sid}/members/bob", json={"role": "editor", "display_name": "Boss"}
    )
    assert named.is_success
    async with _as(server, await server.token(sid, "olga")) as olga:
        added = await olga.put(f"/api/v1/sessions/{sid}/members/boss", json={"role": "viewer"})
        assert added.status_code == 409 and added.json()["error"]["code"] == "conflict"
        other = await olga.put(f"/api/v1/sessions/{sid}/members/carol", json={"role": "viewer"})
        assert other.is_success
    by_admin = await server.http.put(
        f"/api/v1/sessions/{sid}/members/boss", json={"role": "viewer"}
    )
    assert by_admin.status_code == 409 and by_admin.json()["error"]["code"] == "conflict"


async def test_a_name_taken_first_keeps_out_the_member_it_names(server: RunningServer) -> None:
    """Review K2: eve named herself "carol", then the admin added the real carol: two
    authors read "carol" in every transcript, and the owner's invite picker listed two
    "carol". The rule holds whichever comes first: carol is not added while a member's
    name reads as her user id, nor under a name another member holds, by anyone."""
    sid = await server.new_session({"eve": "editor", "bob": "editor"})
    async with _as(server, await server.token(sid, "eve")) as eve:
        taken = await eve.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": "Carol"})
        assert taken.is_success
    members = f"/api/v1/sessions/{sid}/members"
    refused = await server.http.put(f"{members}/carol", json={"role": "editor"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert "another member's name" in refused.json()["error"]["message"]
    named = await server.http.put(
        f"{members}/dan", json={"role": "editor", "display_name": "carol"}
    )
    assert named.status_code == 409 and named.json()["error"]["code"] == "conflict"
    renamed = await server.http.put(
        f"{members}/bob", json={"role": "editor", "display_name": "CAROL"}
    )
    assert renamed.status_code == 409
    listed = await server.http.get(members)
    assert {m["user_id"] for m in listed.json()["members"]} == {"eve", "bob"}
    cleared = await server.http.put(f"{members}/eve", json={"role": "editor", "display_name": ""})
    assert cleared.is_success
    assert (await server.http.put(f"{members}/carol", json={"role": "editor"})).is_success


async def test_a_former_members_user_id_stays_theirs_while_they_wrote_in_the_session(
    server: RunningServer,
) -> None:
    """Review FK: bob wrote, then was removed; his messages stay in the transcript under
    ``bob``. Mallory could then rename herself "bob", or be named or added so, and her
    messages read as his to the members and the model. His user id stays reserved, by any
    path that sets a name; bob himself comes back under it."""
    sid = await server.new_session({"bob": "editor", "mallory": "editor", "olga": "owner"})
    async with _as(server, await server.token(sid, "bob")) as bob:
        posted = await bob.post(f"/api/v1/sessions/{sid}/messages", json={"text": "ship it"})
        assert posted.status_code == 202, posted.text
    members = f"/api/v1/sessions/{sid}/members"
    assert (await server.http.delete(f"{members}/bob")).status_code == 204
    async with _as(server, await server.token(sid, "mallory")) as mallory:
        for taken in ("bob", "BOB", " Bob "):
            refused = await mallory.patch(
                f"/api/v1/sessions/{sid}/me", json={"display_name": taken}
            )
            assert refused.status_code == 409, (taken, refused.text)
            assert refused.json()["error"]["code"] == "conflict"
        assert (
            await mallory.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": "Mal"})
        ).is_success
    async with _as(server, await server.token(sid, "olga")) as olga:
        named = await olga.put(f"{members}/mallory", json={"role": "editor", "display_name": "Bob"})
        assert named.status_code == 409, named.text
        added = await olga.put(f"{members}/dan", json={"role": "viewer", "display_name": "bob"})
        assert added.status_code == 409, added.text
    by_admin = await server.http.put(f"{members}/BOB", json={"role": "viewer"})  # reads as bob
    assert by_admin.status_code == 409 and by_admin.json()["error"]["code"] == "conflict"
    listed = (await server.http.get(members)).json()["members"]
    assert {m["user_id"]: m["display_name"] for m in listed} == {"mallory": "Mal", "olga": ""}
    back = await server.http.put(f"{members}/bob", json={"role": "editor", "display_name": "Bob"})
    assert back.is_success, back.text


# Review: names were refused only C0 controls and DEL; these showed as nothing, broke a
# line, or turned the rest of the name around (U+202E).
UNSEEN = (
    "al\x85ice",  # C1 control: a line break to many readers
    "al\x9bice",  # C1 control: a terminal's escape
    "al\u2028ice",  # line separator
    "al\u2029ice",  # paragraph separator
    "alice\u200b",  # zero-width space
    "al\u00adice",  # soft hyphen
    "\u202eecila",  # right-to-left override: shows "alice"
    "\u2066alice\u2069",  # bidirectional isolate
    "\u200ealice",  # left-to-right mark
    "\ufeffalice",  # zero-width no-break space
    "alice\u2060",  # word joiner
    "alice\U000e0041",  # tag character
    "alice\u200d",  # a joiner joining nothing
    "\u3164",  # Hangul filler: a letter shown as nothing
    "al\u034fice",  # combining grapheme joiner: a mark shown as nothing
    "alice\ue000",  # private use
    "alice\ufdd0",  # noncharacter
    " ",  # blanks alone: shown as nobody
    "\u2800\u3000 ",  # a braille blank, an ideographic space
)


async def test_names_with_characters_people_cannot_see_are_refused(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    async with _as(server, await server.token(sid, "alice")) as alice:
        for name in UNSEEN:
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/members/alice",
                json={"role": "editor", "display_name": name},
            )
            assert put.status_code == 422, (name, put.text)
            assert put.json()["error"]["code"] == "invalid", name
            assert "display_name" in put.json()["error"]["message"], name
            patch = await alice.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": name})
            assert patch.status_code == 422, (name, patch.text)
            assert patch.json()["error"]["code"] == "invalid", name
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    assert members[0]["display_name"] == ""


async def test_names_of_any_script_and_emoji_are_taken(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor"})
    named = (
        "José Ñúñez-Zoë",
        "李小龍",
        "Анна Петрова",
        "😀 Dan",
        "❤️ Ann",  # with its variation selector
        "👩🏽\u200d💻 Dev",  # an emoji joined by a ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with its ZWNJ
        "Anne  Marie de la Tour",
        "",
    )
    async with _as(server, await server.token(sid, "alice")) as alice:
        for name in named:
            patch = await alice.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": name})
            assert patch.status_code == 200, (name, patch.text)
            assert patch.json()["display_name"] == name  # stored as sent
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/members/alice",
                json={"role": "editor", "display_name": name},
            )
            assert put.status_code == 200, (name, put.text)


async def test_a_name_that_reads_as_another_members_is_refused(server: RunningServer) -> None:
    """Review: ``alice\\u200b``, ``al\\u00adice`` or ``alice\\ufe0f`` passed for ``alice``
    (compared only case-folded and stripped). Names are compared folded now: NFKC,
    invisible characters dropped, case folded, spaces collapsed."""
    sid = await server.new_session({"olga": "owner", "alice": "editor", "vera": "viewer"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/olga",
        json={"role": "owner", "display_name": "Olga Owner"},
    )
    alikes = (
        "alice\ufe0f",  # variation selector
        "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
        "alice\u2800",  # braille blank
        "\u2134lga Owner",  # script small o
        "olga  owner",  # two spaces
        "Olga\u3000Owner",  # ideographic space
        "Olga\u00a0Owner",  # no-break space
        "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e",  # mathematical bold
        "\u1d3clga Owner",  # modifier letter capital O
        "\u041elga Owner",  # Cyrillic capital O (FX59: letters that look alike)
        "\u0430lice",  # Cyrillic a
        "\u03b1lic\u0435",  # Greek alpha, Cyrillic e
    )
    async with (
        _as(server, await server.token(sid, "vera")) as vera,
        _as(server, await server.token(sid, "olga")) as olga,
    ):
        me = f"/api/v1/sessions/{sid}/me"
        for name in alikes:
            refused = await vera.patch(me, json={"display_name": name})
            assert refused.status_code == 409, (name, refused.text)
            assert refused.json()["error"]["code"] == "conflict", name
            # And as the one who manages members names another.
            put = await olga.put(
                f"/api/v1/sessions/{sid}/members/vera",
                json={"role": "viewer", "display_name": name},
            )
            assert put.status_code == 409, (name, put.text)
        own = await vera.patch(me, json={"display_name": "Vera"})
        assert own.status_code == 200, own.text
    members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
    names = {m["user_id"]: m["display_name"] for m in members}
    assert names == {"olga": "Olga Owner", "alice": "", "vera": "Vera"}


async def test_a_name_that_reads_as_a_speaker_the_server_names_is_refused(
    server: RunningServer,
) -> None:
    """FX59: ``Assistant``, ``admin``, ``Parley``, ``server`` or ``system`` (in another case,
    with look-alike letters) were taken as display names, and as new members' user ids,
    which the model is told: a member could pose as the model or the server. Refused
    ``reserved_name`` (422) on every path that sets one, nothing written."""
    sid = await server.new_session({"olga": "owner", "vera": "viewer"})
    members = f"/api/v1/sessions/{sid}/members"
    async with (
        _as(server, await server.token(sid, "vera")) as vera,
        _as(server, await server.token(sid, "olga")) as olga,
    ):
        for name in ("Assistant", "\u0410SSISTANT", "P\u0430rley", "s e r v e r", "System"):
            refused = await vera.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": name})
            assert refused.status_code == 422, (name, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "reserved_name", error
            assert error["details"][0]["at"] == "display_name", error
            put = await olga.put(f"{members}/vera", json={"role": "viewer", "display_name": name})
            assert (put.status_code, put.json()["error"]["code"]) == (422, "reserved_name")
        for user_id in ("Assistant", "system", "PARLEY"):  # a new member's user id
            added = await server.http.put(f"{members}/{user_id}", json={"role": "viewer"})
            assert added.status_code == 422, (user_id, added.text)
            error = added.json()["error"]
            assert (error["code"], error["details"][0]["at"]) == ("reserved_name", "user_id")
        own = await vera.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": "Vera"})
        assert own.status_code == 200, own.text
    listed = (await server.http.get(members)).json()["members"]
    assert {m["user_id"]: m["display_name"] for m in listed} == {"olga": "", "vera": "Vera"}


async def test_a_user_id_of_a_speakers_role_word_is_refused_from_an_owners_token(
    server: RunningServer,
) -> None:
    """Review RN-1: an owner added ``server``, ``system``, ``parley``, ``moderator``,
    ``operator``, ``assistant`` and ``ADMIN`` with their client token, and minted invite
    links for them: each wrote to the model under a line that read as the server's."""
    sid = await server.new_session({"owen": "owner"})
    members = f"/api/v1/sessions/{sid}/members"
    refused = ("server", "system", "parley", "moderator", "operator", "assistant", "Admin")
    async with _as(server, await server.token(sid, "owen")) as owen:
        for user_id in (*refused, "ADMIN", "Owner", "adrnin", "ParIey"):
            added = await owen.put(f"{members}/{user_id}", json={"role": "editor"})
            assert added.status_code == 422, (user_id, added.text)
            error = added.json()["error"]
            assert (error["code"], error["details"][0]["at"]) == ("reserved_name", "user_id")
            invite = await owen.post(
                f"/api/v1/sessions/{sid}/invites", json={"user_id": user_id, "ttl_seconds": 60}
            )
            assert invite.status_code == 409, invite.text  # no member: no link
    listed = (await server.http.get(members)).json()["members"]
    assert [m["user_id"] for m in listed] == ["owen"]


async def test_a_user_id_that_looks_like_another_members_is_refused(server: RunningServer) -> None:
    """Review RN-3: ``aIice`` (a capital i) beside ``alice`` and ``rnallory`` beside
    ``mallory`` were added and told to the model as other people. Compared by Unicode's
    confusables (TR39) as ``ALICE`` is by letter case: 409, whoever adds them, in either
    order, and beside a former member whose messages stay in the transcript."""
    sid = await server.new_session({"owen": "owner", "alice": "editor", "rnallory": "editor"})
    members = f"/api/v1/sessions/{sid}/members"
    posted = await server.http.post(
        f"/api/v1/sessions/{sid}/messages", json={"text": "hi", "as_user": "alice"}
    )
    assert posted.status_code in (200, 201, 202), posted.text
    async with _as(server, await server.token(sid, "owen")) as owen:
        for user_id in ("aIice", "a1ice", "mallory"):
            added = await owen.put(f"{members}/{user_id}", json={"role": "editor"})
            assert (added.status_code, added.json()["error"]["code"]) == (409, "conflict")
            assert "looks like" in added.json()["error"]["message"], added.text
        by_admin = await server.http.put(f"{members}/AIice", json={"role": "viewer"})
        assert by_admin.status_code == 409, by_admin.text
        assert (await owen.delete(f"{members}/alice")).status_code in (200, 204)
        former = await owen.put(f"{members}/aIice", json={"role": "editor"})
        assert former.status_code == 409, former.text  # alice's message reads as hers
        assert (await owen.put(f"{members}/alicia", json={"role": "editor"})).status_code == 200
    listed = (await server.http.get(members)).json()["members"]
    assert sorted(m["user_id"] for m in listed) == ["alicia", "owen", "rnallory"]


async def test_a_rename_reads_and_folds_as_much_in_a_session_of_200_as_of_10(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R4-3: a rename folded every member's user id and name to find it free, then
    read every member again to put it in force (80 ms at 600 members, within the command
    budget). It folds only the names that may read alike (found by their key) and reads
    back the renamed member alone: the same in a session of 10 members as of 200."""
    folds, rows_read = [0], [0]
    fold, row_of = rows.read_name, rows.member_row

    def counted_fold(name: str) -> str:
        folds[0] += 1
        return fold(name)

    def counted_row(row: Any) -> Any:
        rows_read[0] += 1
        return row_of(row)

    monkeypatch.setattr(rows, "read_name", counted_fold)
    monkeypatch.setattr(rows, "member_row", counted_row)
    monkeypatch.setattr(reads, "member_row", counted_row)
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        costs = {}
        for count in (10, 200):
            sid = await server.new_session({"vic": "viewer", "ann": "viewer"})
            for i in range(count - 2):
                url = f"/api/v1/sessions/{sid}/members/m{i}"
                assert (await server.http.put(url, json={"role": "viewer"})).is_success
            async with _as(server, await server.token(sid, "vic")) as vic:
                folds[0] = rows_read[0] = 0
                renamed = await vic.patch(f"/api/v1/sessions/{sid}/me", json={"display_name": "V"})
                assert renamed.status_code == 200, renamed.text
                costs[count] = folds[0], rows_read[0]
                taken = await vic.patch(
                    f"/api/v1/sessions/{sid}/me", json={"display_name": "\uff21NN"}
                )
                assert taken.status_code == 409, taken.text  # still compared folded
                me = (await vic.get(f"/api/v1/sessions/{sid}/me")).json()
                assert me["display_name"] == "V"
        assert costs[200] == costs[10]
        assert costs[10][1] <= 3  # the member, read in the write and read back


async def test_my_sessions_read_on_by_cursor_lists_each_once_as_sessions_come_and_go(
    server: RunningServer,
) -> None:
    """Review RY-7: ``/me/sessions`` gave at most 200, newest first, with no way on: a
    member of more sessions could never list the oldest, and ``?offset=``/``?cursor=``
    were ignored (page one again). A page's ``next_cursor`` is where its last session is:
    read on from it, each session is listed once, newest first, though sessions are
    created (listed on no later page: they are newer) and deleted between pages."""
    made = [await server.new_session({"roamer": "viewer"}, title=f"s{n}") for n in range(7)]
    await server.new_session({"other": "editor"})  # not roamer's
    async with _as(server, await server.token(made[0], "roamer")) as roamer:
        every = (await roamer.get("/api/v1/me/sessions")).json()
        assert [s["id"] for s in every["sessions"]] == made[::-1]
        assert every["next_cursor"] is None
        seen: list[str] = []
        query: dict[str, Any] = {"limit": 2}
        for turn in range(20):  # bounded: far more pages than there are
            page = await roamer.get("/api/v1/me/sessions", params=query)
            assert page.status_code == 200, page.text
            seen += [s["id"] for s in page.json()["sessions"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
            query = {"limit": 2, "cursor": cursor}
            await server.new_session({"roamer": "editor"}, title=f"new{turn}")
            if turn == 1:  # one not listed yet
                assert (await server.http.delete(f"/api/v1/sessions/{made[1]}")).status_code == 204
        expected = [sid for sid in made[::-1] if sid != made[1]]
        assert seen == expected  # none skipped, none twice, none new
        for bad in ({"cursor": "nope!"}, {"cursor": "bm9wZQ"}, {"offset": "2"}):
            refused = await roamer.get("/api/v1/me/sessions", params=bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["error"]["code"] == "invalid"
