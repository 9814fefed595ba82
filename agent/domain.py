"""The vocabulary every part of the agent shares: movements, verdicts, a decision.

It holds no rules and touches no database, so sinks, config and the uplink can
speak of decisions without importing the ledger that makes them.

>>> check_movement("dispense")
'dispense'
>>> check_movement("sell")
Traceback (most recent call last):
ValueError: 'sell' is not allowed; allowed: receive, dispense, use, return_in, return_out, destroy, check
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.codes import Rejection, TraceCode
from agent.read import Read

#: What a station does with a pack; the duplicate rules differ per movement.
MOVEMENTS = ("receive", "dispense", "use", "return_in", "return_out", "destroy", "check")
#: What the ledger can decide for a read (``fault`` is the pipeline's: not recorded).
VERDICTS = ("accepted", "rejected", "duplicate", "double_read")
#: One bill (单据) or document holds at most this many codes (convention of the platforms).
BILL_LIMIT = DOCUMENT_LIMIT = 3500

#: A document's kind decides the movement of every scan in it.
DOCUMENT_KINDS = {
    "sale": "dispense",
    "prescription": "dispense",
    "ward_order": "use",
    "delivery": "receive",
    "customer_return": "return_in",
    "supplier_return": "return_out",
    "destruction": "destroy",
    "stock_check": "check",
}
#: Ledger rows that record something other than a read (their ``record`` column holds
#: what): a document opened or closed, a scan voided (``reversal`` once its document
#: has closed), an exception against a line, the station locked and acknowledged, a
#: supplier's manifest imported. (A case scan is a scan with a ``record``: its units.)
ENTRIES = ("opened", "closed", "void", "reversal", "exception", "locked", "acknowledged", "manifest")
#: Reasons the ledger gives (beside the code checks' own, :data:`agent.codes.REASONS`).
LEDGER_REASONS = (
    "already_dispensed",
    "already_received",
    "destroyed",
    "dispensed_before",
    "never_received",
    "never_dispensed",
    "not_on_document",
    "line_complete",
    "in_document",
    "document_full",
    "bill_full",
    "station_locked",
    "document_refused",
    "received_in_case",
    "parent_child_same_document",
    "not_on_manifest",
    # Another station of the site accepted the same code while this one did too (the
    # peers' events arrived later): an alarm, and the reason of the lock it may set.
    "conflict",
)
#: How a document ends.
DOCUMENT_STATUSES = ("complete", "complete_with_exceptions", "incomplete")
#: ``[codes] lifecycle``: whether a code's history across movements is checked.
LIFECYCLES = ("off", "warn", "strict")


def check_movement(value: object) -> str:
    """``value`` if it is a movement; otherwise ValueError naming what is allowed.

    The one place a movement from a config file, a command or the command line is checked.
    """
    if value not in MOVEMENTS:
        raise ValueError(f"{value!r} is not allowed; allowed: {', '.join(MOVEMENTS)}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Earlier:
    """The earlier scan a duplicate conflicts with: when, where, which movement."""

    seq: int | None
    event_id: str
    ts: str
    device_id: str
    site_id: str
    movement: str


@dataclass(frozen=True)
class Decision:
    """What the ledger decided for one read, after it was committed."""

    verdict: str
    reason: str | None
    detail: str
    movement: str
    text: str
    parsed: TraceCode | Rejection
    read: Read
    scan_id: int | None = None
    seq: int | None = None
    event_id: str | None = None
    ts: str | None = None
    hash: str | None = None
    earlier: Earlier | None = None
    #: The open document this scan belongs to: ``{"id", "kind"}``.
    document: dict | None = None
    #: Collected / expected units of that document, per line and in total.
    progress: dict | None = None
    #: For an entry row (see :data:`ENTRIES`): what it records.
    record: dict | None = None
    #: This decision locked the station (``[documents] lock_on``) until acknowledged.
    locks: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready summary, as ``scan-agent run --json`` prints it."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail,
            "code": self.text,
            "kind": self.parsed.kind,
            "product_id": self.parsed.product_id or None,
            "serial": self.parsed.serial or None,
            "movement": self.movement,
            "event_id": self.event_id,
            "seq": self.seq,
            "ts": self.ts,
            "source": self.read.source_id,
            "earlier": None if self.earlier is None else self.earlier.__dict__,
            "document": self.document,
            "progress": self.progress,
            "record": self.record,
            "locks": self.locks,
        }
