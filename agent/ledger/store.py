"""The ledger: every scan, the per-code movement state, and the outbox, in SQLite.

One transaction per scan decides whether it is accepted, a duplicate, a
double read or rejected, appends it to a hash-chained, append-only table and
queues its event. When :meth:`Ledger.decide_and_record` returns, all of that is
on disk (WAL, ``synchronous=FULL``), so "accepted" means "recorded".

>>> from agent import codes
>>> from agent.read import Read
>>> ledger = Ledger.open(":memory:", device_id="kiosk-1", site_id="site-1")
>>> read = Read(b"81234567890123456789", source_kind="stdin", source_id="stdin")
>>> ledger.decide_and_record(read, "dispense", codes.parse(read.raw)).verdict
'accepted'
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from agent.clock import Clock, iso
from agent.codes import Rejection, TraceCode, escape
from agent.domain import BILL_LIMIT, Decision, Earlier, check_movement
from agent.ids import EventIds
from agent.ledger.chain import GENESIS, HASHED, row_hash
from agent.ledger.checkpoint import Checkpointer
from agent.ledger.rules import RULES, State, judge
from agent.ledger.schema import create_schema
from agent.ledger.sqlite import CACHE_KIB, connect
from agent.read import Read

log = logging.getLogger(__name__)


class LedgerError(Exception):
    """The ledger could not record a scan (disk full, database unwritable)."""


class Ledger:
    """The agent's SQLite ledger. Only one thread (the pipeline) calls
    :meth:`decide_and_record`; others open their own :func:`connect`.

    ``split_packs`` maps a product id to how many times one of its codes may be
    dispensed; ``double_read_window_s`` is how soon the same text from the same
    source counts as the scanner reading twice.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        device_id: str,
        site_id: str,
        double_read_window_s: float = 2.0,
        split_packs: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.conn = conn
        self.device_id = device_id
        self.site_id = site_id
        self.double_read_window_s = double_read_window_s
        self.split_packs = dict(split_packs or {})
        self.clock = clock or Clock()
        self._last_by_source: dict[str, tuple[str, float]] = {}
        self.checkpointer: Checkpointer | None = None
        create_schema(conn)
        last = conn.execute("SELECT id, hash, event_id FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        # Seeded from the last recorded event, so ids keep increasing across a
        # restart even when the wall clock was set back meanwhile.
        self._ids = EventIds(after=None if last is None else last["event_id"])
        #: The latest ts recorded; a wall clock behind it is not trustworthy.
        self._latest_ts = latest_ts(conn)
        #: The chain's end: last id, its hash, this device's last seq. Kept here so a scan
        #: reads no index for it (one writer: the pipeline).
        self._tail = (0, GENESIS, 0) if last is None else (last["id"], last["hash"], last_seq(conn, device_id))

    @classmethod
    def open(cls, path: str | Path, **kwargs) -> Ledger:
        """Open (creating if needed) the ledger at ``path``.

        Also starts a :class:`Checkpointer` for it, so the scan path never
        pays for copying the WAL back into the database.
        """
        ledger = cls(connect(path), **kwargs)
        if str(path) != ":memory:":
            ledger.conn.execute("PRAGMA wal_autocheckpoint=0")
            # Enough page cache for the upper B-tree levels of a ledger with
            # tens of millions of scans: a page read from the OS on every
            # lookup costs the 99th percentile more than a millisecond.
            ledger.conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            ledger.checkpointer = Checkpointer(path)
            ledger.checkpointer.start()
        return ledger

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.conn.close()

    def decide_and_record(
        self,
        read: Read,
        movement: str,
        parsed: TraceCode | Rejection,
        *,
        operator: str = "",
        bill: str = "",
    ) -> Decision:
        """Decide what ``read`` is for ``movement`` and record it durably, in one transaction.

        Raises :class:`LedgerError` if it could not be recorded; then nothing was.
        """
        check_movement(movement)
        text = parsed.code if parsed.valid else parsed.text
        previous = self._last_by_source.get(read.source_id)
        double_read = (
            previous is not None and previous[0] == text and read.t_first - previous[1] <= self.double_read_window_s
        )
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                decision = self._decide_and_insert(read, movement, parsed, text, double_read, operator, bill)
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (a failed COMMIT on a full
                # disk does); a failing ROLLBACK must not hide the first error.
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as problem:
            raise LedgerError(f"could not record scan: {problem}") from problem
        self._tail = (decision.scan_id, decision.hash, decision.seq or self._tail[2])
        self._last_by_source[read.source_id] = (text, read.t_last)
        if self._latest_ts is None or decision.ts > self._latest_ts:
            self._latest_ts = decision.ts
        return decision

    def _decide_and_insert(
        self,
        read: Read,
        movement: str,
        parsed: TraceCode | Rejection,
        text: str,
        double_read: bool,
        operator: str,
        bill: str,
    ) -> Decision:
        earlier_id: int | None = None
        state = None
        if double_read:
            verdict, reason, detail = "double_read", "double_read", "same scan again within the double-read window"
        elif not parsed.valid:
            verdict, reason, detail = "rejected", parsed.reason, parsed.detail
        elif bill and self._bill_count(bill) >= BILL_LIMIT:
            verdict, reason, detail = "rejected", "bill_full", f"bill {bill} already holds {BILL_LIMIT} codes"
        else:
            state = self._state(parsed.code)
            allowed = self.split_packs.get(parsed.product_id, 1)
            verdict, reason, detail, earlier_id = judge(movement, state, allowed=allowed)

        last_id, last_hash, last_seq = self._tail
        scan_id = last_id + 1
        seq = None if verdict == "double_read" else last_seq + 1
        now = self.clock.now()
        ts = iso(now)
        # clock_synced = 0 when the kernel is not NTP-synchronised, or when the
        # wall clock reads earlier than a scan already recorded (it was set back):
        # such a ts is kept as read, but flagged as not trustworthy.
        clock_synced = self.clock.synchronised() and (self._latest_ts is None or ts >= self._latest_ts)
        row = {
            "id": scan_id,
            "seq": seq,
            "event_id": str(self._ids.next(int(now.timestamp() * 1000))),
            "device_id": self.device_id,
            "site_id": self.site_id,
            "ts": ts,
            "clock_synced": int(clock_synced),
            "movement": movement,
            "verdict": verdict,
            "reason": reason,
            "detail": detail,
            "code": parsed.code if parsed.valid else None,
            "raw": escape(read.raw),
            "kind": parsed.kind,
            "product_id": parsed.product_id or None,
            "serial": parsed.serial or None,
            "symbology": parsed.symbology or read.symbology,
            "ais": json.dumps(parsed.ais, sort_keys=True) if parsed.valid and parsed.ais else None,
            "source_kind": read.source_kind,
            "source_id": read.source_id,
            "operator": operator,
            "bill": bill,
            "earlier_id": earlier_id,
            "prev_hash": last_hash,
        }
        row["hash"] = row_hash(row)
        self.conn.execute(_INSERT_SCAN, row)
        if verdict == "accepted" and state is not None:
            self._store_state(parsed.code, state, RULES[movement].then(state, scan_id))
        return Decision(
            verdict=verdict,
            reason=reason,
            detail=detail,
            movement=movement,
            text=text,
            parsed=parsed,
            read=read,
            scan_id=scan_id,
            seq=seq,
            event_id=row["event_id"],
            ts=row["ts"],
            hash=row["hash"],
            earlier=self._earlier(earlier_id),
        )

    def _state(self, code: str) -> State:
        row = self.conn.execute(_SELECT_STATE, (code,)).fetchone()
        return State() if row is None else State(*row)

    def _store_state(self, code: str, before: State, after: State) -> None:
        if after != before:  # a stock check changes nothing, and writes nothing
            self.conn.execute(_WRITE_STATE, (code, *after))

    def _bill_count(self, bill: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM scans WHERE bill = ? AND verdict = 'accepted'", (bill,)
        ).fetchone()[0]

    def _earlier(self, scan_id: int | None) -> Earlier | None:
        if scan_id is None:
            return None
        row = self.conn.execute(
            "SELECT seq, event_id, ts, device_id, site_id, movement FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
        return Earlier(**dict(row))

    def record_alarm(self, kind: str, detail: str) -> int:
        """Append an alarm (e.g. ``ledger_damaged`` at start) for operators and the uplink; returns its id."""
        with self.conn:
            cursor = self.conn.execute(
                "INSERT INTO alarms (ts, kind, detail) VALUES (?, ?, ?)", (iso(self.clock.now()), kind, detail)
            )
        log.error("ALARM %s: %s", kind, detail)
        return cursor.lastrowid


def last_seq(conn: sqlite3.Connection, device_id: str) -> int:
    """The device's last ``seq`` (0 before its first event), read without an index on ``seq``:
    seq grows with id for a device, so it is on the device's last row that has one."""
    row = conn.execute(
        "SELECT seq FROM scans WHERE device_id = ? AND seq IS NOT NULL ORDER BY id DESC LIMIT 1", (device_id,)
    ).fetchone()
    return 0 if row is None else row[0]


def latest_ts(conn: sqlite3.Connection) -> str | None:
    """The latest ``ts`` in the ledger, read without an index on ``ts``.

    A row recorded with ``clock_synced = 1`` was at or past every ts before it,
    so the latest is among it and the rows after it: the search walks back from
    the end to the last synchronised row (the whole ledger only on a kiosk whose
    clock was never synchronised).
    """
    since = conn.execute("SELECT id FROM scans WHERE clock_synced = 1 ORDER BY id DESC LIMIT 1").fetchone()
    return conn.execute("SELECT MAX(ts) FROM scans WHERE id >= ?", (0 if since is None else since[0],)).fetchone()[0]


def export_rows(conn: sqlite3.Connection, since: str | None = None) -> Iterator[dict]:
    """Scans in chain order, optionally only those at or after ISO time ``since``."""
    import sqlite_utils  # only for an export: it costs a tenth of a second to import

    db = sqlite_utils.Database(conn)
    where, params = ("ts >= ?", [since]) if since else (None, [])
    for row in db["scans"].rows_where(where, params, order_by="id"):
        yield dict(row)


_SELECT_STATE = "SELECT out_count, out_id, in_held, in_id, destroyed_id FROM code_state WHERE code = ?"
_WRITE_STATE = (
    "INSERT OR REPLACE INTO code_state (code, out_count, out_id, in_held, in_id, destroyed_id)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_SCAN = f"INSERT INTO scans ({', '.join(HASHED)}, hash) VALUES ({', '.join(':' + c for c in HASHED)}, :hash)"
