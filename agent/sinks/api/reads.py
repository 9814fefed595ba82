"""What the API reads from the ledger, on connections of its own that only ever read.

The pipeline's connection belongs to the pipeline thread; these are separate, and
``PRAGMA query_only`` makes them refuse any write. In WAL mode a reader never
waits for the writer, nor the writer for a reader, so no read here slows a scan.

>>> import os, tempfile
>>> from agent import codes
>>> from agent.ledger import Ledger
>>> from agent.read import Read
>>> path = os.path.join(tempfile.mkdtemp(), "ledger.db")
>>> ledger = Ledger.open(path, device_id="k", site_id="s")
>>> for n in range(3):
...     read = Read(b"8123456789012345678%d" % n, "stdin", "stdin")
...     _ = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
>>> reads = LedgerReads(path, device_id="k")
>>> [e["seq"] for e in reads.events(after=1, upto=3)], reads.last_seq()
([2, 3], 3)
>>> reads.outbox_depth(), reads.document_id_exists("nope")
(3, False)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from agent.events import event_from_row
from agent.ledger import connect
from agent.ledger.outbox import Outbox
from agent.ledger.reports import show_document
from agent.ledger.store import entry_row, last_seq, load_lock, load_open_document


class LedgerReads:
    """One read-only connection and the reads the API makes on it.

    Threads: any thread, one at a time; every method holds :attr:`lock`, so the
    API's worker threads can share one instance.
    """

    def __init__(self, path: str | Path, *, device_id: str, split_packs: Mapping[str, int] | None = None) -> None:
        conn = connect(path)
        conn.execute("PRAGMA query_only=ON")
        self.outbox = Outbox(conn, path)
        self.conn: sqlite3.Connection = conn
        self.device_id = device_id
        self.split_packs = split_packs
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def events(self, *, after: int, upto: int) -> list[dict]:
        """The events (as the uplink publishes them) with ``after < seq <= upto``, in seq order."""
        if upto <= after:
            return []
        with self.lock:
            rows = self.outbox.by_seq(self.device_id, after + 1, upto)
        return [event_from_row(row) for row in rows]

    def last_seq(self) -> int:
        with self.lock:
            return last_seq(self.conn, self.device_id)

    def outbox_depth(self) -> int:
        with self.lock:
            return self.outbox.depth()

    def oldest_undelivered_age_s(self) -> float | None:
        """Seconds since the oldest event not yet delivered to the broker was recorded, or None."""
        with self.lock:
            oldest = self.outbox.oldest_pending_ts()
        if oldest is None:
            return None
        recorded = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
        return max(0.0, (datetime.now(UTC) - recorded).total_seconds())

    def open_document(self) -> dict | None:
        """The open document: ``{id, kind, movement, progress}``, or None."""
        with self.lock:
            doc = load_open_document(self.conn, self.split_packs)
        if doc is None:
            return None
        return {"id": doc.id, "kind": doc.document.kind, "movement": doc.document.movement, "progress": doc.progress()}

    def lock_state(self) -> dict | None:
        """The station's lock (event id, movement, cause) while not acknowledged, or None."""
        with self.lock:
            return load_lock(self.conn)

    def document(self, doc_id: str) -> dict:
        """One document with its progress (:func:`agent.ledger.reports.show_document`)."""
        with self.lock:
            return show_document(self.conn, doc_id)

    def document_id_exists(self, doc_id: str) -> bool:
        with self.lock:
            return entry_row(self.conn, doc_id, "opened") is not None

    def event_id_exists(self, event_id: str) -> bool:
        with self.lock:
            return self.conn.execute("SELECT 1 FROM scans WHERE event_id = ?", (event_id,)).fetchone() is not None
