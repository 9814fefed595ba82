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
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from agent.clock import Clock, iso
from agent.codes import Rejection, TraceCode, escape
from agent.ids import EventIds
from agent.read import Read

log = logging.getLogger(__name__)

MOVEMENTS = ("receive", "dispense", "use", "return_in", "return_out", "destroy", "check")
VERDICTS = ("accepted", "rejected", "duplicate", "double_read")
GENESIS = "0" * 64
BILL_LIMIT = 3500
SCHEMA_VERSION = 2  # 2: the alarms table
CACHE_KIB = 64_000
WAL_RESTART_PAGES = 4096  # 16 MB of 4 KiB pages

#: Columns covered by each row's hash, in the order they are stored.
HASHED = (
    "id",
    "seq",
    "event_id",
    "device_id",
    "site_id",
    "ts",
    "clock_synced",
    "movement",
    "verdict",
    "reason",
    "detail",
    "code",
    "raw",
    "kind",
    "product_id",
    "serial",
    "symbology",
    "ais",
    "source_kind",
    "source_id",
    "operator",
    "bill",
    "earlier_id",
    "prev_hash",
)

_APPEND_ONLY = ("scans", "outbox", "deliveries", "alarms")


class LedgerError(Exception):
    """The ledger could not record a scan (disk full, database unwritable)."""


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
        }


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` and, if not, the first bad row."""

    rows: int
    ok: bool
    bad_id: int | None = None
    problem: str = ""
    problems: list[str] = field(default_factory=list)


def row_hash(row: Mapping) -> str:
    """SHA-256 of the canonical JSON of a row's hashed columns (``prev_hash`` included)."""
    canonical = json.dumps({k: row[k] for k in HASHED}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the pragmas every ledger connection must have."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


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
        last = conn.execute("SELECT event_id FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        # Seeded from the last recorded event, so ids keep increasing across a
        # restart even when the wall clock was set back meanwhile.
        self._ids = EventIds(after=None if last is None else last[0])
        #: The latest ts recorded; a wall clock behind it is not trustworthy.
        self._latest_ts: str | None = conn.execute("SELECT MAX(ts) FROM scans").fetchone()[0]

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
        if movement not in MOVEMENTS:
            raise ValueError(f"unknown movement {movement!r}; allowed: {', '.join(MOVEMENTS)}")
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
        if double_read:
            verdict, reason, detail = "double_read", "double_read", "same scan again within the double-read window"
        elif not parsed.valid:
            verdict, reason, detail = "rejected", parsed.reason, parsed.detail
        elif bill and self._bill_count(bill) >= BILL_LIMIT:
            verdict, reason, detail = "rejected", "bill_full", f"bill {bill} already holds {BILL_LIMIT} codes"
        else:
            verdict, reason, detail, earlier_id = self._apply_movement(parsed, movement)

        last = self.conn.execute("SELECT id, hash FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        scan_id = 1 if last is None else last["id"] + 1
        seq = None
        if verdict != "double_read":
            top = self.conn.execute("SELECT MAX(seq) FROM scans WHERE device_id = ?", (self.device_id,)).fetchone()[0]
            seq = (top or 0) + 1
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
            "prev_hash": GENESIS if last is None else last["hash"],
        }
        row["hash"] = row_hash(row)
        self.conn.execute(_INSERT_SCAN, row)
        if verdict != "double_read":
            self.conn.execute("INSERT INTO outbox (scan_id) VALUES (?)", (scan_id,))
        if verdict == "accepted" and parsed.valid:
            self._store_state(parsed.code, movement, scan_id)
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

    def _apply_movement(self, parsed: TraceCode, movement: str) -> tuple[str, str | None, str, int | None]:
        """Duplicate rules from the domain: returns verdict, reason, detail, earlier scan id."""
        state = self.conn.execute("SELECT * FROM code_state WHERE code = ?", (parsed.code,)).fetchone()
        if state is None:
            return "accepted", None, "", None
        if movement in ("dispense", "use", "destroy") and state["destroyed_id"] is not None:
            return "duplicate", "destroyed", "this code was recorded as destroyed", state["destroyed_id"]
        if movement in ("dispense", "use"):
            allowed = self.split_packs.get(parsed.product_id, 1)
            if state["out_count"] >= allowed:
                detail = "dispensed and not returned since"
                if allowed > 1:
                    detail = f"split pack: dispensed {state['out_count']} of {allowed} times"
                return "duplicate", "already_dispensed", detail, state["out_id"]
        if movement == "receive" and state["in_held"]:
            return "duplicate", "already_received", "received and not returned to the supplier since", state["in_id"]
        return "accepted", None, "", None

    def _store_state(self, code: str, movement: str, scan_id: int) -> None:
        if movement == "check":
            return
        update = {
            "receive": "in_held = 1, in_id = :id",
            "return_out": "in_held = 0, in_id = :id",
            "dispense": "out_count = out_count + 1, out_id = :id",
            "use": "out_count = out_count + 1, out_id = :id",
            "return_in": "out_count = MAX(out_count - 1, 0)",
            "destroy": "destroyed_id = :id",
        }[movement]
        self.conn.execute("INSERT OR IGNORE INTO code_state (code) VALUES (?)", (code,))
        self.conn.execute(f"UPDATE code_state SET {update} WHERE code = :code", {"id": scan_id, "code": code})

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


class Checkpointer:
    """Copies the WAL back into the database on its own thread and connection.

    The pipeline's connection has automatic checkpoints off: a checkpoint inside
    a scan's commit would add milliseconds to that one beep.
    """

    def __init__(self, path: str | Path, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        """A passive checkpoint; under a steady stream of scans a passive one never
        reaches the end of the WAL, which then only grows, so past a bound the WAL
        is restarted (the pipeline waits a few milliseconds, once per bound)."""
        _busy, wal_pages, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages > WAL_RESTART_PAGES:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _run(self) -> None:
        conn = connect(self.path)
        conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_PAGES * 4096}")
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as problem:
                    log.warning("ledger checkpoint failed: %s", problem)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as problem:
            log.warning("ledger checkpoint failed: %s", problem)
        finally:
            conn.close()


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, indexes and append-only triggers if missing."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        db["scans"].create(
            {
                "id": int,
                "seq": int,
                "event_id": str,
                "device_id": str,
                "site_id": str,
                "ts": str,
                "clock_synced": int,
                "movement": str,
                "verdict": str,
                "reason": str,
                "detail": str,
                "code": str,
                "raw": str,
                "kind": str,
                "product_id": str,
                "serial": str,
                "symbology": str,
                "ais": str,
                "source_kind": str,
                "source_id": str,
                "operator": str,
                "bill": str,
                "earlier_id": int,
                "prev_hash": str,
                "hash": str,
            },
            pk="id",
            not_null={"event_id", "device_id", "site_id", "ts", "movement", "verdict", "raw", "prev_hash", "hash"},
            if_not_exists=True,
        )
        db["scans"].create_index(["event_id"], unique=True, if_not_exists=True)
        db["scans"].create_index(["device_id", "seq"], unique=True, if_not_exists=True)
        db["scans"].create_index(["ts"], if_not_exists=True)
        db["code_state"].create(
            {"code": str, "out_count": int, "out_id": int, "in_held": int, "in_id": int, "destroyed_id": int},
            pk="code",
            not_null={"out_count", "in_held"},
            defaults={"out_count": 0, "in_held": 0},
            if_not_exists=True,
        )
        db["outbox"].create(
            {"scan_id": int}, pk="scan_id", foreign_keys=[("scan_id", "scans", "id")], if_not_exists=True
        )
        db["deliveries"].create(
            {"scan_id": int, "ts": str, "reason_code": int},
            pk="scan_id",
            foreign_keys=[("scan_id", "outbox", "scan_id")],
            if_not_exists=True,
        )
        db["alarms"].create(
            {"id": int, "ts": str, "kind": str, "detail": str},
            pk="id",
            not_null={"ts", "kind", "detail"},
            if_not_exists=True,
        )
        conn.execute("CREATE INDEX IF NOT EXISTS scans_bill ON scans (bill, verdict) WHERE bill != ''")
        for table in _APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def verify(conn: sqlite3.Connection) -> VerifyResult:
    """Recompute the hash chain and check ``seq`` continuity and the outbox.

    Returns at the first broken link, naming the row.
    """
    prev_hash = GENESIS
    prev_id = 0
    last_seq: dict[str, int] = {}
    rows = 0
    for row in conn.execute("SELECT * FROM scans ORDER BY id"):
        rows += 1
        scan_id = row["id"]
        problem = ""
        if scan_id != prev_id + 1:
            problem = f"rows {prev_id + 1}..{scan_id - 1} are missing"
        elif row["prev_hash"] != prev_hash:
            problem = "prev_hash does not match the hash of the row before"
        elif row_hash(row) != row["hash"]:
            problem = "contents do not match its hash (altered)"
        elif row["seq"] is not None and row["seq"] != last_seq.get(row["device_id"], 0) + 1:
            problem = f"seq {row['seq']} follows {last_seq.get(row['device_id'], 0)} for {row['device_id']}"
        if problem:
            return VerifyResult(
                rows=rows, ok=False, bad_id=scan_id, problem=f"scan id {scan_id} (seq {row['seq']}): {problem}"
            )
        if row["seq"] is not None:
            last_seq[row["device_id"]] = row["seq"]
        prev_hash, prev_id = row["hash"], scan_id
    missing = conn.execute(
        "SELECT MIN(id) FROM scans WHERE verdict != 'double_read' AND id NOT IN (SELECT scan_id FROM outbox)"
    ).fetchone()[0]
    if missing is not None:
        return VerifyResult(rows=rows, ok=False, bad_id=missing, problem=f"scan id {missing} has no outbox event")
    return VerifyResult(rows=rows, ok=True)


def export_rows(conn: sqlite3.Connection, since: str | None = None) -> Iterator[dict]:
    """Scans in chain order, optionally only those at or after ISO time ``since``."""
    db = sqlite_utils.Database(conn)
    where, params = ("ts >= ?", [since]) if since else (None, [])
    for row in db["scans"].rows_where(where, params, order_by="id"):
        yield dict(row)


_INSERT_SCAN = f"INSERT INTO scans ({', '.join(HASHED)}, hash) VALUES ({', '.join(':' + c for c in HASHED)}, :hash)"
