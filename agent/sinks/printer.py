"""Printing decisions for ``scan-agent run``: one line each, plain or JSON.

Every plain line starts with the verdict. A scan in a document ends its first part
with the document and how far it has got; an entry row (a document opened or
closed, a void, ...) says what it records.

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
from collections.abc import Mapping
from typing import TextIO

from agent.domain import ENTRIES, Decision


class DecisionPrinter:
    """Writes and flushes one line per decision, so a reader (or a crash test)
    sees each decision as soon as it is committed."""

    def __init__(self, stream: TextIO, *, as_json: bool = False) -> None:
        self.stream = stream
        self.as_json = as_json

    def decided(self, decision: Decision) -> None:
        if self.as_json:
            line = json.dumps(decision.to_dict(), ensure_ascii=False)
        elif decision.verdict in ENTRIES:
            line = entry_text(decision)
        else:
            line = scan_line(decision)
        self.stream.write(line + "\n")
        self.stream.flush()


def scan_line(decision: Decision) -> str:
    """A scan's line: verdict, reason or seq, code, its document, detail, the earlier scan."""
    if decision.verdict == "accepted":
        line = f"accepted {decision.text} seq={decision.seq} {decision.movement}"
        if decision.reason:
            line += f" flagged {decision.reason}"  # recorded, with a warning (never_received, ...)
    else:
        line = f"{decision.verdict} {decision.reason} {decision.text}"
    tag = document_tag(decision)
    if tag:
        line += f" {tag}"
    if decision.detail:
        line += f" ({decision.detail})"
    if decision.earlier is not None:
        e = decision.earlier
        line += f" earlier: {e.movement} at {e.ts} on {e.device_id}/{e.site_id} seq={e.seq}"
    if decision.locks:
        line += " - station locked until a supervisor acknowledges"
    return line


def document_tag(decision: Decision) -> str:
    """``[kind id progress]`` for a row in a document, else "".

    >>> from types import SimpleNamespace as D
    >>> document_tag(D(document={"id": "RX1", "kind": "prescription"}, progress={"collected": 2, "expected": 3}))
    '[prescription RX1 2/3]'
    >>> document_tag(D(document=None, progress=None))
    ''
    """
    doc = decision.document
    if doc is None:
        return ""
    parts = [doc.get("kind") or "document", doc["id"]]
    if decision.progress is not None:
        parts.append(progress_text(decision.progress))
    return f"[{' '.join(parts)}]"


def progress_text(progress: Mapping) -> str:
    """Collected of expected units, or only collected for a document without lines.

    >>> progress_text({"collected": 6, "expected": 6}), progress_text({"collected": 4, "expected": None})
    ('6/6', '4 scanned')
    """
    if progress.get("expected") is None:
        return f"{progress['collected']} scanned"
    return f"{progress['collected']}/{progress['expected']}"


def entry_text(decision: Decision) -> str:
    """What an entry row records, in a few words, starting with its verdict.

    >>> from types import SimpleNamespace as D
    >>> lines = [{"product_id": "8123456", "expected": 2}, {"product_id": "8234567", "expected": 4}]
    >>> entry_text(D(verdict="opened", record={"id": "RX1", "kind": "prescription", "lines": lines}))
    'opened prescription RX1 (2 lines, 6 units)'
    >>> entry_text(D(verdict="closed", reason="complete", record={"id": "RX1", "collected": 6, "expected": 6},
    ...              progress=None))
    'closed RX1 complete 6/6'
    """
    record = decision.record or {}
    verdict = decision.verdict
    if verdict == "opened":
        return f"opened {record['kind']} {record['id']} ({_size(record.get('lines') or [])})"
    if verdict == "closed":
        return f"closed {record['id']} {decision.reason} {progress_text(decision.progress or record)}"
    if verdict == "acknowledged":
        return f"acknowledged by {record.get('by')} ({record.get('via')})"
    if verdict in ("void", "reversal"):
        text = decision.detail  # "void of <event id>: <reason>"
    elif verdict == "locked":
        cause = record.get("cause") or {}
        text = f"locked after {cause.get('reason') or cause.get('verdict')} of {cause.get('code')}"
    else:
        text = f"{verdict} {decision.detail}"
    tag = document_tag(decision)
    return f"{text} {tag}" if tag else text


def _size(lines: list[Mapping]) -> str:
    if not lines:
        return "no lines: any code counts"
    units = sum(line["expected"] for line in lines)
    return f"{len(lines)} line{'s' if len(lines) != 1 else ''}, {units} unit{'s' if units != 1 else ''}"
