"""What one streamed piece of a reply costs as the reply grows, in blocks and in one block.

The session document as the server holds it (``SessionDocument``, writing encoded, one
observer taking each transaction's update as the broadcast does) streams a reply in pieces
of 8 characters. At each length asked for (1,000, 5,000, 20,000 pieces by default: 8 kB to
160 kB of text) the CPU time (``time.process_time``) of the last ``--window`` appends is
taken, per append. The same run does it twice: with the text in blocks of
``yitems.TEXT_BLOCK_UNITS`` (as served) and in one block (the peer: a block size no reply
reaches, as before blocks), so the ratio is measured on the same machine at the same time.

    python -m bench.reply_append [--lengths 1000,5000,20000] [--window 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from pycrdt import Doc

from bench.run_cost import write_result
from parley.session.schema import SessionDocument
from parley.session.yitems import TEXT_BLOCK_UNITS

PIECE = "tok tok "
ONE_BLOCK = 2**62


def appends(lengths: list[int], window: int, block_units: int) -> dict[int, float]:
    """µs of CPU per append over the ``window`` appends ending at each of ``lengths``."""
    doc: Doc[Any] = Doc()
    updates: list[int] = []
    doc.observe(lambda event: updates.append(len(event.update)))
    document = SessionDocument(doc, encode_from=0, text_block_units=block_units)
    document.add_prompt(id="p", seq=1, author="u", text="go", created_at=1)
    document.start_reply(prompt_ids=["p"], reply_id="r", author="bot", created_at=2)
    out: dict[int, float] = {}
    done = 0
    for length in sorted(lengths):
        while done < length - window:
            document.append_reply_text("r", PIECE)
            done += 1
        start = time.process_time()
        while done < length:
            document.append_reply_text("r", PIECE)
            done += 1
        out[length] = (time.process_time() - start) / window * 1e6
    assert document.entry("r").content == PIECE * done
    return out


def run(lengths: list[int], window: int, rounds: int) -> dict[str, Any]:
    """Both ways, alternated ``rounds`` times; the median of each."""
    blocks: dict[int, list[float]] = {n: [] for n in lengths}
    one: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(rounds):
        for n, us in appends(lengths, window, TEXT_BLOCK_UNITS).items():
            blocks[n].append(us)
        for n, us in appends(lengths, window, ONE_BLOCK).items():
            one[n].append(us)
    rows = [
        {
            "appends": n,
            "text_kb": round(n * len(PIECE) / 1000, 1),
            "us_per_append_blocks": round(statistics.median(blocks[n]), 2),
            "us_per_append_one_block": round(statistics.median(one[n]), 2),
        }
        for n in sorted(lengths)
    ]
    return {"piece": PIECE, "block_units": TEXT_BLOCK_UNITS, "rounds": rounds, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| Appends so far | Text | µs per append, in blocks | in one block | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        blocks, one = row["us_per_append_blocks"], row["us_per_append_one_block"]
        ratio = f"{one / blocks:.1f}x" if blocks else "-"
        lines.append(
            f"| {row['appends']:,} | {row['text_kb']} kB | {blocks:.1f} | {one:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1000,5000,20000", help="appends so far")
    parser.add_argument("--window", type=int, default=200, help="appends timed at each")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternated")
    parser.add_argument("--json", help="the results file (default bench/results/reply-append-DATE)")
    args = parser.parse_args(argv)
    lengths = sorted(int(n) for n in args.lengths.split(","))
    if lengths[0] < args.window:
        parser.error("every length must be at least --window")
    result = run(lengths, args.window, args.rounds)
    print(table(result))
    write_result(result, args.json, "reply-append")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
