"""Feedback a person can trust: what the operator sees and hears per decision and device state.

Every backend shares the rules of :class:`Feedback`: which pattern a decision gets
(``product_barcode`` for that reject reason, nothing for a double read), the device
states, and never the accept pattern while the station is in fault. Backends:
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
the next committed decision.

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

from agent.domain import Decision
from agent.sinks.patterns import PATTERN_NAMES, STATES

SELF_TEST = tuple(name for name in PATTERN_NAMES if name != "double_read")

log = logging.getLogger(__name__)

#: The cause under which a ``fault`` decision (ledger not writable) holds the fault state.
LEDGER = "ledger"

#: States callers set; ``ready`` follows from them.
SETTABLE_STATES = tuple(name for name in STATES if name != "ready")


def pattern_for(decision: Decision) -> str:
    """The pattern a decision gets before any state is considered."""
    return "product_barcode" if decision.reason == "product_barcode" else decision.verdict


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
            if name == "accepted" and self.is_on("fault"):
                # On disk, but the station needs help: the operator must not hear "all good".
                name = "fault"
            self.play(name, decision)
            if decision.verdict == "fault":
                # After the pattern, so that the fault look waits beneath it.
                self.set_state("fault", True, cause=LEDGER)

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
        """The states on now (``ready`` whenever there is no fault)."""
        with self.lock:
            on = {name for name, causes in self._causes.items() if causes}
            if "fault" not in on:
                on.add("ready")
            return frozenset(on)

    def is_on(self, name: str) -> bool:
        return name in self.states()

    def causes(self, name: str) -> list[str]:
        with self.lock:
            return sorted(self._causes.get(name, ()))

    def play(self, name: str, decision: Decision | None = None) -> None:
        """Show pattern ``name`` (from :data:`agent.sinks.patterns.PATTERN_NAMES`)."""

    def show_states(self, states: frozenset[str]) -> None:
        """Show the device states beneath the patterns."""

    def self_test(self, pause_s: float = 2.5) -> None:
        """Play every pattern once, in order, for a technician to see and hear (``doctor``)."""
        for name in SELF_TEST:
            self.play(name)
            time.sleep(pause_s)

    def close(self) -> None:
        """Release devices; nothing shows afterwards."""


_STYLE = {
    "accepted": ("32", "[ OK ]", 1),
    "duplicate": ("31;1", "[DUP!]", 2),
    "rejected": ("31", "[ NO ]", 3),
    "product_barcode": ("33;1", "[EAN?]", 2),
    "fault": ("41;97", "[FAULT]", 3),
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
            message = ""
        elif name == "fault" and decision.verdict != "fault":
            reasons = ", ".join(self.causes("fault")) or "fault"
            message = f"{decision.text} recorded, but the station is in fault ({reasons})"
        elif decision.reason in (None, name):
            message = decision.text
        else:
            message = f"{decision.reason}: {decision.text}"
        self.show(name, message)

    def show(self, pattern: str, message: str) -> None:
        colour, tag, bells = _STYLE[pattern]
        self._write(f"{tag} {pattern} {message}", colour, bells if self.bell else 0)

    def show_states(self, states: frozenset[str]) -> None:
        names = [name for name in STATES if name in states]
        colour = "41;97" if "fault" in states else "32" if names == ["ready"] else "33"
        self._write(f"[STATE] {', '.join(names)}", colour, 0)

    def _write(self, line: str, colour: str, bells: int) -> None:
        if self.colour:
            line = f"\x1b[{colour}m{line}\x1b[0m"
        self.stream.write(line + "\a" * bells + "\n")
        self.stream.flush()


class NoFeedback(Feedback):
    """Feedback that shows nothing (``backend = "none"``); it still keeps the states."""
