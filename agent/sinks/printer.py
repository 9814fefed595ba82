"""Printing decisions for ``scan-agent run``: one line each, plain or JSON.

>>> import io
>>> from agent.domain import Decision
>>> from agent.codes import parse
>>> from agent.read import Read
>>> out = io.StringIO()
>>> read = Read(b"123", "stdin", "stdin")
>>> d = Decision("rejected", "wrong_length", "3 digits", "dispense", "123", parse("123"), read)
>>> DecisionPrinter(out).decided(d); out.getvalue()
'rejected wrong_length 123 (3 digits)\\n'
"""

from __future__ import annotations

import json
from typing import TextIO

from agent.domain import Decision


class DecisionPrinter:
    """Writes and flushes one line per decision, so a reader (or a crash test)
    sees each decision as soon as it is committed."""

    def __init__(self, stream: TextIO, *, as_json: bool = False) -> None:
        self.stream = stream
        self.as_json = as_json

    def decided(self, decision: Decision) -> None:
        if self.as_json:
            line = json.dumps(decision.to_dict(), ensure_ascii=False)
        else:
            if decision.verdict == "accepted":
                line = f"accepted {decision.text} seq={decision.seq} {decision.movement}"
            else:
                line = f"{decision.verdict} {decision.reason} {decision.text}"
            if decision.detail:
                line += f" ({decision.detail})"
            if decision.earlier is not None:
                e = decision.earlier
                line += f" earlier: {e.movement} at {e.ts} on {e.device_id}/{e.site_id} seq={e.seq}"
        self.stream.write(line + "\n")
        self.stream.flush()
