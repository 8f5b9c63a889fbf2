"""What a run's later model calls may send: each tool step's input held to the window.

The first call's input is the context build's, held to the session model's window minus its
output reserve (``too_large`` past it). Every tool step then appends the model's turn and
the tools' results to the next call; ``InputBudget`` holds that call to the same limit,
each message counted as ``session.tokens.input_tokens`` counts it (framing and ids too). A
tool result is cut to the room left, shared evenly by the results of one turn still to
come, and ends with a line, written by the server, saying what was left out; a result
nothing of which fits is replaced by that line alone. Once a result was cut the window is
full: the next call offers no tools (``session.toolloop``). A call that would still not fit
(the model's own turns filled it) is not made: the run ends ``too_large``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley.session.model import ModelMessage, ToolCall
from parley.session.reasons import Ending, ReasonCode
from parley.session.tokens import count_tokens, message_tokens

MAX_CHARS_PER_TOKEN = 16  # cl100k_base averages about 4 on prose, more on runs of spaces


def cut_marker(total: int, kept: int) -> str:
    """The line after a cut result (``kept``: its tokens given above it)."""
    if kept:
        return (
            f"[the rest of this result is left out: it has {total} tokens and the context "
            f"window had room for about {kept}]"
        )
    return f"[this result is left out: it has {total} tokens and the context window is full]"


def cut_to(text: str, room: int) -> str:
    """A start of ``text`` within ``room`` tokens (counted as the context is): the longest,
    unless tokens average more than ``MAX_CHARS_PER_TOKEN`` characters (then a shorter one).
    The search's cost is bounded by the room, not by the text's length."""
    high = min(len(text), MAX_CHARS_PER_TOKEN * (room + 1))
    if count_tokens(text[:high]) <= room:
        return text[:high]
    low = 0  # count_tokens(text[:low]) <= room < count_tokens(text[:high])
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(text[:middle]) <= room:
            low = middle
        else:
            high = middle
    return text[:low]


@dataclass(slots=True)
class InputBudget:
    """The input tokens a run's model calls may send (``limit``: the window minus the output
    reserve) and those the next call sends so far (``spent``: the first build's, then each
    turn and result appended)."""

    limit: int
    spent: int
    full: bool = False  # a result was cut: no room for more tool steps

    @property
    def room(self) -> int:
        return max(self.limit - self.spent, 0)

    def add_turn(self, text: str, calls: Sequence[ToolCall]) -> None:
        """The model's turn, sent back with the next call, and the message each of its
        calls is answered in, but for the result (``fit_result`` adds it)."""
        turn = ModelMessage("assistant", text, tool_calls=tuple(calls))
        results = (ModelMessage("tool", "", tool_call_id=call.id) for call in calls)
        self.spent += message_tokens(turn) + sum(message_tokens(r) for r in results)

    def fit_result(self, content: str, results_left: int) -> str:
        """``content`` as the next call carries it: whole if it fits its share of the room
        (the room left over the ``results_left`` results of the turn still to add, this
        one among them), else cut to it with the server's line; added to ``spent``."""
        share = self.room // max(results_left, 1)
        total = count_tokens(content)
        if total <= share:
            self.spent += total
            return content
        self.full = True
        marker = cut_marker(total, 0)
        room = share - count_tokens(cut_marker(total, share)) - 1  # the joining newline
        kept = cut_to(content, room).rstrip() if room > 0 else ""
        if kept:
            marker = cut_marker(total, count_tokens(kept))
            fitted = f"{kept}\n{marker}"
        else:
            fitted = marker
        self.spent += count_tokens(fitted)
        return fitted

    def overflow(self) -> Ending | None:
        """Why the next call may not be made: its input is past the limit."""
        if self.spent <= self.limit:
            return None
        said = "the run's tool steps filled the context window: the next model call needs"
        return Ending(
            ReasonCode.TOO_LARGE,
            f"{said} {self.spent} tokens; the window leaves {self.limit}",
            uncounted=f"{said} more tokens than the window leaves ({self.limit})",
        )
