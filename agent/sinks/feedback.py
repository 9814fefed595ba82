"""Feedback a person can trust: what the operator sees and hears per decision and device state.

Every backend shares the rules of :class:`Feedback`: which pattern a decision gets
(:func:`pattern_for`: ``product_barcode`` for that reject reason, ``wrong_drug`` for a
code not on the open document, nothing for a double read, ...), the device states,
and never an "all good" pattern while the station is in fault. Backends:
``console`` (a coloured line and the terminal bell on stderr, for machines without
GPIO), ``gpio`` (LEDs and a buzzer, :class:`agent.sinks.gpio.GpioFeedback`) and
``none``.

Device states are set by whoever knows them, from any thread; a state is on while any
cause holds it::

    feedback.set_state("broker_offline", True)                      # the uplink lost its broker
    feedback.set_state("backlog", True)                             # oldest undelivered event too old
    feedback.set_state("scanner_missing", True, cause="counter-1")  # a source lost its device
    feedback.set_state("fault", True, cause="disk_full")            # and False when it is over

The feedback itself holds ``fault`` with cause ``ledger`` from a ``fault`` decision until
the next committed decision, and ``locked`` from a decision that locks the station (or a
``station_locked`` rejection) until an ``acknowledged`` one. At start the runner sets
``locked`` from the ledger, since a lock outlives a restart.

>>> import io
>>> out = io.StringIO()
>>> ConsoleFeedback(out, colour=False, bell=False).show("accepted", "81234567890123456789")
>>> out.getvalue()
'[ OK ] accepted 81234567890123456789\\n'
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from agent.domain import ENTRIES, Decision
from agent.sinks.patterns import PATTERN_NAMES, STATES
from agent.sinks.printer import document_tag, entry_text

SELF_TEST = tuple(name for name in PATTERN_NAMES if name != "double_read")

log = logging.getLogger(__name__)

#: The cause under which a ``fault`` decision (ledger not writable) holds the fault state.
LEDGER = "ledger"

#: States callers set; ``ready`` follows from them.
SETTABLE_STATES = tuple(name for name in STATES if name != "ready")


#: ``(verdict, reason)`` -> pattern; ``(verdict, None)`` for any other reason of that verdict.
#: A verdict in neither gets the pattern of its own name.
DECISION_PATTERNS: dict[tuple[str, str | None], str] = {
    ("rejected", "product_barcode"): "product_barcode",
    ("rejected", "not_on_document"): "wrong_drug",
    ("rejected", "line_complete"): "over_count",
    ("rejected", "in_document"): "over_count",
    ("rejected", "document_full"): "over_count",
    ("rejected", "station_locked"): "locked",
    # Under lifecycle "warn" the scan is recorded: it must read as accepted, with a hint.
    ("accepted", "never_received"): "flagged",
    ("accepted", "never_dispensed"): "flagged",
    ("accepted", "not_on_manifest"): "flagged",
    # Not on the delivery's manifest: set it aside for the supplier, as a wrong drug is.
    ("rejected", "not_on_manifest"): "wrong_drug",
    # dispensed_before (回流) keeps the duplicate pattern: ("duplicate", None).
    ("opened", None): "document_opened",
    ("closed", "complete"): "document_complete",
    ("closed", "complete_with_exceptions"): "document_complete",
    ("closed", None): "document_incomplete",
    ("void", None): "void",
    ("reversal", None): "void",
    ("exception", None): "exception",
    ("locked", None): "locked",
    ("acknowledged", None): "acknowledged",
}

#: Patterns that say "all good": while the station is in fault the fault pattern plays instead.
ALL_CLEAR = ("accepted", "flagged", "document_opened", "document_complete", "acknowledged")


def pattern_for(decision: Decision) -> str:
    """The pattern a decision gets before any state is considered.

    Two rules beyond the table: a decision that locks the station gets ``locked``
    (what the operator must do now is fetch a supervisor), and the accepted scan that
    completes its document gets the ``document_complete`` chime, so the pharmacist
    hears "that was the last one" with the box in hand; closing it complete chimes
    again. A flagged scan keeps ``flagged`` even then: a warning is never covered by
    a chime (the close still chimes).

    >>> from types import SimpleNamespace as D
    >>> pattern_for(D(verdict="rejected", reason="not_on_document", locks=False, progress=None))
    'wrong_drug'
    >>> pattern_for(D(verdict="accepted", reason=None, locks=False, progress={"complete": True}))
    'document_complete'
    """
    if decision.locks:
        return "locked"
    verdict, reason = decision.verdict, decision.reason
    name = DECISION_PATTERNS.get((verdict, reason)) or DECISION_PATTERNS.get((verdict, None), verdict)
    if name == "accepted" and (decision.progress or {}).get("complete"):
        # Once complete, a document refuses every further scan: only the completing one is
        # accepted with progress complete.
        return "document_complete"
    if verdict == "closed" and ((decision.record or {}).get("reconciliation") or {}).get("discrepancies"):
        # The delivery does not match its manifest: the dock must look before signing.
        return "delivery_discrepancy"
    return name


def lock_change(decision: Decision) -> bool | None:
    """Whether the station is locked after ``decision`` (None: the decision does not say).

    A ``station_locked`` rejection says so too, so the state holds even if nobody
    set it at start.
    """
    if decision.locks or decision.verdict == "locked" or decision.reason == "station_locked":
        return True
    if decision.verdict == "acknowledged":
        return False
    return None


class Feedback:
    """The rules every backend shares. Subclasses implement :meth:`play` and
    :meth:`show_states`; both run with :attr:`lock` held and must return at once."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._causes: dict[str, set[str]] = {name: set() for name in SETTABLE_STATES}

    def decided(self, decision: Decision) -> None:
        """Called by the pipeline right after each commit."""
        with self.lock:
            if decision.verdict != "fault" and LEDGER in self._causes["fault"]:
                # A decision was committed, so the ledger writes again.
                self.set_state("fault", False, cause=LEDGER)
            name = pattern_for(decision)
            if name in ALL_CLEAR and self._causes["fault"]:  # is_on("fault"), without building every state
                # On disk, but the station needs help: the operator must not hear "all good".
                name = "fault"
            self.play(name, decision)
            # States after the pattern, so that their looks wait beneath it.
            if decision.verdict == "fault":
                self.set_state("fault", True, cause=LEDGER)
            locked = lock_change(decision)
            if locked is not None:
                self.set_state("locked", locked)

    def set_state(self, name: str, on: bool, *, cause: str = "") -> None:
        """Turn device state ``name`` on or off for ``cause``; safe from any thread."""
        if name not in SETTABLE_STATES:
            raise ValueError(f"unknown device state {name!r}; allowed: {', '.join(SETTABLE_STATES)}")
        with self.lock:
            before = self.states()
            causes = self._causes[name]
            if on:
                causes.add(cause)
            else:
                causes.discard(cause)
            after = self.states()
            if after != before:
                log.info("device state %s %s%s", name, "on" if on else "off", f" ({cause})" if cause else "")
                try:
                    self.show_states(after)
                except Exception:
                    # The caller (uplink, a source) must not fall over because an LED did.
                    log.exception("could not show device states %s", ", ".join(sorted(after)))

    def states(self) -> frozenset[str]:
        """The states on now (``ready`` whenever the station is neither in fault nor locked)."""
        with self.lock:
            on = {name for name, causes in self._causes.items() if causes}
            if not on & {"fault", "locked"}:
                on.add("ready")
            return frozenset(on)

    def is_on(self, name: str) -> bool:
        return name in self.states()

    def causes(self, name: str) -> list[str]:
        with self.lock:
            return sorted(self._causes.get(name, ()))

    def alarm(self, name: str) -> None:
        """Play pattern ``name`` for something no decision of this station says (a
        ``conflict`` with another station, told by the uplink); safe from any thread."""
        with self.lock:
            self.play(name)

    def play(self, name: str, decision: Decision | None = None) -> None:
        """Show pattern ``name`` (from :data:`agent.sinks.patterns.PATTERN_NAMES`)."""

    def show_states(self, states: frozenset[str]) -> None:
        """Show the device states beneath the patterns."""

    def self_test(self, gap_s: float = 0.8) -> None:
        """Play every pattern once, in order, for a technician to see and hear (``doctor``).

        Each pattern plays whole, then ``gap_s`` of dark before the next, so a long
        one (``conflict``) is never cut and a short one keeps nobody waiting.
        """
        for name in SELF_TEST:
            self.play(name)
            time.sleep(self.pattern_duration(name) + gap_s)

    def pattern_duration(self, name: str) -> float:
        """How long pattern ``name`` takes to play here, in seconds (0 where it shows at once)."""
        return 0.0

    def close(self) -> None:
        """Release devices; nothing shows afterwards."""


#: Pattern -> colour, tag, bells.
_STYLE = {
    "accepted": ("32", "[ OK ]", 1),
    "duplicate": ("31;1", "[DUP!]", 2),
    "rejected": ("31", "[ NO ]", 3),
    "product_barcode": ("33;1", "[EAN?]", 2),
    "fault": ("41;97", "[FAULT]", 3),
    "flagged": ("33", "[OK !]", 1),
    "wrong_drug": ("31;1", "[DRUG]", 2),
    "over_count": ("31", "[OVER]", 2),
    "document_opened": ("36", "[OPEN]", 1),
    "document_complete": ("32;1", "[DONE]", 1),
    "document_incomplete": ("33", "[PART]", 2),
    "delivery_discrepancy": ("33;1", "[DIFF]", 3),
    "locked": ("41;97", "[LOCK]", 3),
    "void": ("35", "[VOID]", 1),
    "exception": ("35", "[EXCP]", 1),
    "acknowledged": ("32", "[ACK ]", 1),
    "conflict": ("33;1", "[CONF]", 3),
}


class ConsoleFeedback(Feedback):
    """A coloured line and ``n`` bells per verdict on a terminal (stderr by default),
    and a ``[STATE]`` line whenever the device states change."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None, bell: bool | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        tty = self.stream.isatty()
        self.colour = tty if colour is None else colour
        self.bell = tty if bell is None else bell

    def play(self, name: str, decision: Decision | None = None) -> None:
        if name not in _STYLE:
            return  # a double read: quietly nothing
        if decision is None:
            self.show(name, "another station accepted a code this one accepted" if name == "conflict" else "")
        elif decision.verdict in ENTRIES or name == "flagged":
            # Their words say what they are (an entry row's verdict; "accepted" first for a
            # flagged scan, which is recorded); the pattern's name would only repeat it.
            self.show(name, self._message(name, decision), named=False)
        else:
            self.show(name, self._message(name, decision))

    def _message(self, name: str, decision: Decision) -> str:
        entry = decision.verdict in ENTRIES
        if name == "fault" and decision.verdict != "fault":
            reasons = ", ".join(self.causes("fault")) or "fault"
            what = entry_text(decision) if entry else decision.text
            return f"{what} recorded, but the station is in fault ({reasons})"
        if entry:
            return entry_text(decision)
        tag = document_tag(decision)
        if name == "flagged":
            return " ".join(w for w in ("accepted", decision.text, tag, f"flagged {decision.reason}") if w)
        message = decision.text if decision.reason in (None, name) else f"{decision.reason}: {decision.text}"
        return f"{message} {tag}" if tag else message

    def show(self, pattern: str, message: str, *, named: bool = True) -> None:
        """One line: the pattern's tag, its name (unless ``named`` is false) and ``message``."""
        colour, tag, bells = _STYLE[pattern]
        words = [tag, pattern, message] if named else [tag, message]
        self._write(" ".join(w for w in words if w), colour, bells if self.bell else 0)

    def show_states(self, states: frozenset[str]) -> None:
        names = [name for name in STATES if name in states]
        colour = "41;97" if states & {"fault", "locked"} else "32" if names == ["ready"] else "33"
        self._write(f"[STATE] {', '.join(names)}", colour, 0)

    def _write(self, line: str, colour: str, bells: int) -> None:
        if self.colour:
            line = f"\x1b[{colour}m{line}\x1b[0m"
        self.stream.write(line + "\a" * bells + "\n")
        self.stream.flush()


class NoFeedback(Feedback):
    """Feedback that shows nothing (``backend = "none"``); it still keeps the states."""
