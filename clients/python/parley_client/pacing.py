"""How fast commands go out to a socket, sans I/O: the caller passes the time.

After a reconnect every command still unanswered goes out again, and a command made while
offline goes out for the first time: written all at once, past the server's command
budget of a socket (``PARLEY_COMMANDS_BURST``, then ``PARLEY_COMMANDS_PER_SECOND``), the
ones over it were refused ``rate_limited`` though they would have been taken a moment
later, and enough refusals close the socket for good (4429). So commands are written in
the order they were made, at most ``in_flight`` of them written and unanswered on a socket
at once (the next as each is answered), and no faster than the server's default budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pacing:
    """At most ``in_flight`` commands written to a socket and unanswered at once; at most
    ``burst`` written at once, and ``per_second`` on average after that. The defaults stay
    under the server's default budget of a socket (30 at once, then 10 a second) by a
    margin: the server counts a command when it reads it, so one that took longer to reach
    it than the next ones leaves the server less time to refill than the client counted
    (at 30 and 10 a second, the 31st of a burst was refused). Set them under a server's own
    when it has lower ones."""

    in_flight: int = 8
    per_second: float = 8.0
    burst: int = 20

    def __post_init__(self) -> None:
        if self.in_flight < 1 or self.burst < 1 or self.per_second <= 0:
            raise ValueError("in_flight and burst are at least 1, per_second above 0")


PACING = Pacing()
MIN_PER_SECOND = 0.5  # the slowest refusals over the member's budget bring a session to
RECOVER_PER_ACK = 0.1  # commands a second the rate gets back with each ack


class Pacer:
    """Which of the commands waiting to be written go out now. One per session, across its
    sockets: a new socket does not refill what the last one spent (the server's budget of
    the member spans their sockets)."""

    __slots__ = ("_tokens", "_updated", "pacing", "per_second")

    def __init__(self, pacing: Pacing, now: float) -> None:
        self.pacing = pacing
        self._tokens = float(pacing.burst)
        self._updated = now
        # The rate now: ``pacing.per_second``, halved by each refusal over the member's
        # budget, back a step with each ack (the member's other sessions share the budget).
        self.per_second = pacing.per_second

    def take(self, written_on: Sequence[int | None], socket: int, now: float) -> tuple[int, float]:
        """``written_on``: for each command waiting for its reply, in the order they were
        made, the socket it was last written to (None: none yet). Returns how many of those
        not yet written to ``socket`` to write now, the first ones in that order (they are
        charged here), and how long until the rate allows another when it held one back
        (0.0: it did not; wait for a reply or a new command instead)."""
        self._tokens = min(
            float(self.pacing.burst),
            self._tokens + max(now - self._updated, 0.0) * self.per_second,
        )
        paused = max(self._updated - now, 0.0)  # a refusal's pause runs to its end
        self._updated = max(self._updated, now)
        in_flight = sum(1 for written in written_on if written == socket)
        unwritten = len(written_on) - in_flight
        room = min(unwritten, self.pacing.in_flight - in_flight)
        if room <= 0:
            return 0, 0.0
        count = min(room, int(self._tokens))
        self._tokens -= count
        if count < room:  # the rate held one back: it is due once a whole token is back
            return count, paused + (1.0 - self._tokens) / self.per_second
        return count, 0.0

    def pause(self, until: float) -> None:
        """Write nothing new before ``until``, and at half the rate after: the server
        refused a command over the member's budget, which spans their sockets (another
        session of theirs spends it too), and said when it has room (review RH-2)."""
        self._tokens = min(self._tokens, 0.0)
        self._updated = max(self._updated, until)
        self.per_second = max(self.per_second / 2, MIN_PER_SECOND)

    def answered(self) -> None:
        """A command was acknowledged: the rate goes back up a step, to ``pacing``'s."""
        self.per_second = min(self.per_second + RECOVER_PER_ACK, self.pacing.per_second)
