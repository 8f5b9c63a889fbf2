"""Presence: awareness bookkeeping for one session, fed encoded updates by hand."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session import presence as presence_module
from parley.session.errors import Forbidden, TooLarge
from parley.session.presence import (
    KEEP_LEFT_S,
    MAX_CLIENTS_PER_SOCKET,
    REMOTE_STALE_S,
    LeftClient,
    Presence,
)
from parley.session.yprotocol import (
    MAX_CLOCK,
    MAX_SAFE_INTEGER,
    AwarenessState,
    ClockOutOfRange,
    ProtocolError,
    StateNotAnObject,
    decode_awareness_update,
    encode_awareness_update,
)

ALICE_SOCKET = "socket-a"
BOB_SOCKET = "socket-b"


def update(*states: tuple[int, int, dict[str, Any] | None]) -> bytes:
    return encode_awareness_update([AwarenessState(*s) for s in states])


def relayed(raw: bytes | None) -> list[AwarenessState]:
    assert raw is not None
    return decode_awareness_update(raw)


def stamped(state: dict[str, Any], user_id: str) -> dict[str, Any]:
    return {**state, "parley": {"user_id": user_id}}


def test_relay_stamps_the_authenticated_user() -> None:
    presence = Presence()
    out = presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"cursor": 3, "name": "Al"})))
    assert relayed(out) == [AwarenessState(11, 1, stamped({"cursor": 3, "name": "Al"}, "alice"))]
    assert presence.users() == ["alice"]
    assert presence.owned_by(ALICE_SOCKET) == 1


def test_a_client_cannot_forge_its_stamp() -> None:
    presence = Presence()
    forged = {"parley": {"user_id": "owner"}, "name": "x"}
    out = presence.apply(ALICE_SOCKET, "mallory", update((11, 1, forged)))
    assert relayed(out)[0].state == {"name": "x", "parley": {"user_id": "mallory"}}
    assert presence.users() == ["mallory"]


def test_the_stamp_carries_the_members_display_name() -> None:
    presence = Presence()
    forged = {"parley": {"user_id": "owner", "display_name": "The Owner"}}
    out = presence.apply(ALICE_SOCKET, "alice", update((11, 1, forged)), "Alice M")
    assert relayed(out)[0].state == {"parley": {"user_id": "alice", "display_name": "Alice M"}}
    # No name: no display_name key, and a forged one is gone too.
    out = presence.apply(BOB_SOCKET, "bob", update((12, 1, forged)), None)
    assert relayed(out)[0].state == {"parley": {"user_id": "bob"}}


def test_several_clients_in_one_update_are_all_relayed() -> None:
    presence = Presence()
    out = presence.apply(ALICE_SOCKET, "alice", update((1, 1, {"a": 1}), (2, 5, {"b": 2})))
    assert relayed(out) == [
        AwarenessState(1, 1, stamped({"a": 1}, "alice")),
        AwarenessState(2, 5, stamped({"b": 2}, "alice")),
    ]


def test_a_socket_may_not_speak_for_another_sockets_client() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"name": "Al"})))
    for hostile in [(11, 2, {"name": "Bob was here"}), (11, 2, None)]:
        # Ignored, not refused: stock clients echo the states they receive.
        assert relayed(presence.apply(BOB_SOCKET, "bob", update(hostile))) == []
    snapshot = relayed(presence.snapshot())
    assert snapshot == [AwarenessState(11, 1, stamped({"name": "Al"}, "alice"))]
    assert presence.owned_by(BOB_SOCKET) == 0


def test_a_socket_may_introduce_only_so_many_clients() -> None:
    presence = Presence()
    with pytest.raises(Forbidden):
        presence.apply(ALICE_SOCKET, "alice", update(*[(c, 1, {}) for c in range(9)]))
    own = update(*[(cid, 1, {}) for cid in range(MAX_CLIENTS_PER_SOCKET)])
    presence.apply(ALICE_SOCKET, "alice", own)
    # Known clients keep updating; other sockets are not affected.
    presence.apply(ALICE_SOCKET, "alice", update((0, 2, {"x": 1})))
    presence.apply(BOB_SOCKET, "bob", update((99, 1, {})))


def test_a_client_a_socket_relays_beside_its_own_is_not_taken_as_its() -> None:
    """Review RH-3: two members' stock clients in one browser share awareness over
    y-websocket's BroadcastChannel, and alice's relays bob's state before bob's socket is
    open. Her socket took bob's client id as its own: bob was shown stamped alice, his own
    frames were dropped as echoes, and once her tab closed his id was kept as hers for a
    day. A socket that speaks for a client of its own introduces no other."""
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"name": "Al"})))
    assert relayed(presence.apply(ALICE_SOCKET, "alice", update((21, 1, {"name": "Bo"})))) == []
    assert not presence.would_show(ALICE_SOCKET, "alice", update((21, 2, {"name": "Bo"})))
    assert presence.owned_by(ALICE_SOCKET) == 1
    with pytest.raises(TooLarge):  # one nobody could show is refused, as her own would be
        presence.apply(ALICE_SOCKET, "alice", update((22, 1, {"blob": "x" * 16_400})))
    out = presence.apply(BOB_SOCKET, "bob", update((21, 1, {"name": "Bo"})))
    assert relayed(out) == [AwarenessState(21, 1, stamped({"name": "Bo"}, "bob"))]
    # Her tab closes: bob's renewals are still his, and shown.
    assert relayed(presence.drop(ALICE_SOCKET, now=1.0)) == [AwarenessState(11, 2, None)]
    out = presence.apply(BOB_SOCKET, "bob", update((21, 2, {"name": "Bo"})), now=17.0)
    assert relayed(out) == [AwarenessState(21, 2, stamped({"name": "Bo"}, "bob"))]
    assert presence.users() == ["bob"]


def test_a_renewal_of_known_clients_scans_no_other_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a socket speaks for a client already is a scan of every client of the
    session: asked of an update naming a client not known, never of a cursor's renewals
    or echoes, which would each cost as many steps as the session has clients."""
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"name": "Al"})))
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"name": "Bo"})))
    scans = []
    owned_by = presence.owned_by
    monkeypatch.setattr(presence, "owned_by", lambda owner: scans.append(owner) or owned_by(owner))
    for clock in range(2, 6):
        presence.apply(ALICE_SOCKET, "alice", update((11, clock, {"x": clock}), (21, 1, {})))
    assert scans == []
    presence.apply(ALICE_SOCKET, "alice", update((31, 1, {"name": "?"})))
    assert scans and set(scans) == {ALICE_SOCKET}


def test_stale_clocks_are_ignored() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": "new"})))
    out = presence.apply(ALICE_SOCKET, "alice", update((11, 4, {"v": "old"})))
    assert relayed(out) == []
    assert relayed(presence.snapshot()) == [AwarenessState(11, 5, stamped({"v": "new"}, "alice"))]


def test_a_stale_state_is_skipped_but_fresh_ones_in_the_same_update_pass() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((1, 5, {"v": 1}), (2, 1, {"v": 1})))
    out = presence.apply(ALICE_SOCKET, "alice", update((1, 3, {"v": 0}), (2, 2, {"v": 2})))
    assert relayed(out) == [AwarenessState(2, 2, stamped({"v": 2}, "alice"))]


def test_an_equal_clock_is_relayed_as_a_keepalive() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": 1})))
    out = presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": 1})))
    assert relayed(out) == [AwarenessState(11, 5, stamped({"v": 1}, "alice"))]


def test_drop_announces_departure_with_the_next_clock() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": 1}), (12, 9, {"v": 2})))
    presence.apply(BOB_SOCKET, "bob", update((21, 3, {"v": 3})))
    left = relayed(presence.drop(ALICE_SOCKET))
    assert sorted(left, key=lambda s: s.client_id) == [
        AwarenessState(11, 6, None),
        AwarenessState(12, 10, None),
    ]
    assert presence.owned_by(ALICE_SOCKET) == 0
    assert presence.drop(ALICE_SOCKET) is None
    assert presence.users() == ["bob"]
    assert relayed(presence.snapshot()) == [AwarenessState(21, 3, stamped({"v": 3}, "bob"))]


def test_drop_of_an_unknown_socket_says_nothing() -> None:
    assert Presence().drop(ALICE_SOCKET) is None


def test_a_dropped_client_id_can_be_reclaimed_by_a_new_socket() -> None:
    # A reconnecting browser keeps its Yjs client id.
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": 1})))
    presence.drop(ALICE_SOCKET)
    out = presence.apply("socket-a2", "alice", update((11, 7, {"v": 2})))
    assert relayed(out) == [AwarenessState(11, 7, stamped({"v": 2}, "alice"))]


def test_snapshot_excludes_clients_that_left() -> None:
    presence = Presence()
    assert presence.snapshot() is None
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"v": 1})))
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"v": 2})))
    out = presence.apply(BOB_SOCKET, "bob", update((21, 2, None)))  # bob closes his tab
    assert relayed(out) == [AwarenessState(21, 2, None)]
    assert relayed(presence.snapshot()) == [AwarenessState(11, 1, stamped({"v": 1}, "alice"))]
    assert presence.users() == ["alice"]
    presence.drop(ALICE_SOCKET)
    assert presence.snapshot() is None
    assert presence.users() == []


def test_an_update_too_large_to_relay_is_refused() -> None:
    presence = Presence(max_state_bytes=100)
    big = update((1, 1, {"pad": "x" * (100 * MAX_CLIENTS_PER_SOCKET)}))
    with pytest.raises(TooLarge) as info:
        presence.apply(ALICE_SOCKET, "alice", big)
    assert info.value.code == "too_large"
    assert presence.snapshot() is None


def test_an_echo_of_every_state_present_is_not_too_large() -> None:
    """Review (stock clients): a stock client echoes the greeting it is sent, every state
    present, in one frame; ten members' legal states were past the bound of a socket's own
    states, judged before the echoes were told apart, and refused ``too_large``. What the
    socket paid as echoes (``echo_bytes``) is allowed beyond that bound, and the echo shows
    nothing; past it, or for a socket's own states, the bound holds."""
    presence = Presence(max_state_bytes=100)
    for n in range(MAX_CLIENTS_PER_SOCKET + 2):
        presence.apply(f"socket-{n}", f"user-{n}", update((n, 1, {"pad": "x" * 50})))
    presence.flush()
    greeting = presence.snapshot()
    assert greeting is not None and len(greeting) > presence.max_update_bytes()
    with pytest.raises(TooLarge):
        presence.apply(ALICE_SOCKET, "alice", greeting)  # as before: charged whole
    assert not presence.would_show(ALICE_SOCKET, "alice", greeting, echo_bytes=len(greeting))
    assert relayed(presence.apply(ALICE_SOCKET, "alice", greeting, echo_bytes=len(greeting))) == []
    assert presence.flush() is None
    # A socket that pretends to echo shows no more of its own than before.
    paid = 200
    own = update(*[(100 + n, 1, {"pad": "y" * 50}) for n in range(MAX_CLIENTS_PER_SOCKET + 1)])
    assert len(own) <= presence.max_update_bytes(paid)
    with pytest.raises(Forbidden):
        presence.apply(ALICE_SOCKET, "alice", own, echo_bytes=paid)
    with pytest.raises(TooLarge):
        presence.apply(ALICE_SOCKET, "alice", update((100, 1, {"pad": "y" * 200})), echo_bytes=paid)
    unpaid = b"\x00" * (presence.max_update_bytes(paid) + 1)  # not an update at all
    with pytest.raises(TooLarge):  # refused unread: past its bound with what was paid
        presence.apply(ALICE_SOCKET, "alice", unpaid, echo_bytes=paid)
    assert presence.owned_by(ALICE_SOCKET) == 0


def test_a_state_too_large_once_stamped_is_refused() -> None:
    presence = Presence(max_state_bytes=100)
    fits = {"pad": "x" * 40}
    presence.apply(ALICE_SOCKET, "alice", update((1, 1, fits)))
    with pytest.raises(TooLarge):
        presence.apply(ALICE_SOCKET, "alice", update((1, 2, {"pad": "x" * 90})))
    assert relayed(presence.snapshot()) == [AwarenessState(1, 1, stamped(fits, "alice"))]


def test_a_state_is_measured_as_it_is_relayed() -> None:
    """Review: a 12,007-byte state was refused under the documented 16,384, measured as
    ``json.dumps`` spaces it out (a stock client is sent no error: it never showed)."""
    state = {"a": [0] * 7_997}
    sent = json.dumps(state, separators=(",", ":"))
    assert 16_000 <= len(sent) < 16_100
    presence = Presence()  # 16,384 bytes
    out = presence.apply(BOB_SOCKET, "bob", update((7, 1, state)))
    assert relayed(out) == [AwarenessState(7, 1, stamped(state, "bob"))]
    # The limit is what goes out, stamp included, to the byte.
    stamped_bytes = len(json.dumps(stamped(state, "bob"), separators=(",", ":")))
    assert Presence(max_state_bytes=stamped_bytes).apply(BOB_SOCKET, "bob", update((7, 1, state)))
    with pytest.raises(TooLarge):
        Presence(max_state_bytes=stamped_bytes - 1).apply(BOB_SOCKET, "bob", update((7, 1, state)))


def test_a_null_state_is_never_too_large() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((1, 1, {})))
    presence.max_state_bytes = 10
    out = presence.apply(ALICE_SOCKET, "alice", update((1, 2, None)))
    assert relayed(out) == [AwarenessState(1, 2, None)]


def test_malformed_updates_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Presence().apply(ALICE_SOCKET, "alice", b"\x01\x05")


def test_a_refused_update_changes_nothing() -> None:
    # The second state is too large: the whole update is refused, so the first must not be
    # recorded either (it was never relayed, yet would show up in snapshots).
    presence = Presence(max_state_bytes=200)
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"v": "bob"})))
    with pytest.raises(TooLarge):
        presence.apply(
            ALICE_SOCKET, "alice", update((11, 1, {"v": "al"}), (12, 1, {"v": "x" * 300}))
        )
    assert presence.owned_by(ALICE_SOCKET) == 0
    assert relayed(presence.snapshot()) == [AwarenessState(21, 1, stamped({"v": "bob"}, "bob"))]


def test_echoes_of_other_sockets_states_are_skipped_not_relayed() -> None:
    presence = Presence()
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"v": "bob"})))
    out = presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"v": "al"}), (21, 1, {"v": "bob"})))
    assert relayed(out) == [AwarenessState(11, 1, stamped({"v": "al"}, "alice"))]


def is_strict_json(text: str) -> bool:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


def test_a_state_that_is_not_an_object_is_refused_and_kept_nowhere() -> None:
    """Review RE-3: a stock client's ``setLocalState(5)`` (or a string, an array, a
    boolean) is refused ``invalid``, not malformed: nothing of it is kept or relayed."""
    presence = Presence()
    for client_id, raw in enumerate([b"5", b'"away"', b"[1,2]", b"true"]):
        update = b"\x01" + bytes([client_id, 1, len(raw)]) + raw
        with pytest.raises(StateNotAnObject):
            presence.apply(ALICE_SOCKET, "alice", update)
    assert presence.owned_by(ALICE_SOCKET) == 0
    assert presence.flush() is None and presence.snapshot() is None


def test_relayed_updates_are_strict_json() -> None:
    # Stock clients parse each state with JSON.parse, which rejects NaN and Infinity; relaying
    # them would break presence for every peer (and for every later joiner, via snapshots).
    for cid, constant in enumerate(["NaN", "Infinity", "-Infinity"]):
        body = f'{{"x":{constant}}}'.encode()
        hostile = b"\x01" + bytes([cid, 1, len(body)]) + body
        try:
            out = Presence().apply(ALICE_SOCKET, "mallory", hostile)
        except ProtocolError:
            continue
        for item in relayed(out):
            text = json.dumps(item.state)
            assert is_strict_json(text), f"relayed {text}, which JSON.parse rejects"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([ALICE_SOCKET, BOB_SOCKET]),
            st.integers(0, 3),
            st.integers(0, 5),
            st.none() | st.dictionaries(st.sampled_from("abc"), st.integers(), max_size=2),
        ),
        max_size=25,
    )
)
def test_presence_never_leaks_across_sockets(
    events: list[tuple[str, int, int, dict[str, Any] | None]],
) -> None:
    presence = Presence()
    owner: dict[int, str] = {}
    user_of = {ALICE_SOCKET: "alice", BOB_SOCKET: "bob"}
    for socket, cid, clock, state in events:
        out = presence.apply(socket, user_of[socket], update((cid, clock, state)))
        if state is None and cid not in owner:
            assert relayed(out) == []  # a leaving of a client never shown claims nothing
            continue
        if cid not in owner and socket in owner.values():
            assert relayed(out) == []  # a socket with a client of its own relays another's
            continue
        if owner.setdefault(cid, socket) != socket:
            assert relayed(out) == []
            continue
        assert owner[cid] == socket
        for item in relayed(out):
            if item.state is not None:
                assert item.state["parley"] == {"user_id": user_of[socket]}
    for socket in (ALICE_SOCKET, BOB_SOCKET):
        assert presence.owned_by(socket) == sum(1 for s in owner.values() if s == socket)
    snapshot = presence.snapshot()
    for item in [] if snapshot is None else relayed(snapshot):
        assert item.state is not None
        assert item.state["parley"]["user_id"] == user_of[owner[item.client_id]]


def test_a_flood_from_one_client_is_relayed_as_its_latest_state() -> None:
    presence = Presence()
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"v": "bob"})))
    for clock in range(1, 200):
        presence.apply(ALICE_SOCKET, "alice", update((11, clock, {"cursor": clock})))
    assert sorted(relayed(presence.flush()), key=lambda s: s.client_id) == [
        AwarenessState(11, 199, stamped({"cursor": 199}, "alice")),
        AwarenessState(21, 1, stamped({"v": "bob"}, "bob")),
    ]
    assert presence.flush() is None  # nothing changed since


def test_a_departure_replaces_a_state_not_yet_relayed() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 5, {"v": 1})))
    presence.drop(ALICE_SOCKET)
    assert relayed(presence.flush()) == [AwarenessState(11, 6, None)]


def test_refused_and_ignored_updates_relay_nothing() -> None:
    presence = Presence(max_state_bytes=100)
    presence.apply(BOB_SOCKET, "bob", update((21, 1, {"v": "bob"})))
    presence.flush()
    with pytest.raises(TooLarge):
        presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"pad": "x" * 200})))
    presence.apply(ALICE_SOCKET, "alice", update((21, 9, {"v": "not bob"})))  # an echo
    assert presence.flush() is None


def test_another_nodes_clients_are_theirs_and_ours_are_ours() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"name": "Al"})), now=0.0)
    remote = update((21, 1, stamped({"name": "Cy"}, "cy")), (11, 9, None))
    # Another node may not clear (or overwrite) a client of a socket here...
    assert relayed(presence.apply_remote("n1", remote, 0.0)) == [
        AwarenessState(21, 1, stamped({"name": "Cy"}, "cy"))
    ]
    # ...nor a socket here one of a socket there, nor a third node.
    assert relayed(presence.apply(BOB_SOCKET, "bob", update((21, 5, None)), now=1.0)) == []
    assert presence.apply_remote("n2", update((21, 7, None)), 1.0) is None
    # What this node answers for is its own sockets' states.
    assert [s.client_id for s in relayed(presence.snapshot())] == [11]
    # Its node leaving it, the client is gone; not renewed, it may be introduced again.
    assert relayed(presence.apply_remote("n1", update((21, 2, None)), 2.0)) == [
        AwarenessState(21, 2, None)
    ]
    presence.apply_remote("n1", update((22, 1, {"name": "Di"})), 3.0)
    late = 3.0 + REMOTE_STALE_S + 1
    out = presence.apply(BOB_SOCKET, "bob", update((22, 1, {"name": "Bo"})), now=late)
    assert relayed(out) == [AwarenessState(22, 1, stamped({"name": "Bo"}, "bob"))]


def test_a_client_that_left_is_kept_for_its_member_a_while() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 3, {"name": "Al"})), now=0.0)
    presence.drop(ALICE_SOCKET, now=1.0)
    assert relayed(presence.apply(BOB_SOCKET, "bob", update((11, 9, {})), now=2.0)) == []
    back = presence.apply("socket-a2", "alice", update((11, 4, {"name": "Al"})), now=3.0)
    assert relayed(back) == [AwarenessState(11, 4, stamped({"name": "Al"}, "alice"))]
    presence.drop("socket-a2", now=4.0)
    # A night away (a laptop asleep, its page open): still alice's (ten minutes were not).
    night = presence.apply(BOB_SOCKET, "bob", update((11, 9, {})), now=4.0 + 10 * 3600)
    assert relayed(night) == []
    later = presence.apply(BOB_SOCKET, "bob", update((11, 9, {})), now=4.0 + KEEP_LEFT_S + 1)
    assert relayed(later) == [AwarenessState(11, 9, stamped({}, "bob"))]


def test_another_members_churn_does_not_free_a_kept_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review (stock clients): a client id was kept for its member 30 s, and among 10,000
    kept ids of anyone's: after a nap, or 10,100 fresh ids through short-lived sockets,
    mallory took alice's id at a clock near the top, and alice's stock client, back, took
    mallory's state for its own. It is kept a day, and each member's churn pushes
    out only their own."""
    monkeypatch.setattr(presence_module, "MAX_LEFT_KEPT", 10)
    monkeypatch.setattr(presence_module, "MAX_LEFT_PER_MEMBER", 4)
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 3, {"name": "Al"})), now=0.0)
    presence.drop(ALICE_SOCKET, now=1.0)
    for n in range(20):  # mallory's sockets, one fresh id each
        presence.apply(f"mallory-{n}", "mallory", update((100 + n, 1, {})), now=2.0)
        presence.drop(f"mallory-{n}", now=2.0)
    taken = presence.apply("mallory-x", "mallory", update((11, 2**53 - 2, {})), now=300.0)
    assert relayed(taken) == []
    back = presence.apply("socket-a2", "alice", update((11, 4, {"name": "Al"})), now=301.0)
    assert relayed(back) == [AwarenessState(11, 4, stamped({"name": "Al"}, "alice"))]


def test_a_client_back_behind_its_told_leaving_is_told_to_raise_its_clock() -> None:
    """Review (stock clients): its peers were told it left at clock + 1, and ignore its
    state until it passes that: a reconnected client was unseen for 30 s. Its socket
    alone is told it left at that clock, which a Yjs client answers by showing itself
    again past it."""
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 4, {"v": 1})))
    assert presence.take_behind(ALICE_SOCKET) is None  # a first join is not behind
    [left] = relayed(presence.drop(ALICE_SOCKET, now=1.0))
    assert (left.clock, left.state) == (5, None)
    presence.apply("socket-a2", "alice", update((11, 4, {"v": 1})), now=2.0)
    assert relayed(presence.take_behind("socket-a2")) == [AwarenessState(11, 5, None)]
    assert presence.take_behind("socket-a2") is None  # told once
    out = presence.apply("socket-a2", "alice", update((11, 6, {"v": 1})), now=2.1)
    assert [(s.client_id, s.clock) for s in relayed(out)] == [(11, 6)]
    assert presence.take_behind("socket-a2") is None
    # Back at the very clock it was told to have left at (it changed once while away):
    # its peers ignore that too (review of the mend).
    presence.drop("socket-a2", now=3.0)  # told left at 7
    presence.apply("socket-a3", "alice", update((11, 7, {"v": 2})), now=4.0)
    assert relayed(presence.take_behind("socket-a3")) == [AwarenessState(11, 7, None)]


def test_a_client_back_on_another_node_is_told_its_clock_through_the_node_it_left() -> None:
    """Review of the mend: back on another node than the one it left, a client was unseen
    for 30 s there (that node never heard it left). The node it left tells the other,
    which tells its socket."""
    left_node, other_node = Presence(), Presence()
    left_node.apply(ALICE_SOCKET, "alice", update((11, 4, {"v": 1})))
    left_node.drop(ALICE_SOCKET, now=1.0)  # told left at 5, on the node it left
    relayed_there = other_node.apply("socket-a2", "alice", update((11, 4, {"v": 1})), now=2.0)
    assert other_node.take_behind("socket-a2") is None  # it never heard of the leaving
    assert left_node.apply_remote("n2", relayed_there, 2.0) is not None
    told = left_node.take_behind_elsewhere()
    assert told is not None and relayed(told) == [AwarenessState(11, 5, None)]
    assert left_node.take_behind_elsewhere() is None
    assert other_node.apply_remote("n1", told, 2.1) is None  # nothing shown from it
    assert [(owner, relayed(u)) for owner, u in other_node.take_behind_here()] == [
        ("socket-a2", [AwarenessState(11, 5, None)])
    ]


def test_the_clients_that_left_are_taken_for_the_store_once() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 3, {"v": 1}), (12, 1, {"v": 2})))
    presence.apply_remote("n1", update((21, 1, stamped({}, "cy"))), 0.0)
    presence.apply_remote("n1", update((21, 2, None)), 1.0)  # another node stores its own
    assert presence.take_left() == []
    presence.drop(ALICE_SOCKET, now=2.0)
    assert presence.take_left() == [
        LeftClient(11, "alice", 2.0, 4),
        LeftClient(12, "alice", 2.0, 2),
    ]
    assert presence.take_left() == []


def test_restored_clients_are_kept_for_their_members_as_if_they_had_left_here() -> None:
    """What a room's load gives it of the store: another member may not introduce a client
    id its member left before the load, and the member, back below the clock its leaving
    was told at, is told to raise it."""
    before = Presence()
    before.apply(ALICE_SOCKET, "alice", update((11, 4, {"v": 1})))
    before.drop(ALICE_SOCKET, now=1.0)
    loaded = Presence()
    loaded.restore(before.take_left(), now=2.0)
    assert relayed(loaded.apply(BOB_SOCKET, "bob", update((11, 9, {})), now=3.0)) == []
    back = loaded.apply("socket-a2", "alice", update((11, 4, {"v": 1})), now=4.0)
    assert relayed(back) == [AwarenessState(11, 4, stamped({"v": 1}, "alice"))]
    assert relayed(loaded.take_behind("socket-a2")) == [AwarenessState(11, 5, None)]


def test_restore_keeps_the_newest_within_the_day_and_the_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presence_module, "MAX_LEFT_KEPT", 5)
    monkeypatch.setattr(presence_module, "MAX_LEFT_PER_MEMBER", 3)
    now = KEEP_LEFT_S + 100.0
    stored = [
        LeftClient(1, "alice", 99.0, 1),  # over a day ago: free
        *(LeftClient(10 + n, "mallory", 200.0 + n, 1) for n in range(6)),  # her newest 3
        *(LeftClient(20 + n, "alice", 150.0 + n, 1) for n in range(3)),
    ]
    presence = Presence()
    presence.restore(reversed(stored), now)  # the store's order: newest first
    taken = [
        cid
        for cid in [1, *range(10, 16), *range(20, 23)]
        if relayed(presence.apply(f"s{cid}", "bob", update((cid, 9, {})), now=now)) != []
    ]
    # Mallory's newest 3 and, of 5 in all, alice's 2 newest are kept.
    assert taken == [1, 10, 11, 12, 20]


def test_restore_leaves_a_present_client_and_a_later_leaving_as_they_are() -> None:
    presence = Presence()
    presence.apply(ALICE_SOCKET, "alice", update((11, 1, {"v": 1})), now=10.0)
    presence.apply(BOB_SOCKET, "bob", update((12, 7, {"v": 1})), now=10.0)
    presence.drop(BOB_SOCKET, now=20.0)  # told left at 8
    presence.restore([LeftClient(11, "mallory", 5.0, 3), LeftClient(12, "mallory", 15.0, 3)], 30.0)
    assert presence.users() == ["alice"]
    assert relayed(presence.apply("m", "mallory", update((12, 9, {})), now=31.0)) == []
    presence.apply("socket-b2", "bob", update((12, 8, {"v": 2})), now=32.0)
    assert relayed(presence.take_behind("socket-b2")) == [AwarenessState(12, 8, None)]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alice", "bob", "cy"]), st.integers(1, 5)),
        max_size=14,
    ),
    st.randoms(use_true_random=False),
)
def test_restored_clients_are_kept_as_if_they_had_left_here(
    leavings: list[tuple[str, int]], order: Any
) -> None:
    """Whatever the store gives back, in whatever order, a room keeps the client ids a
    room that saw them leave would keep (the day, each member's count and the total), and
    tells a member back below the clock their leaving was told at the same."""
    day = KEEP_LEFT_S
    # Client n left at an hour n (the earliest more than a day before the last).
    left = [LeftClient(n, user, n * 3600.0, clock + 1) for n, (user, clock) in enumerate(leavings)]
    now = len(left) * 3600.0 + day - 5 * 3600.0
    with (
        mock.patch.object(presence_module, "MAX_LEFT_KEPT", 6),
        mock.patch.object(presence_module, "MAX_LEFT_PER_MEMBER", 3),
    ):
        here = Presence()
        for item in left:
            here.apply(
                f"s{item.client_id}",
                item.user_id,
                update((item.client_id, item.clock - 1, {})),
                now=item.at,
            )
            here.drop(f"s{item.client_id}", now=item.at)
        shuffled = list(left)
        order.shuffle(shuffled)
        loaded = Presence()
        loaded.restore(shuffled, now)
        for item in left:
            tried = update((item.client_id, 2**40, {}))
            mallory = f"m{item.client_id}"
            kept_here = relayed(here.apply(mallory, "mallory", tried, now=now)) == []
            kept_loaded = relayed(loaded.apply(mallory, "mallory", tried, now=now)) == []
            assert kept_here == kept_loaded, item
            if kept_here:  # its member, back below the clock its leaving was told at
                back = update((item.client_id, item.clock - 1, {}))
                told = []
                for presence in (here, loaded):
                    presence.apply(f"b{item.client_id}", item.user_id, back, now=now)
                    told.append(presence.take_behind(f"b{item.client_id}"))
                assert told[0] == told[1] == update((item.client_id, item.clock, None))


def test_every_clock_derived_from_an_accepted_one_comes_back_silently() -> None:
    """Review: a client shown at 2^53 - 2 was told left at 2^53 - 1; stock clients echoed
    that, and each echo was refused ("awareness clock out of range") and counted toward
    the abuse limit until they were closed 4429 for good. Now a client may show itself up
    to ``MAX_CLOCK``, every clock derived from that stays readable, and the echoes of a
    leaving (another member's client, or one of the echoing member's own) are ignored."""
    presence = Presence()
    with pytest.raises(ClockOutOfRange):
        presence.apply("mal-1", "mal", update((7, 2**53 - 2, {})))
    with pytest.raises(ClockOutOfRange):
        presence.apply("mal-1", "mal", update((7, MAX_CLOCK + 1, {})))
    presence.apply("mal-1", "mal", update((7, MAX_CLOCK, {})))
    presence.apply(ALICE_SOCKET, "alice", update((8, MAX_CLOCK, {})))
    presence.apply(BOB_SOCKET, "bob", update((21, 3, {})))
    presence.flush()
    [left] = relayed(presence.drop("mal-1", now=1.0))
    assert left == AwarenessState(7, MAX_CLOCK + 1, None)
    [alice_left] = relayed(presence.drop(ALICE_SOCKET, now=1.0))
    flushed = presence.flush()
    assert flushed is not None
    # A stock client re-sends every change it receives, as y-protocols encodes it.
    assert presence.apply(BOB_SOCKET, "bob", flushed, now=1.1) == update()
    assert presence.apply("socket-a2", "alice", flushed, now=1.1) == update()
    assert presence.apply("mal-2", "mal", flushed, now=1.1) == update()
    assert not presence.would_show(BOB_SOCKET, "bob", flushed, now=1.1)
    # Back below its leaving, it is told that clock; raised past it, it is shown again.
    presence.apply("socket-a3", "alice", update((8, MAX_CLOCK, {})), now=2.0)
    assert relayed(presence.take_behind("socket-a3")) == [alice_left]
    assert alice_left.clock + 1 < MAX_SAFE_INTEGER


def test_past_the_top_a_client_may_go_only_where_its_last_clock_leads() -> None:
    """Review of the mend: a member's stock socket takes their own client kept from a
    closed socket by echoing its state at ``MAX_CLOCK``, then echoes its leaving, one past;
    a client back below its leaving is told it, and raises its clock past that. Both come
    from a clock the server accepted, and are taken; a jump past the top is not."""
    presence = Presence()
    presence.apply("mal-1", "alice", update((7, MAX_CLOCK, {})))
    presence.drop("mal-1", now=1.0)
    presence.apply(ALICE_SOCKET, "alice", update((7, MAX_CLOCK, {})), now=1.1)  # its echo
    out = presence.apply(ALICE_SOCKET, "alice", update((7, MAX_CLOCK + 1, None)), now=1.2)
    assert relayed(out) == [AwarenessState(7, MAX_CLOCK + 1, None)]

    presence.apply(BOB_SOCKET, "bob", update((8, MAX_CLOCK, {})))
    [left] = relayed(presence.drop(BOB_SOCKET, now=2.0))
    presence.apply("socket-b2", "bob", update((8, MAX_CLOCK, {})), now=2.1)
    assert relayed(presence.take_behind("socket-b2")) == [left]
    raised = presence.apply("socket-b2", "bob", update((8, left.clock + 1, {})), now=2.2)
    assert [s.clock for s in relayed(raised)] == [MAX_CLOCK + 2]
    with pytest.raises(ClockOutOfRange):
        presence.apply("socket-b2", "bob", update((8, MAX_CLOCK + 5, {})), now=2.3)


def test_past_the_top_a_client_stops_short_of_what_javascript_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its leaving, one past its last clock, must stay readable: 2^31 steps of two past
    ``MAX_CLOCK`` would reach it, so the last is refused (the top moved up to see it)."""
    monkeypatch.setattr(presence_module, "MAX_CLOCK", MAX_SAFE_INTEGER - 3)
    presence = Presence()
    presence.apply("socket-z", "zed", update((9, MAX_SAFE_INTEGER - 3, {})))
    presence.apply("socket-z", "zed", update((9, MAX_SAFE_INTEGER - 1, {})))
    with pytest.raises(ClockOutOfRange):
        presence.apply("socket-z", "zed", update((9, MAX_SAFE_INTEGER, {})))
    assert relayed(presence.drop("socket-z")) == [AwarenessState(9, MAX_SAFE_INTEGER, None)]


def test_a_client_told_it_left_at_the_top_clock_is_shown_past_it() -> None:
    """Review: a member's raw socket took their own away client at the top clock and
    closed (its leaving told at ``MAX_CLOCK``); the stock client, back, was told so and
    raised its clock past it, and that state was refused: it stayed unseen for good."""
    presence = Presence()
    presence.apply("raw", "ed", update((7, MAX_CLOCK - 1, {"v": 1})), now=1.0)
    presence.drop("raw", now=2.0)  # told left at MAX_CLOCK
    presence.apply("stock", "ed", update((7, 5, {"v": 2})), now=3.0)
    assert relayed(presence.take_behind("stock")) == [AwarenessState(7, MAX_CLOCK, None)]
    shown = presence.apply("stock", "ed", update((7, MAX_CLOCK + 1, {"v": 2})), now=3.1)
    assert relayed(shown) == [AwarenessState(7, MAX_CLOCK + 1, stamped({"v": 2}, "ed"))]
    [left] = relayed(presence.drop("stock", now=4.0))
    assert left.clock == MAX_CLOCK + 2 < MAX_SAFE_INTEGER
