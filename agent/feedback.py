"""Feedback a person can trust: what the operator sees and hears per decision.

Backends: ``console`` (a coloured line and the terminal bell on stderr, for
machines without GPIO) and ``none``.

>>> import io
>>> out = io.StringIO()
>>> ConsoleFeedback(out, colour=False, bell=False).show("accepted", "81234567890123456789")
>>> out.getvalue()
'[ OK ] accepted 81234567890123456789\\n'
"""

from __future__ import annotations

import sys
from typing import TextIO

from agent.ledger import Decision

_STYLE = {
    "accepted": ("32", "[ OK ]", 1),
    "duplicate": ("31;1", "[DUP!]", 2),
    "rejected": ("31", "[ NO ]", 3),
    "product_barcode": ("33;1", "[EAN?]", 2),
    "fault": ("41;97", "[FAULT]", 3),
}


class ConsoleFeedback:
    """A coloured line and ``n`` bells per verdict on a terminal (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None, bell: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        tty = self.stream.isatty()
        self.colour = tty if colour is None else colour
        self.bell = tty if bell is None else bell

    def decided(self, decision: Decision) -> None:
        if decision.verdict == "double_read":
            return
        pattern = "product_barcode" if decision.reason == "product_barcode" else decision.verdict
        message = decision.text if decision.reason in (None, pattern) else f"{decision.reason}: {decision.text}"
        self.show(pattern, message)

    def show(self, pattern: str, message: str) -> None:
        colour, tag, bells = _STYLE[pattern]
        line = f"{tag} {pattern} {message}"
        if self.colour:
            line = f"\x1b[{colour}m{line}\x1b[0m"
        if self.bell:
            line += "\a" * bells
        self.stream.write(line + "\n")
        self.stream.flush()


class NoFeedback:
    """Feedback that does nothing (``backend = "none"``)."""

    def decided(self, decision: Decision) -> None:
        pass
