"""The duplicate and lifecycle rules of the domain, as one table.

Each movement says which earlier states of a code make this scan a duplicate,
and how an accepted scan changes the code's state (``code_state``). A code's
state counts dispenses not yet returned (``out_count``), whether it is held
after a receiving (``in_held``) and whether it was destroyed.

>>> judge("dispense", None, allowed=1)
Verdict(verdict='accepted', reason=None, detail='', earlier_id=None)
>>> judge("dispense", {"out_count": 1, "out_id": 7, "in_held": 0, "in_id": None, "destroyed_id": None}, allowed=1)
Verdict(verdict='duplicate', reason='already_dispensed', detail='dispensed and not returned since', earlier_id=7)
>>> judge("return_in", {"out_count": 1, "out_id": 7, "in_held": 0, "in_id": None, "destroyed_id": None}, allowed=1)
Verdict(verdict='accepted', reason=None, detail='', earlier_id=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from agent.domain import MOVEMENTS


class Rule(NamedTuple):
    """What one movement refuses, and what it changes when accepted."""

    #: a destroyed code is a duplicate
    refuses_destroyed: bool
    #: a code dispensed and not returned (split packs: as often as allowed) is a duplicate
    refuses_dispensed: bool
    #: a code received and not returned to the supplier is a duplicate
    refuses_held: bool
    #: the SET clause applied to the code's ``code_state`` row (``:id`` is this scan)
    changes: str


#: movement      destroyed  dispensed  held   then
RULES: dict[str, Rule] = {
    "receive":    Rule(False, False, True,  "in_held = 1, in_id = :id"),
    "dispense":   Rule(True,  True,  False, "out_count = out_count + 1, out_id = :id"),
    "use":        Rule(True,  True,  False, "out_count = out_count + 1, out_id = :id"),
    "return_in":  Rule(False, False, False, "out_count = MAX(out_count - 1, 0)"),
    "return_out": Rule(False, False, False, "in_held = 0, in_id = :id"),
    "destroy":    Rule(True,  False, False, "destroyed_id = :id"),
    "check":      Rule(False, False, False, ""),
}  # fmt: skip
assert tuple(RULES) == MOVEMENTS


class Verdict(NamedTuple):
    """The rules' answer for one valid code: verdict, reason, detail, earlier scan id."""

    verdict: str
    reason: str | None
    detail: str
    earlier_id: int | None


ACCEPTED = Verdict("accepted", None, "", None)


def judge(movement: str, state: Mapping | None, *, allowed: int) -> Verdict:
    """Apply ``movement``'s rule to a code's ``state`` (None: never seen).

    ``allowed`` is how often one code of this product may be dispensed (split packs).
    """
    if state is None:
        return ACCEPTED
    rule = RULES[movement]
    if rule.refuses_destroyed and state["destroyed_id"] is not None:
        return Verdict("duplicate", "destroyed", "this code was recorded as destroyed", state["destroyed_id"])
    if rule.refuses_dispensed and state["out_count"] >= allowed:
        detail = "dispensed and not returned since"
        if allowed > 1:
            detail = f"split pack: dispensed {state['out_count']} of {allowed} times"
        return Verdict("duplicate", "already_dispensed", detail, state["out_id"])
    if rule.refuses_held and state["in_held"]:
        return Verdict(
            "duplicate", "already_received", "received and not returned to the supplier since", state["in_id"]
        )
    return ACCEPTED
