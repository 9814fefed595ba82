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

With ``[codes] lifecycle`` on, a code's history across movements counts too:

>>> judge("dispense", State(), allowed=1, lifecycle="warn")
Verdict(verdict='accepted', reason='never_received', detail='never received at this site', earlier_id=None)
>>> judge("dispense", State(), allowed=1, lifecycle="strict").verdict
'rejected'
>>> judge("receive", sold, allowed=1, lifecycle="warn").reason
'dispensed_before'
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
    #: the state after that scan is voided (given the state it left); ``undo(then(s, n))``
    #: is ``s`` whenever ``s`` held no earlier scan of the same kind (see :func:`undo`)
    undo: Callable[[State], State]
    #: lifecycle: what this movement needs in the code's history at this site
    #: (``received``: it was received here; ``dispensed``: it was dispensed here),
    #: or what it refuses (``not_dispensed``: a sold code turning up again, 回流)
    lifecycle: str | None


def _out(s: State, scan: int) -> State:
    return s._replace(out_count=s.out_count + 1, out_id=scan)


def _out_undone(s: State) -> State:
    count = max(s.out_count - 1, 0)
    return s._replace(out_count=count, out_id=s.out_id if count else None)


#: movement      destroyed  dispensed  held   then, undo, lifecycle
RULES: dict[str, Rule] = {
    "receive":    Rule(False, False, True,  lambda s, scan: s._replace(in_held=1, in_id=scan),
                       lambda s: s._replace(in_held=0, in_id=None), "not_dispensed"),
    "dispense":   Rule(True,  True,  False, _out, _out_undone, "received"),
    "use":        Rule(True,  True,  False, _out, _out_undone, "received"),
    "return_in":  Rule(False, False, False, lambda s, scan: s._replace(out_count=max(s.out_count - 1, 0)),
                       lambda s: s._replace(out_count=s.out_count + 1), "dispensed"),
    "return_out": Rule(False, False, False, lambda s, scan: s._replace(in_held=0, in_id=scan),
                       lambda s: s._replace(in_held=1), None),
    "destroy":    Rule(True,  False, False, lambda s, scan: s._replace(destroyed_id=scan),
                       lambda s: s._replace(destroyed_id=None), None),
    "check":      Rule(False, False, False, lambda s, scan: s, lambda s: s, None),
}  # fmt: skip
assert tuple(RULES) == MOVEMENTS


class Verdict(NamedTuple):
    """The rules' answer for one valid code: verdict, reason, detail, earlier scan id."""

    verdict: str
    reason: str | None
    detail: str
    earlier_id: int | None


ACCEPTED = Verdict("accepted", None, "", None)


def judge(movement: str, state: State, *, allowed: int, lifecycle: str = "off") -> Verdict:
    """Apply ``movement``'s rule to a code's ``state`` (``State()`` for a code never seen).

    ``allowed`` is how often one code of this product may be dispensed (split packs).
    ``lifecycle`` (``off``, ``warn``, ``strict``) also checks the code's history
    here: a sold code received again is a duplicate (``dispensed_before``, 回流)
    unless ``off``; a dispense of a code never received (``never_received``) or a
    customer return of one never dispensed (``never_dispensed``) is accepted with
    that reason under ``warn``, rejected under ``strict``.
    """
    rule = RULES[movement]
    if lifecycle != "off" and rule.lifecycle == "not_dispensed" and state.out_id is not None:
        return Verdict("duplicate", "dispensed_before", "this code was dispensed here before (回流)", state.out_id)
    if rule.refuses_destroyed and state.destroyed_id is not None:
        return Verdict("duplicate", "destroyed", "this code was recorded as destroyed", state.destroyed_id)
    if rule.refuses_dispensed and state.out_count >= allowed:
        detail = "dispensed and not returned since"
        if allowed > 1:
            detail = f"split pack: dispensed {state.out_count} of {allowed} times"
        return Verdict("duplicate", "already_dispensed", detail, state.out_id)
    if rule.refuses_held and state.in_held:
        return Verdict("duplicate", "already_received", "received and not returned to the supplier since", state.in_id)
    if lifecycle != "off":
        if rule.lifecycle == "received" and state.in_id is None:
            return _flagged(lifecycle, "never_received", "never received at this site")
        if rule.lifecycle == "dispensed" and state.out_id is None:
            return _flagged(lifecycle, "never_dispensed", "never dispensed at this site")
    return ACCEPTED


def _flagged(lifecycle: str, reason: str, detail: str) -> Verdict:
    return Verdict("accepted" if lifecycle == "warn" else "rejected", reason, detail, None)


def undo(movement: str, state: State) -> State:
    """The code's state once the accepted ``movement`` scan that left ``state`` is voided.

    Exact when the code had no earlier scan of the same kind; otherwise the counts
    are right and the "last scan" ids (used to name an earlier scan) are cleared.

    >>> undo("dispense", RULES["dispense"].then(State(in_held=1, in_id=3), 9))
    State(out_count=0, out_id=None, in_held=1, in_id=3, destroyed_id=None)
    """
    return RULES[movement].undo(state)
