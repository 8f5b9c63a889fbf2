"""Context build benchmark: a 2,000-message shared session, folded, budgeted, timed.

The corpus is generated (seeded, so every run builds the same one): 8 users, about 500k
tokens, 40% of the messages repeat earlier content (exact copies, light rewordings, the
same text pasted again with other spacing and case), and 20 facts are planted. Half of the
facts are session facts (``set_fact``), half are pinned messages: the two ways members keep
a fact in every input. The facts said only once are also looked for in an input built
without them, to show what a window alone keeps.

Reported: tokens of the history before and after folding (deduplication alone, no budget),
the time of a first build and of an incremental build after one new message (medians), and
how many planted facts are in the model input.

    python -m bench.context_build [--messages 2000] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from session.context import BuiltContext, ContextBuilder, ContextSettings
from session.dedup import minhash
from session.fold import HistoryFold
from session.schema import Entry, EntryKind
from session.tokens import count_tokens, tokenizer_name

USERS = ["alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi"]
_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def _vocabulary(rng: random.Random, size: int = 6000) -> tuple[list[str], list[float]]:
    """Pseudo-words with Zipf frequencies, like the words of real chat: a few very common,
    most rare, so unrelated messages share few 5-grams (as they do in real text)."""
    words = sorted(
        {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(size)}
    )
    rng.shuffle(words)
    return words, [1 / (rank + 1) for rank in range(len(words))]


@dataclass(frozen=True)
class Corpus:
    entries: list[Entry]
    facts: dict[str, str]
    pins: list[str]
    needles: list[str]  # the text of every planted fact, to look for in the input


class _Words:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words, self.weights = _vocabulary(rng)

    def some(self, n: int) -> list[str]:
        return self.rng.choices(self.words, self.weights, k=n)

    def paragraph(self, words: int) -> str:
        sentences = []
        while words > 0:
            n = min(words, self.rng.randint(8, 18))
            sentences.append(" ".join(self.some(n)).capitalize() + ".")
            words -= n
        return " ".join(sentences)

    def log(self, lines: int) -> str:
        return "\n".join(
            f"2026-11-25T10:{i // 60:02d}:{i % 60:02d}Z ERROR {self.some(1)[0]}-"
            f"{self.rng.randint(1, 9)} {' '.join(self.some(8))}"
            for i in range(lines)
        )

    def reword(self, text: str) -> str:
        """A light rewording: one word in forty changed, so similarity stays high."""
        words = text.split(" ")
        for _ in range(max(1, len(words) // 40)):
            words[self.rng.randrange(len(words))] = self.some(1)[0]
        return " ".join(words)


def generate(messages: int = 2000, seed: int = 7) -> Corpus:
    rng = random.Random(seed)
    vocabulary = _Words(rng)
    texts: list[tuple[str, str]] = []
    originals: list[str] = []
    fact_at = set(rng.sample(range(messages), 20))
    needles: list[str] = []
    for i in range(messages):
        author = USERS[i % len(USERS)] if rng.random() < 0.5 else rng.choice(USERS)
        if i in fact_at:
            n = len(needles)
            account = rng.randint(10**7, 10**8)
            text = f"For the record: the account number for tenant {n} is ACCT-{account}."
            needles.append(text)
        elif originals and rng.random() < 0.4:
            source = rng.choice(originals)
            kind = rng.random()
            if kind < 0.45:
                text = source
            elif kind < 0.8:
                text = vocabulary.reword(source)
            else:  # pasted again with a different case and spacing: equal once normalised
                text = "  " + source.replace(". ", ".\n", 3).lower() + "\n"
        else:
            if rng.random() < 0.25:
                log = vocabulary.log(rng.randint(6, 16))
                text = f"Seeing this on my side:\n\n{log}\n\nAny idea?"
            else:
                text = vocabulary.paragraph(rng.randint(40, 90))
            originals.append(text)
        texts.append((author, text))
    entries = [
        Entry(
            id=f"m{i}",
            seq=i + 1,
            kind=EntryKind.MESSAGE,
            author=author,
            role="user",
            status="posted",
            content=text,
            created_at=i,
        )
        for i, (author, text) in enumerate(texts)
    ]
    planted = sorted(fact_at)
    facts = {f"tenant_{n}_account": needles[n].rsplit(" ", 1)[1].rstrip(".") for n in range(10)}
    pins = [f"m{i}" for i in planted[10:]]
    return Corpus(entries, facts, pins, needles)


def _prompt(seq: int, text: str) -> Entry:
    return Entry(
        id=f"p{seq}",
        seq=seq,
        kind=EntryKind.PROMPT,
        author="alice",
        role="user",
        status="queued",
        content=text,
        created_at=seq,
    )


def _clear_memos() -> None:
    """Forget every memoised signature and count, so a first build pays for everything."""
    minhash.clear()
    count_tokens.clear()


def _timed_build(
    builder: ContextBuilder, corpus: Corpus, entries: list[Entry]
) -> tuple[BuiltContext, float]:
    started = time.perf_counter()
    built = builder.build(
        session_id="bench",
        entries=entries,
        prompt_ids=[entries[-1].id],
        facts=corpus.facts,
        pins=corpus.pins,
    )
    return built, (time.perf_counter() - started) * 1000


def _facts_in(corpus: Corpus, given: str) -> int:
    return sum(1 for needle in corpus.needles if needle.rsplit(" ", 1)[1].rstrip(".") in given)


def run(messages: int = 2000, repeat: int = 5) -> dict[str, Any]:
    corpus = generate(messages)
    settings = ContextSettings()
    before = sum(count_tokens(f"[{e.author} wrote]\n{e.content}") for e in corpus.entries)
    fold = HistoryFold(settings.near_duplicate_threshold, settings.min_block_lines)
    fold.sync([(e, False) for e in corpus.entries])
    after = sum(item.tokens for _, item in fold.live_items())

    first_ms: list[float] = []
    incremental_ms: list[float] = []
    built: BuiltContext | None = None
    for attempt in range(repeat):
        _clear_memos()
        builder = ContextBuilder(settings)
        entries = [*corpus.entries, _prompt(messages + 1, "What are the open issues?")]
        _, elapsed = _timed_build(builder, corpus, entries)
        first_ms.append(elapsed)
        # The prompt is answered, and the next one arrives.
        entries[-1] = replace(entries[-1], status="done")
        entries.append(_prompt(messages + 2, f"And the latest, take {attempt}?"))
        built, elapsed = _timed_build(builder, corpus, entries)
        incremental_ms.append(elapsed)
    assert built is not None
    given = built.request.system + "\n".join(m.content for m in built.request.messages)
    retained = _facts_in(corpus, given)
    # The same input without the pins and facts: what survives of facts said only once.
    bare = ContextBuilder(settings).build(
        session_id="bench", entries=entries, prompt_ids=[entries[-1].id]
    )
    bare_given = bare.request.system + "\n".join(m.content for m in bare.request.messages)
    return {
        "messages": messages,
        "users": len(USERS),
        "tokenizer": tokenizer_name(),
        "tokens_before": before,
        "tokens_after_dedup": after,
        "saved_by_dedup": round(1 - after / before, 4),
        "first_build_ms": round(statistics.median(first_ms), 2),
        "incremental_build_ms": round(statistics.median(incremental_ms), 3),
        "input_tokens": built.tokens,
        "budget": built.budget,
        "facts_planted": len(corpus.needles),
        "facts_retained": retained,
        "facts_retained_without_pins_or_facts": _facts_in(corpus, bare_given),
        "runs": repeat,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run(args.messages, args.repeat)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
