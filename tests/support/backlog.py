"""A ledger with a backlog of undelivered events, made fast for tests and benches.

Each scan still goes through :meth:`Ledger.decide_and_record`; only the fsync
per commit is skipped (``synchronous=OFF`` on this setup connection), since
durability of the setup itself is not what is being tested.
"""

from __future__ import annotations

from pathlib import Path

from agent import codes
from agent.ledger import Ledger
from agent.read import Read


def code(n: int) -> bytes:
    """The ``n``-th distinct valid 20-digit trace code."""
    return b"8%019d" % n


def fill_ledger(path: Path, count: int, *, device_id: str = "kiosk-1", site_id: str = "site-1", start: int = 0) -> None:
    """Record ``count`` accepted dispense scans (codes ``start``..) in the ledger at ``path``."""
    ledger = Ledger.open(path, device_id=device_id, site_id=site_id)
    ledger.conn.execute("PRAGMA synchronous=OFF")
    try:
        for n in range(start, start + count):
            read = Read(code(n), "stdin", "stdin:console", scanner="console")
            ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    finally:
        ledger.close()
