"""The uplink's view of the ledger: undelivered events out, delivery and receipt records in.

It works on its own connection (:func:`agent.ledger.connect`), never on the
pipeline's, and it only ever reads ``scans`` and inserts into ``deliveries`` and
``receipts``: it decides nothing about a scan. Every row with a ``seq`` is an event (the
``outbox`` view says the same), a scan's or a document's (:mod:`agent.events`);
it is undelivered until ``deliveries`` has its id.
Lookups walk ``scans`` by rowid, which ``seq`` follows: no index on the scan path
serves them (:mod:`agent.ledger.schema`).

>>> from agent.ledger import Ledger
>>> from agent.read import Read
>>> from agent import codes
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ledger.db")
>>> ledger = Ledger.open(path, device_id="k", site_id="s")
>>> for n in range(3):
...     read = Read(b"8123456789012345678%d" % n, "stdin", "stdin")
...     _ = ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
>>> outbox = Outbox.open(path)
>>> [row["seq"] for row in outbox.pending()]
[1, 2, 3]
>>> outbox.mark_delivered([1, 2]); outbox.depth()
1
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from agent.clock import iso
from agent.ledger import connect

# A document's kind is in its ``opened`` row's record; the partial index
# ``scans_entries`` finds that row, and a loose scan (document NULL) costs no lookup.
_EVENTS = """
SELECT scans.*, earlier.event_id AS earlier_event_id, earlier.seq AS earlier_seq,
  (SELECT json_extract(opened.record, '$.kind') FROM scans AS opened
   WHERE opened.record IS NOT NULL AND opened.document = scans.document AND opened.verdict = 'opened'
   ORDER BY opened.id LIMIT 1) AS document_kind
FROM scans LEFT JOIN scans AS earlier ON earlier.id = scans.earlier_id
WHERE {where} AND scans.seq IS NOT NULL
ORDER BY scans.id
"""
_UNDELIVERED = " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.scan_id = scans.id)"
# Delivered (and, with :since, delivered at or before it) but above the receipt :above.
# A device's seq never runs ahead of the row id, so seq > :above starts at id > :above.
_UNCONFIRMED = (
    "scans.id > :above AND scans.seq > :above AND scans.device_id = :device"
    " AND EXISTS (SELECT 1 FROM deliveries WHERE deliveries.scan_id = scans.id"
    " AND (:since IS NULL OR deliveries.ts <= :since))"
)


class Outbox:
    """Undelivered events, oldest first, and the record of their delivery."""

    def __init__(self, conn: sqlite3.Connection, path: str | Path | None = None) -> None:
        self.conn = conn
        self.path = None if path is None else Path(path)
        # Every event at or below this scan id is delivered. Deliveries are
        # insert-only, so it only ever rises, and the oldest undelivered event
        # is found without walking millions of delivered ones each time.
        self._delivered_floor = 0

    @classmethod
    def open(cls, path: str | Path) -> Outbox:
        return cls(connect(path), path)

    def close(self) -> None:
        self.conn.close()

    def pending(self, after_id: int = 0, limit: int = 100) -> list[sqlite3.Row]:
        """Undelivered events' scan rows with ``id > after_id``, oldest first."""
        query = _EVENTS.format(where="scans.id > ?" + _UNDELIVERED) + " LIMIT ?"
        return self.conn.execute(query, (after_id, limit)).fetchall()

    def rows(self, scan_ids: Iterable[int]) -> list[sqlite3.Row]:
        """The undelivered ones among ``scan_ids`` (for live events), oldest first."""
        ids = list(scan_ids)
        if not ids:
            return []
        query = _EVENTS.format(where=f"scans.id IN ({','.join('?' * len(ids))})" + _UNDELIVERED)
        return self.conn.execute(query, ids).fetchall()

    def by_seq(self, device_id: str, first: int, last: int) -> list[sqlite3.Row]:
        """The events ``first``..``last`` of a device, delivered or not, in order."""
        # A device's seq never runs ahead of the row id (double reads take an id but
        # no seq), so its seq ``first`` is at id >= first: the walk starts there and
        # stops once it has them all.
        query = _EVENTS.format(
            where="scans.id >= :first AND scans.device_id = :device AND scans.seq BETWEEN :first AND :last"
        )
        params = {"first": first, "last": last, "device": device_id, "n": max(0, last - first + 1)}
        return self.conn.execute(query + " LIMIT :n", params).fetchall()

    def mark_delivered(self, scan_ids: Iterable[int], reason_code: int = 0) -> None:
        """Record delivery (a PUBACK with a success reason code) in one transaction. Idempotent."""
        ts = iso(datetime.now(UTC))
        # The connection is in autocommit mode (isolation_level=None), where
        # ``with conn`` opens no transaction: without BEGIN every row would be
        # its own fsync'd commit.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                "INSERT OR IGNORE INTO deliveries (scan_id, ts, reason_code) VALUES (?, ?, ?)",
                [(scan_id, ts, reason_code) for scan_id in scan_ids],
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- receipts (schema 6) -------------------------------------------------------

    def stored_through(self) -> int:
        """The highest ``stored_through_seq`` the back end confirmed (0 if none yet)."""
        row = self.conn.execute("SELECT stored_through_seq FROM receipts ORDER BY id DESC LIMIT 1").fetchone()
        return 0 if row is None else row[0]

    def record_receipt(self, stored_through_seq: int, source: str) -> None:
        """Record a receipt that moved forward (one row, one commit)."""
        self.conn.execute(
            "INSERT INTO receipts (ts, stored_through_seq, source) VALUES (?, ?, ?)",
            (iso(datetime.now(UTC)), stored_through_seq, source),
        )

    def last_seq(self, device_id: str) -> int:
        """The highest seq this device has produced (0 if none): walks back from the newest row."""
        row = self.conn.execute(
            "SELECT seq FROM scans WHERE seq IS NOT NULL AND device_id = ? ORDER BY id DESC LIMIT 1", (device_id,)
        ).fetchone()
        return 0 if row is None else row[0]

    def unconfirmed(
        self, device_id: str, above_seq: int, *, delivered_by: str | None = None, limit: int = 100
    ) -> list[sqlite3.Row]:
        """Events delivered but not covered by the receipt ``above_seq``, oldest first;
        with ``delivered_by`` (ISO UTC) only those delivered at or before it."""
        query = _EVENTS.format(where=_UNCONFIRMED) + " LIMIT :limit"
        params = {"above": above_seq, "device": device_id, "since": delivered_by, "limit": limit}
        return self.conn.execute(query, params).fetchall()

    def unconfirmed_count(self, device_id: str, above_seq: int) -> int:
        """How many events are delivered but not covered by the receipt ``above_seq``."""
        params = {"above": above_seq, "device": device_id, "since": None}
        return self.conn.execute(f"SELECT COUNT(*) FROM scans WHERE {_UNCONFIRMED}", params).fetchone()[0]

    def oldest_unconfirmed_ts(self, device_id: str, above_seq: int) -> str | None:
        """When the oldest event delivered but not covered by ``above_seq`` was recorded (ISO UTC), or None."""
        params = {"above": above_seq, "device": device_id, "since": None}
        row = self.conn.execute(f"SELECT ts FROM scans WHERE {_UNCONFIRMED} ORDER BY id LIMIT 1", params).fetchone()
        return None if row is None else row[0]

    def depth(self) -> int:
        """How many events are not delivered yet.

        Counts only above the delivered floor (see :meth:`oldest_pending_ts`),
        so a health report on a ledger of millions of delivered events stays cheap.
        """
        return self.conn.execute(
            "SELECT COUNT(*) FROM scans WHERE id > :floor AND seq IS NOT NULL" + _UNDELIVERED,
            {"floor": self._delivered_floor},
        ).fetchone()[0]

    def oldest_pending_ts(self) -> str | None:
        """When the oldest undelivered event was recorded (ISO UTC), or None."""
        # The newest id is read first: an event queued after it is above it, so
        # raising the floor to it can never skip an undelivered event.
        newest = self.newest()
        rows = self.pending(self._delivered_floor, 1)
        if rows:
            self._delivered_floor = rows[0]["id"] - 1
            return rows[0]["ts"]
        self._delivered_floor = max(self._delivered_floor, newest)
        return None

    def newest(self) -> int:
        """The id of the newest scan (0 when none): every event is at or below it."""
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM scans").fetchone()[0]

    def alarms(self, limit: int = 10) -> list[dict]:
        """The latest alarms (e.g. ``ledger_damaged``), newest first, as ``{id, ts, kind, detail}``."""
        rows = self.conn.execute("SELECT id, ts, kind, detail FROM alarms ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    def db_bytes(self) -> int:
        """Size of the database on disk, WAL included."""
        if self.path is None:
            return 0
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total
