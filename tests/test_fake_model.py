"""The fake model reads back who asks from the attribution lines the server writes."""

from __future__ import annotations

import pytest

from parley.session.attribution import attribution_line
from tests.fake_model import Sent, askers


@pytest.mark.parametrize(
    ("wrote", "asking"),
    [
        ((), ("bob",)),
        (("alice",), ("bob",)),
        (("alice", "carol"), ("bob", "dave")),
        ((), ('eve, "and" asks you', "x and y")),  # names that are not plain are JSON strings
        (("alice",), ()),
    ],
)
def test_the_askers_are_read_back_from_the_attribution_line(
    wrote: tuple[str, ...], asking: tuple[str, ...]
) -> None:
    assert askers(f"{attribution_line(wrote, asking)}\nthe text") == list(asking)


def test_only_asked_messages_count_and_issuers_come_once_in_order() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "rules"},
            {"role": "user", "content": "[alice wrote]\nearlier"},
            {"role": "assistant", "content": "[bob asks you]\nan echo, not a prompt"},
            {"role": "user", "content": "[bob asks you]\nfirst"},
            {"role": "user", "content": "[alice wrote, carol and bob ask you]\nsecond"},
        ]
    }
    sent = Sent(body)
    assert sent.issuers == ("bob", "carol")
    assert sent.asked_text() == "first second"
    assert sent.system == "rules" and len(sent.messages) == 4
