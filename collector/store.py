"""PostgreSQL: one transaction per batch of checked messages.

In that transaction the batch's events go into ``events`` (a COPY straight into it when
they are all new; else COPY into a temporary staging table, then ``INSERT ... ON CONFLICT
DO NOTHING``: idempotent by event id, so a copy received twice is stored once), its
rejections into ``quarantine``, and
each device's row moves forward: ``max_seq``, counts, and ``stored_through_seq``,
the highest seq with every seq below it stored. The links that newly became
contiguous are checked (:mod:`collector.chain`), and a code now dispensed on two
devices is kept in ``conflicts``.

Two collectors may store the same device's events at once. Each locks the device's
row (``INSERT ... ON CONFLICT DO UPDATE``, in device order, so never a deadlock)
before it looks for the next seq, so one of the two always sees the other's
committed rows and moves the device forward.

Conflicts have the same race: two collectors storing the same code from two devices at
once would each look for the other's row before it is committed, and neither keep the
pair. So the conflict check, the last step of a transaction, is taken one transaction at
a time (an advisory lock held until the commit): the second looks after the first has
committed, and sees its row. Only that last step waits, and only in a batch with dispenses.

>>> Stored().advanced
{}
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from . import chain
from .check import COLUMNS, Event, Rejected, Report, copy_line
from .schema import ensure_month

log = logging.getLogger(__name__)

#: The advisory lock the conflict check is taken under (any fixed number, the same in every collector).
CONFLICT_LOCK = 0x5CA1_0003

_COLS = ", ".join(COLUMNS)
_STAGING = f"CREATE TEMPORARY TABLE IF NOT EXISTS staging AS SELECT {_COLS} FROM events WITH NO DATA"
#: The batch's newly stored accepted dispenses, for the conflict join.
_DISPENSED = "CREATE TEMPORARY TABLE IF NOT EXISTS dispensed (code text, event_id uuid, device_id text)"


@dataclass
class Device:
    """A device's state after a batch: what a receipt says."""

    site: str
    through: int
    advanced: bool = False
    resent: bool = False  # the batch held only copies already stored: its receipt went missing


@dataclass
class Stored:
    """What one batch did."""

    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    breaks: int = 0
    conflicts: int = 0
    devices: dict[str, Device] = field(default_factory=dict)

    @property
    def advanced(self) -> dict[str, Device]:
        return {d: s for d, s in self.devices.items() if s.advanced}


class Store:
    """The collector's writing connection.

    Threads: one thread at a time (the collector's writer). A lost connection
    raises :class:`psycopg.OperationalError` out of :meth:`store`, having committed
    nothing; call :meth:`reconnect` and store the same batch again.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection | None = None
        self._months: set[str] = set()
        # Per device, the last row this store committed at the end of its stored run, and
        # those of the transaction under way (kept only once it commits).
        self._last: dict[str, chain.Link] = {}
        self._pending: dict[str, chain.Link] = {}
        self.reconnect()

    def reconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        # synchronous_commit stays on: a receipt follows the commit, so the commit must be durable.
        self.conn.execute(_STAGING)
        self.conn.execute(_DISPENSED)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def store(self, events: list[Event], rejected: Iterable[Rejected] = (), reports: Iterable[Report] = ()) -> Stored:
        """Store a batch in one transaction; events PostgreSQL refuses are quarantined one by one."""
        rejected, reports = list(rejected), list(reports)
        for month in sorted({e.event["ts"][:7] for e in events} - self._months):
            try:
                ensure_month(self.conn, month)
                self._months.add(month)
            except psycopg.DataError:
                pass  # a month PostgreSQL cannot hold: its events are refused below, one by one
        self._pending = {}
        try:
            with self.conn.transaction():
                stored = self._write(events, rejected, reports)
            self._last.update(self._pending)
            return stored
        except psycopg.DataError as problem:
            if len(events) <= 1:
                if not events:
                    raise
                log.warning("PostgreSQL refused event %s: %s", events[0].event["event_id"], problem)
                bad = Rejected(events[0].topic, "rejected_by_database", str(problem), events[0].text.encode())
                with self.conn.transaction():
                    return self._write([], [*rejected, bad], reports)
        # One event PostgreSQL will not take: find it without holding up the others.
        total = self.store([], rejected, reports)
        for event in events:
            _add(total, self.store([event]))
        return total

    def _write(self, events: list[Event], rejected: list[Rejected], reports: list[Report]) -> Stored:
        cur = self.conn.cursor()
        stored = Stored(quarantined=len(rejected))
        if rejected:
            with cur.copy("COPY quarantine (topic, reason, detail, size, payload) FROM STDIN") as copy:
                for r in rejected:
                    copy.write_row((r.topic, r.reason, r.detail, len(r.payload), r.payload))
        for report in reports:
            _report(cur, report)
        if not events:
            return stored
        new = _insert(self.conn, cur, events)
        stored.inserted = len(new)
        stored.duplicates = len(events) - len(new)
        per = _per_device(events, new)
        devices = sorted(per)
        cur.execute(
            "INSERT INTO devices AS d (device_id, site_id, max_seq, stored, duplicates)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) ORDER BY 1"
            " ON CONFLICT (device_id) DO UPDATE SET site_id = excluded.site_id,"
            " max_seq = GREATEST(d.max_seq, excluded.max_seq), stored = d.stored + excluded.stored,"
            " duplicates = d.duplicates + excluded.duplicates, last_seen = clock_timestamp()"
            " RETURNING device_id, stored_through_seq, stored",
            (
                devices,
                [per[d].site for d in devices],
                [per[d].max_seq for d in devices],
                [len(per[d].new) for d in devices],
                [per[d].received - len(per[d].new) for d in devices],
            ),
        )
        progress = sorted(cur.fetchall())
        # Usually a device's new events simply continue its stored run (nothing stored beyond
        # it, one event a seq): its new links are then in this batch, checked here in memory,
        # against the row at the run's end (remembered from our last commit, or read).
        ahead: dict[str, list[Event]] = {}
        for device, through, count in progress:
            run = per[device].run_after(through, count)
            if run is not None:
                ahead[device] = run
        before = self._rows_at({d: ahead[d][0].seq - 1 for d in ahead if ahead[d] and ahead[d][0].seq > 1})
        moved: dict[str, int] = {}
        for device, through, _ in progress:
            batch = per[device]
            state = Device(batch.site, through, resent=not batch.new)
            if device in ahead:
                run = ahead[device]
                new_through = run[-1].seq if run else through
                if run:
                    links = [
                        chain.Link(
                            e.seq, e.event["ledger_id"], e.event["hash"], e.event["prev_hash"], e.event["event_id"]
                        )
                        for e in run
                    ]
                    found = chain.breaks(links, before.get(device))
                    stored.breaks += _record_breaks(cur, device, found)
                    self._pending[device] = links[-1]
            else:
                # Anything else (out of order, a gap closing, a seq held twice): read it back.
                reused = [e.seq for e in batch.new if e.seq <= through]
                if reused:
                    stored.breaks += _reused_seqs(cur, device, reused)
                new_through = _advance(cur, device, through, batch.seqs)
                if new_through > through:
                    stored.breaks += _check_chain(cur, device, through, new_through)
            if new_through > through:
                moved[device] = new_through
                state.through, state.advanced = new_through, True
            elif state.resent:
                moved[device] = through  # progress_at only: a receipt is due again
            stored.devices[device] = state
        if moved:
            cur.execute(
                "UPDATE devices AS d SET stored_through_seq = GREATEST(d.stored_through_seq, m.through),"
                " progress_at = clock_timestamp() FROM unnest(%s::text[], %s::bigint[]) AS m(device_id, through)"
                " WHERE d.device_id = m.device_id",
                (list(moved), list(moved.values())),
            )
        if new:
            stored.conflicts += _conflicts(cur, new)
        return stored

    def _rows_at(self, wanted: dict[str, int]) -> dict[str, chain.Link]:
        """The stored row at seq ``wanted[device]`` of each device (the first received of it):
        from what this store last committed when it is that row, else read in one query."""
        found = {d: link for d, link in ((d, self._last.get(d)) for d in wanted) if link and link.seq == wanted[d]}
        rest = [d for d in wanted if d not in found]
        if rest:
            rows = self.conn.execute(
                "SELECT DISTINCT ON (e.device_id)"
                " e.device_id, e.seq, e.ledger_id, e.hash, e.prev_hash, e.event_id::text"
                " FROM events e JOIN unnest(%s::text[], %s::bigint[]) AS w(device_id, seq)"
                " ON e.device_id = w.device_id AND e.seq = w.seq ORDER BY e.device_id, e.received_at",
                (rest, [wanted[d] for d in rest]),
            ).fetchall()
            for device, *link in rows:
                found[device] = chain.Link(*link)
        return found


@dataclass
class _Batch:
    """One device's part of a batch: what the writer tallies before it touches ``devices``."""

    site: str
    max_seq: int = 0
    received: int = 0
    seqs: set[int] = field(default_factory=set)  # every event's, copies included
    new: list[Event] = field(default_factory=list)  # the events stored now

    def run_after(self, through: int, stored: int) -> list[Event] | None:
        """The new events that extend the stored run 1..``through``, in seq order, when they are
        all the device's rows beyond it: ``stored`` (its row count, this batch's included) says
        nothing else was stored beyond ``through``, and no seq comes twice. Else None.

        >>> from collector.check import Event
        >>> b = _Batch("s", new=[Event("t", {"seq": s}, "") for s in (5, 4, 7)])
        >>> [e.seq for e in b.run_after(3, 6)], b.run_after(3, 7), b.run_after(4, 7)
        ([4, 5], None, None)
        """
        if stored - len(self.new) != through:
            return None
        by_seq = {e.seq: e for e in self.new}
        if len(by_seq) != len(self.new) or (by_seq and min(by_seq) <= through):
            return None
        run, seq = [], through + 1
        while seq in by_seq:
            run.append(by_seq[seq])
            seq += 1
        return run


def _per_device(events: list[Event], new: list[Event]) -> dict[str, _Batch]:
    per: dict[str, _Batch] = {}
    for event in events:
        e = event.event
        batch = per.get(e["device_id"])
        if batch is None:
            batch = per[e["device_id"]] = _Batch(e["site_id"])
        batch.site = e["site_id"]
        seq = e["seq"]
        batch.seqs.add(seq)
        batch.received += 1
        if seq > batch.max_seq:
            batch.max_seq = seq
    for event in new:
        per[event.event["device_id"]].new.append(event)
    return per


def _add(total: Stored, part: Stored) -> None:
    total.inserted += part.inserted
    total.duplicates += part.duplicates
    total.quarantined += part.quarantined
    total.breaks += part.breaks
    total.conflicts += part.conflicts
    for device, state in part.devices.items():
        if device in total.devices:
            before = total.devices[device]
            state.advanced = state.advanced or before.advanced
            state.resent = state.resent and before.resent
        total.devices[device] = state


def _report(cur: psycopg.Cursor, report: Report) -> None:
    """A status or health message: the device's row says it was seen, and what it said."""
    column = "status" if report.kind == "status" else "health"
    value = report.body if report.kind == "status" else psycopg.types.json.Jsonb(report.body)
    cur.execute(
        f"INSERT INTO devices AS d (device_id, site_id, {column}, {column}_at) VALUES (%s, %s, %s, clock_timestamp())"
        f" ON CONFLICT (device_id) DO UPDATE SET {column} = excluded.{column}, {column}_at = excluded.{column}_at,"
        " last_seen = clock_timestamp()",
        (report.device, report.site, value),
    )


def _advance(cur: psycopg.Cursor, device: str, through: int, batch: set[int]) -> int:
    """The device's new stored_through_seq: the end of the run of stored seqs after ``through``.

    ``batch``: the seqs this batch stored for the device (all stored now). Usually they
    continue the run: then one probe of the seq after them says whether it ends there.
    """
    end = through
    while end + 1 in batch:
        end += 1
    cur.execute("SELECT 1 FROM events WHERE device_id = %s AND seq = %s LIMIT 1", (device, end + 1))
    if cur.fetchone() is None:
        return end
    # The first stored seq after ``end`` whose successor is not stored ends the run.
    cur.execute(
        "SELECT e.seq FROM events e WHERE e.device_id = %s AND e.seq > %s AND NOT EXISTS"
        " (SELECT 1 FROM events f WHERE f.device_id = e.device_id AND f.seq = e.seq + 1)"
        " ORDER BY e.seq LIMIT 1",
        (device, end),
    )
    return cur.fetchone()[0]


def _check_chain(cur: psycopg.Cursor, device: str, through: int, new_through: int) -> int:
    """Check the links of rows ``through``+1..``new_through`` (and to the row at ``through``)."""
    cur.execute(
        "SELECT seq, ledger_id, hash, prev_hash, event_id::text FROM events"
        " WHERE device_id = %s AND seq BETWEEN %s AND %s ORDER BY seq, received_at",
        (device, max(through, 1), new_through),
    )
    links, reused, last = [], [], None
    for row in cur.fetchall():
        if row[0] != last:
            links.append(chain.Link(*row))
            last = row[0]
        else:
            reused.append(row[0])
    before = None
    if through >= 1 and links and links[0].seq == through:
        before, links = links[0], links[1:]
    found = _record_breaks(cur, device, chain.breaks(links, before))
    return found + (_reused_seqs(cur, device, reused) if reused else 0)


def _record_breaks(cur: psycopg.Cursor, device: str, found: list[chain.Break]) -> int:
    for b in found:
        cur.execute(
            "INSERT INTO chain_breaks (device_id, seq, event_id, ledger_id, prev_hash, expected, problem)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (device, b.seq, b.event_id, b.ledger_id, b.prev_hash, b.expected, b.problem),
        )
    return len(found)


def _reused_seqs(cur: psycopg.Cursor, device: str, reused: list[int]) -> int:
    """Events whose seq another event of the device already holds (a ledger started over?)."""
    cur.execute(
        "INSERT INTO chain_breaks (device_id, seq, event_id, ledger_id, prev_hash, expected, problem)"
        " SELECT n.device_id, n.seq, n.event_id, n.ledger_id, n.prev_hash, e.hash,"
        " 'seq ' || n.seq || ' already holds event ' || e.event_id"
        " FROM events n JOIN events e ON e.device_id = n.device_id AND e.seq = n.seq AND e.event_id < n.event_id"
        " WHERE n.device_id = %s AND n.seq = ANY(%s) ON CONFLICT DO NOTHING",
        (device, reused),
    )
    return cur.rowcount


def _insert(conn: psycopg.Connection, cur: psycopg.Cursor, events: list[Event]) -> list[Event]:
    """Write the batch's events not stored yet; return those (each once).

    Most batches hold only new events: those are copied straight into ``events`` (each row
    written once). A batch holding a copy of a stored event (or the same event twice) fails
    that COPY on the primary key; its savepoint is rolled back and the batch goes through
    ``staging`` and ``INSERT ... ON CONFLICT DO NOTHING`` instead.
    """
    try:
        with conn.transaction(), cur.copy(f"COPY events ({_COLS}) FROM STDIN") as copy:
            copy.write(b"".join(event.copy_line() for event in events))
        return events
    except psycopg.errors.UniqueViolation:
        pass
    with cur.copy(f"COPY staging ({_COLS}) FROM STDIN") as copy:
        copy.write(b"".join(event.copy_line() for event in events))
    cur.execute(f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM staging ON CONFLICT DO NOTHING RETURNING event_id")
    by_id = {uuid.UUID(e.event["event_id"]): e for e in events}
    new = [by_id[event_id] for (event_id,) in cur.fetchall()]
    cur.execute("TRUNCATE staging")
    return new


def _conflicts(cur: psycopg.Cursor, new: list[Event]) -> int:
    """The batch's accepted dispenses (``new``: the events it stored) of a code another device
    has dispensed too (each pair once; a copy received again finds the pair already kept)."""
    dispensed = [
        e.event
        for e in new
        if e.event.get("movement") == "dispense" and e.event["verdict"] == "accepted" and e.event.get("code")
    ]
    if not dispensed:
        return 0
    with cur.copy("COPY dispensed (code, event_id, device_id) FROM STDIN") as copy:
        copy.write(b"".join(copy_line((e["code"], e["event_id"], e["device_id"])) for e in dispensed))
    # Held until the commit: another collector's check waits for it, then (a new statement,
    # a new snapshot) sees this batch's rows committed. The module's docstring says why.
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (CONFLICT_LOCK,))
    # Autovacuum never analyses a temporary table: without this the planner guesses its size.
    cur.execute("ANALYZE dispensed")
    # One probe of events_code per dispense, whatever the statistics of the month's partition
    # (a LATERAL subquery with OFFSET 0 is not flattened into a join). As a plain join, with the
    # partition not analysed yet (no column statistics: movement and verdict guessed at 0.5 %
    # each), the planner expects ~70 of 1 M rows and nests a scan of the whole partition under
    # every dispense: a 500-dispense batch ran over 10 s (1 M events), one bench batch minutes.
    # Those same guesses put the LATERAL form's cost far above jit_above_cost: JIT compiled
    # every batch's query (100-350 ms against ~12 ms of work for 5,000 dispenses); it is off
    # for the rest of the transaction (the last statement but the TRUNCATE).
    cur.execute("SET LOCAL jit = off")
    cur.execute(
        "INSERT INTO conflicts (code, event_id, device_id, other_event_id, other_device_id)"
        " SELECT n.code, LEAST(n.event_id, e.event_id),"
        " CASE WHEN n.event_id < e.event_id THEN n.device_id ELSE e.device_id END,"
        " GREATEST(n.event_id, e.event_id),"
        " CASE WHEN n.event_id < e.event_id THEN e.device_id ELSE n.device_id END"
        " FROM dispensed n CROSS JOIN LATERAL (SELECT e.event_id, e.device_id FROM events e"
        " WHERE e.code = n.code AND e.device_id <> n.device_id"
        " AND e.movement = 'dispense' AND e.verdict = 'accepted' OFFSET 0) e"
        " ON CONFLICT DO NOTHING"
    )
    found = cur.rowcount
    cur.execute("TRUNCATE dispensed")
    return found
