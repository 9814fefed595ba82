"""The duplicate and lifecycle rules of the domain, as one table.

Each movement says which earlier states of a code make this scan a duplicate,
and how an accepted scan changes the code's state (``code_state``). A code's
:class:`State` counts dispenses not yet returned (``out_count``), whether it is
held after a receiving (``in_held``) and whether it was destroyed. Pure: the
store reads the state, asks :func:`judge`, and writes what the rule's ``then`` gives.

>>> judge("dispense", State(), allowed=1)
Verdict(verdict='accepted', reason=None, detail='', earlier_id=None)
>>> sold = RULES["dispense"].then(State(), 7)
>>> sold
State(out_count=1, out_id=7, in_held=0, in_id=None, destroyed_id=None)
>>> judge("dispense", sold, allowed=1).reason
'already_dispensed'
>>> judge("return_in", sold, allowed=1).verdict
'accepted'
>>> judge("dispense", RULES["return_in"].then(sold, 8), allowed=1).verdict
'accepted'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from agent.domain import MOVEMENTS


class State(NamedTuple):
    """A code's movement state: its ``code_state`` row, less the code."""

    #: dispenses (or uses) not yet returned by a customer
    out_count: int = 0
    #: the scan that last dispensed it
    out_id: int | None = None
    #: received and not yet returned to the supplier
    in_held: int = 0
    #: the scan that last received (or returned to the supplier) it
    in_id: int | None = None
    #: the scan that destroyed it
    destroyed_id: int | None = None


class Rule(NamedTuple):
    """What one movement refuses, and what it changes when accepted."""

    #: a destroyed code is a duplicate
    refuses_destroyed: bool
    #: a code dispensed and not returned (split packs: as often as allowed) is a duplicate
    refuses_dispensed: bool
    #: a code received and not returned to the supplier is a duplicate
    refuses_held: bool
    #: the state after an accepted scan (given the state before and this scan's id)
    then: Callable[[State, int], State]


#: movement      destroyed  dispensed  held   then
RULES: dict[str, Rule] = {
    "receive":    Rule(False, False, True,  lambda s, scan: s._replace(in_held=1, in_id=scan)),
    "dispense":   Rule(True,  True,  False, lambda s, scan: s._replace(out_count=s.out_count + 1, out_id=scan)),
    "use":        Rule(True,  True,  False, lambda s, scan: s._replace(out_count=s.out_count + 1, out_id=scan)),
    "return_in":  Rule(False, False, False, lambda s, scan: s._replace(out_count=max(s.out_count - 1, 0))),
    "return_out": Rule(False, False, False, lambda s, scan: s._replace(in_held=0, in_id=scan)),
    "destroy":    Rule(True,  False, False, lambda s, scan: s._replace(destroyed_id=scan)),
    "check":      Rule(False, False, False, lambda s, scan: s),
}  # fmt: skip
assert tuple(RULES) == MOVEMENTS


class Verdict(NamedTuple):
    """The rules' answer for one valid code: verdict, reason, detail, earlier scan id."""

    verdict: str
    reason: str | None
    detail: str
    earlier_id: int | None


ACCEPTED = Verdict("accepted", None, "", None)


def judge(movement: str, state: State, *, allowed: int) -> Verdict:
    """Apply ``movement``'s rule to a code's ``state`` (``State()`` for a code never seen).

    ``allowed`` is how often one code of this product may be dispensed (split packs).
    """
    rule = RULES[movement]
    if rule.refuses_destroyed and state.destroyed_id is not None:
        return Verdict("duplicate", "destroyed", "this code was recorded as destroyed", state.destroyed_id)
    if rule.refuses_dispensed and state.out_count >= allowed:
        detail = "dispensed and not returned since"
        if allowed > 1:
            detail = f"split pack: dispensed {state.out_count} of {allowed} times"
        return Verdict("duplicate", "already_dispensed", detail, state.out_id)
    if rule.refuses_held and state.in_held:
        return Verdict("duplicate", "already_received", "received and not returned to the supplier since", state.in_id)
    return ACCEPTED
