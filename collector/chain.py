"""Which links of a device's chain are broken, among rows stored in seq order.

Each event carries its ledger row's ``hash`` and ``prev_hash`` (the hash of the
ledger row before it) and ``ledger_id`` (its place in the device's chain). Rows
without a ``seq`` (double reads) are never published, so the row before an event
may be one the collector never sees: then ``ledger_id`` jumps by more than one
while ``seq`` goes up by one, and that link cannot be checked, only the order.
A link is broken when:

- the ledger ids are consecutive and ``prev_hash`` is not the hash of the row before;
- the first row of the chain (``ledger_id`` 1) does not start from the genesis hash;
- ``ledger_id`` does not go up with ``seq`` (rows reordered, or a ledger started over);
- one seq holds two different events (``seq_reused``, found by the store).

>>> a = Link(seq=1, ledger_id=1, hash="a" * 64, prev_hash=GENESIS, event_id="e1")
>>> b = Link(seq=2, ledger_id=2, hash="b" * 64, prev_hash="a" * 64, event_id="e2")
>>> c = Link(seq=3, ledger_id=5, hash="c" * 64, prev_hash="f" * 64, event_id="e3")  # two double reads before it
>>> d = Link(seq=4, ledger_id=6, hash="d" * 64, prev_hash="0" * 63 + "1", event_id="e4")
>>> [(x.seq, x.problem) for x in breaks([a, b, c, d])]
[(4, 'prev_hash does not match the hash of the row before')]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

GENESIS = "0" * 64


class Link(NamedTuple):
    """What the chain check needs of one stored event (a tuple: the writer makes one per event)."""

    seq: int
    ledger_id: int
    hash: str
    prev_hash: str
    event_id: str


@dataclass(frozen=True)
class Break:
    """A broken link: the row ``seq`` and what the row before it said."""

    seq: int
    ledger_id: int
    event_id: str
    prev_hash: str
    expected: str | None
    problem: str


def breaks(rows: Iterable[Link], before: Link | None = None) -> list[Break]:
    """The broken links among ``rows`` (consecutive seqs, in order), ``before`` being the row
    stored just ahead of the first (None: check the first only if it starts the chain)."""
    found = []
    previous = before
    for row in rows:
        problem, expected = "", None
        if previous is None:
            if row.ledger_id == 1 and row.prev_hash != GENESIS:
                problem, expected = "the first row does not start from the genesis hash", GENESIS
        elif row.ledger_id <= previous.ledger_id:
            problem = f"ledger_id {row.ledger_id} does not follow {previous.ledger_id}"
            expected = previous.hash
        elif row.ledger_id == previous.ledger_id + 1 and row.prev_hash != previous.hash:
            problem, expected = "prev_hash does not match the hash of the row before", previous.hash
        if problem:
            found.append(Break(row.seq, row.ledger_id, row.event_id, row.prev_hash, expected, problem))
        previous = row
    return found
