"""Real events for the collector's tests: recorded by a real ledger, built by the agent's own
:func:`agent.events.event_from_row`, so their hashes and chains are what a kiosk sends."""

from __future__ import annotations

from pathlib import Path

from agent import codes
from agent.events import encode, event_from_row
from agent.ledger import Ledger
from agent.read import Read
from tests.support.backlog import code


def ledger_events(
    path: Path, count: int, *, device_id: str = "kiosk-1", site_id: str = "site-1", start: int = 0, t0: float = 0.0
) -> list[dict]:
    """``count`` accepted dispenses (codes ``start``..), each as the event the uplink would publish.

    Reads of one code twice in a row (1 s apart, within the double-read window) make
    double reads: ledger rows without a seq, which publish nothing.
    """
    ledger = Ledger.open(path, device_id=device_id, site_id=site_id)
    ledger.conn.execute("PRAGMA synchronous=OFF")
    try:
        for n in range(start, start + count):
            read = Read(code(n), "stdin", "stdin:console", scanner="console", t_first=t0 + n * 10)
            ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
        return all_events(ledger)
    finally:
        ledger.close()


def all_events(ledger: Ledger) -> list[dict]:
    rows = ledger.conn.execute("SELECT * FROM scans WHERE seq IS NOT NULL ORDER BY seq").fetchall()
    return [event_from_row(row) for row in rows]


def topic(event: dict, prefix: str = "trace/v1") -> str:
    kind = "documents" if event["schema"] == "document-event/1" else "events"
    return f"{prefix}/{event['site_id']}/{event['device_id']}/{kind}"


def payload(event: dict) -> bytes:
    return encode(event)
