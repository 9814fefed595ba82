"""The ledger: movement rules, double reads, durability pragmas, append-only chain, verify."""

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import codes, ledger
from agent.ledger import APPEND_ONLY, HASHED, Ledger, LedgerError, alarms, checkpoint, peers, row_hash, store, verify
from agent.ledger.chain import canonical
from agent.ledger.outbox import Outbox
from agent.read import Read

A = "81234567890123456789"
B = "81234567890123456790"
SPLIT = "8765432" + "0" * 13


class Scanner:
    """Feeds reads with controlled monotonic times, far apart unless told otherwise."""

    def __init__(self, ledger: Ledger, source: str = "usb:1"):
        self.ledger = ledger
        self.source = source
        self.t = 1000.0

    def scan(self, text: str, movement: str = "dispense", gap: float = 10.0, **kwargs):
        self.t += gap
        read = Read(text.encode(), "serial", self.source, t_first=self.t, t_last=self.t)
        return self.ledger.decide_and_record(read, movement, codes.parse(read.raw), **kwargs)


@pytest.fixture
def db(tmp_path):
    lg = Ledger.open(tmp_path / "ledger.db", device_id="kiosk-7", site_id="site-3", split_packs={"8765432": 3})
    yield lg
    lg.close()


@pytest.fixture
def scanner(db):
    return Scanner(db)


def verdicts(scanner, steps):
    return [scanner.scan(code, movement).verdict for code, movement in steps]


def test_every_connection_is_wal_with_full_sync(tmp_path):
    conn = ledger.connect(tmp_path / "x.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_dispense_twice_is_a_duplicate_naming_the_earlier_scan(scanner):
    first = scanner.scan(A)
    again = scanner.scan(A)
    assert (first.verdict, again.verdict, again.reason) == ("accepted", "duplicate", "already_dispensed")
    assert again.earlier.seq == first.seq
    assert again.earlier.ts == first.ts
    assert (again.earlier.device_id, again.earlier.site_id, again.earlier.movement) == ("kiosk-7", "site-3", "dispense")


def test_use_counts_as_dispensing(scanner):
    assert verdicts(scanner, [(A, "use"), (A, "dispense"), (B, "dispense"), (B, "use")]) == [
        "accepted",
        "duplicate",
        "accepted",
        "duplicate",
    ]


def test_customer_return_makes_a_code_dispensable_again(scanner):
    steps = [(A, "dispense"), (A, "return_in"), (A, "dispense"), (A, "dispense")]
    assert verdicts(scanner, steps) == ["accepted", "accepted", "accepted", "duplicate"]


def test_receive_twice_is_a_duplicate_until_returned_to_the_supplier(scanner):
    steps = [(A, "receive"), (A, "receive"), (A, "return_out"), (A, "receive"), (A, "receive")]
    assert verdicts(scanner, steps) == ["accepted", "duplicate", "accepted", "accepted", "duplicate"]
    assert scanner.scan(A, "receive").reason == "already_received"


def test_receive_and_dispense_are_independent(scanner):
    assert verdicts(scanner, [(A, "receive"), (A, "dispense"), (A, "return_out"), (A, "dispense")]) == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
    ]


def test_stock_check_changes_nothing_and_is_never_a_duplicate(scanner):
    steps = [(A, "check"), (A, "check"), (A, "dispense"), (A, "check"), (A, "dispense")]
    assert verdicts(scanner, steps) == ["accepted", "accepted", "accepted", "accepted", "duplicate"]


def test_destroyed_code_cannot_be_dispensed_or_destroyed_again(scanner):
    assert verdicts(scanner, [(A, "destroy"), (A, "dispense"), (A, "destroy")]) == [
        "accepted",
        "duplicate",
        "duplicate",
    ]
    assert scanner.scan(A, "use").reason == "destroyed"


def test_split_pack_dispensed_up_to_its_count(scanner):
    steps = [(SPLIT, "dispense")] * 4 + [(SPLIT, "return_in"), (SPLIT, "dispense"), (SPLIT, "dispense")]
    assert verdicts(scanner, steps) == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "accepted",
        "accepted",
        "duplicate",
    ]
    assert "3 of 3" in scanner.scan(SPLIT).detail


def test_other_products_are_not_split_packs(scanner):
    assert verdicts(scanner, [(A, "dispense"), (A, "dispense")]) == ["accepted", "duplicate"]


def test_double_read_from_the_same_source_within_the_window(db):
    s = Scanner(db)
    first = s.scan(A)
    echo = s.scan(A, gap=0.3)
    assert (first.verdict, echo.verdict) == ("accepted", "double_read")
    assert echo.seq is None
    assert db.conn.execute("SELECT COUNT(*) FROM outbox WHERE scan_id = ?", (echo.scan_id,)).fetchone()[0] == 0
    # the double read is in the ledger all the same
    assert db.conn.execute("SELECT verdict FROM scans WHERE id = ?", (echo.scan_id,)).fetchone()[0] == "double_read"


def test_same_code_after_the_window_is_a_duplicate(db):
    s = Scanner(db)
    s.scan(A)
    assert s.scan(A, gap=2.5).verdict == "duplicate"


def test_same_code_from_another_source_is_not_a_double_read(db):
    one, two = Scanner(db, "usb:1"), Scanner(db, "usb:2")
    one.scan(A)
    two.t = one.t
    assert two.scan(A, gap=0.1).verdict == "duplicate"


def test_repeated_garbage_is_one_reject_then_double_reads(db):
    s = Scanner(db)
    assert s.scan("123").verdict == "rejected"
    assert s.scan("123", gap=0.2).verdict == "double_read"


def test_double_read_window_is_configurable(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s", double_read_window_s=0.0)
    s = Scanner(lg)
    s.scan(A)
    assert s.scan(A, gap=0.1).verdict == "duplicate"


def test_rejections_are_recorded_with_their_reason_and_an_event(db, scanner):
    d = scanner.scan("6901234567892")
    row = db.conn.execute("SELECT * FROM scans WHERE id = ?", (d.scan_id,)).fetchone()
    assert (row["verdict"], row["reason"], row["code"], row["raw"]) == (
        "rejected",
        "product_barcode",
        None,
        "6901234567892",
    )
    assert db.conn.execute("SELECT COUNT(*) FROM outbox WHERE scan_id = ?", (d.scan_id,)).fetchone()[0] == 1


def test_seq_counts_events_without_gaps_and_event_ids_increase(scanner):
    ds = [scanner.scan(A), scanner.scan(A, gap=0.1), scanner.scan("x"), scanner.scan(A), scanner.scan(B)]
    assert [d.seq for d in ds] == [1, None, 2, 3, 4]
    ids = [d.event_id for d in ds]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_seq_continues_after_reopening(tmp_path):
    path = tmp_path / "l.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    Scanner(lg).scan(A)
    lg.close()
    lg = Ledger.open(path, device_id="k", site_id="s")
    assert Scanner(lg).scan(B).seq == 2
    assert Scanner(lg).scan(A).verdict == "duplicate"  # state survived the restart


def test_operator_and_bill_are_recorded(db, scanner):
    d = scanner.scan(A, operator="pharmacist-9", bill="RX-2026-001")
    row = db.conn.execute("SELECT operator, bill FROM scans WHERE id = ?", (d.scan_id,)).fetchone()
    assert tuple(row) == ("pharmacist-9", "RX-2026-001")


def test_a_full_bill_rejects_further_codes(db, scanner, monkeypatch):
    monkeypatch.setattr(store, "BILL_LIMIT", 2)
    results = [scanner.scan(f"8123456789012345678{i}", bill="B1") for i in range(3)]
    assert [r.verdict for r in results] == ["accepted", "accepted", "rejected"]
    assert results[2].reason == "bill_full"
    assert scanner.scan("81234567890123456788", bill="B2").verdict == "accepted"


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_tables_are_append_only(db, scanner, table):
    d = scanner.scan(A)
    Outbox(db.conn).mark_delivered([d.scan_id])
    alarm = db.record_alarm("ledger_damaged", "moved aside at start")
    db.conn.execute("INSERT INTO manifest_codes (code, bill_code, level) VALUES (?, 'DN1', 'unit')", (A,))
    Outbox(db.conn).record_receipt(1, "mqtt")
    peer = dict.fromkeys(peers.COLUMNS, "x") | {"code": B, "movement": "dispense", "verdict": "accepted", "seq": 1}
    peers.store(db.conn, [peer | {"pack_codes": [A]}], device_id="kiosk-1", received_ts="2026-01-01T00:00:00.000Z")
    alarms.mark_delivered(db.conn, [alarm], ts="2026-01-01T00:00:00.000Z")
    key, row = {
        "scans": ("id", d.scan_id),
        "alarms": ("id", alarm),
        "manifest_codes": ("code", A),
        "receipts": ("stored_through_seq", 1),
        "peer_events": ("seq", 1),
        "alarm_deliveries": ("alarm_id", alarm),
        "peer_packs": ("code", A),
    }.get(table, ("scan_id", d.scan_id))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute(f"UPDATE {table} SET {key} = 99 WHERE {key} = ?", (row,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute(f"DELETE FROM {table}")
    assert db.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 1


def test_pending_and_delivery(db, scanner):
    ids = [scanner.scan(code).scan_id for code in (A, B, "junk")]
    outbox = Outbox(db.conn)
    assert [r["id"] for r in outbox.pending()] == ids
    assert outbox.oldest_pending_ts() == db.conn.execute("SELECT ts FROM scans WHERE id = ?", (ids[0],)).fetchone()[0]
    outbox.mark_delivered(ids[:2])
    outbox.mark_delivered(ids[:1])  # twice is fine
    assert [r["id"] for r in outbox.pending()] == ids[2:]
    assert outbox.depth() == 1
    assert outbox.oldest_pending_ts() == db.conn.execute("SELECT ts FROM scans WHERE id = ?", (ids[2],)).fetchone()[0]
    outbox.mark_delivered(ids[2:])
    assert outbox.oldest_pending_ts() is None and outbox.depth() == 0
    later = scanner.scan("81234567890123456000")
    assert outbox.oldest_pending_ts() == later.ts


def test_depth_matches_a_full_count_whatever_the_delivery_order(db, scanner):
    """depth() counts only above the floor that oldest_pending_ts raises: it must still
    equal a count of every undelivered event, with deliveries in any order."""
    import random

    ids = [scanner.scan(f"8123456789012345{n:04d}").scan_id for n in range(40)]
    outbox = Outbox(db.conn)
    undelivered = "SELECT COUNT(*) FROM outbox WHERE scan_id NOT IN (SELECT scan_id FROM deliveries)"
    order = random.Random(7).sample(ids, len(ids))
    for batch in (order[:3], order[3:4], [min(ids)], order[4:20], sorted(ids)[:25], order[20:], []):
        outbox.mark_delivered(batch)
        outbox.oldest_pending_ts()  # raises the floor as the uplink's health report does
        assert outbox.depth() == db.conn.execute(undelivered).fetchone()[0]
        assert outbox.depth() == len(outbox.pending(0, 1000))
    later = scanner.scan("81234567890123459999")
    assert outbox.depth() == 1 and outbox.oldest_pending_ts() == later.ts


def test_hash_chain_links_every_row(db, scanner):
    for code in (A, B, "bad", A):
        scanner.scan(code)
    rows = db.conn.execute("SELECT * FROM scans ORDER BY id").fetchall()
    assert rows[0]["prev_hash"] == ledger.GENESIS
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
    assert all(row_hash(r) == r["hash"] for r in rows)
    assert verify(db.conn).ok


def _tamper(path, sql, params=()):
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER scans_no_update")
    conn.execute("DROP TRIGGER scans_no_delete")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def _filled(tmp_path, n=6):
    path = tmp_path / "t.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    s = Scanner(lg)
    for i in range(n):
        s.scan(f"8123456789012345678{i}")
    lg.close()
    return path


def test_verify_names_an_altered_row(tmp_path):
    path = _filled(tmp_path)
    _tamper(path, "UPDATE scans SET code = '81111111111111111111' WHERE id = 4")
    result = verify(ledger.connect(path))
    assert not result.ok and result.bad_id == 4 and "altered" in result.problem


def test_verify_names_a_row_rehashed_after_alteration(tmp_path):
    path = _filled(tmp_path)
    conn = ledger.connect(path)
    row = dict(conn.execute("SELECT * FROM scans WHERE id = 3").fetchone())
    row["movement"] = "receive"
    _tamper(path, "UPDATE scans SET movement = 'receive', hash = ? WHERE id = 3", (row_hash(row),))
    result = verify(ledger.connect(path))
    assert not result.ok and result.bad_id == 4 and "prev_hash" in result.problem


def test_verify_names_a_deleted_row(tmp_path):
    path = _filled(tmp_path)
    _tamper(path, "DELETE FROM scans WHERE id = 2")
    result = verify(ledger.connect(path))
    assert not result.ok and result.bad_id == 3 and "missing" in result.problem


def test_the_outbox_is_every_scan_with_a_seq_and_cannot_be_edited(db, scanner):
    ean = "6901234567892"
    made = [scanner.scan(A), scanner.scan(A), scanner.scan(ean), scanner.scan(ean, gap=0.1), scanner.scan(B)]
    assert [d.verdict for d in made] == ["accepted", "duplicate", "rejected", "double_read", "accepted"]
    events = [row[0] for row in db.conn.execute("SELECT scan_id FROM outbox ORDER BY scan_id")]
    assert events == [d.scan_id for d in made if d.seq is not None]
    with pytest.raises(sqlite3.OperationalError, match="view"):
        db.conn.execute("DELETE FROM outbox")


def test_a_tail_cut_off_still_verifies_and_only_the_seq_check_past_the_kiosk_sees_it(tmp_path):
    """The limit of a hash chain (agent/ledger/chain.py): what is left after the newest
    rows are deleted is a valid chain. The back end, which already holds seq 6 and its
    hash, is what notices a ledger that now ends at seq 4."""
    path = _filled(tmp_path)
    conn = ledger.connect(path)
    sent = {row["seq"]: row["hash"] for row in conn.execute("SELECT seq, hash FROM scans")}
    conn.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER scans_no_delete")
    conn.execute("DELETE FROM scans WHERE id > 4")
    conn.commit()
    assert verify(ledger.connect(path)).ok, "a chain cannot see its own tail cut"
    top = ledger.connect(path).execute("SELECT MAX(seq) FROM scans").fetchone()[0]
    assert top == 4 < max(sent), "what the back end received goes further than the ledger"


def test_nothing_is_recorded_when_the_database_cannot_be_written(tmp_path):
    path = tmp_path / "l.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    s = Scanner(lg)
    s.scan(A)
    lg.conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LedgerError, match="locked"):
        s.scan(B)
    blocker.execute("ROLLBACK")
    assert lg.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 1
    after = s.scan(B)
    assert (after.verdict, after.seq) == ("accepted", 2)
    assert verify(lg.conn).ok


def test_export_rows_since(db, scanner):
    first = scanner.scan(A)
    scanner.scan(B)
    rows = list(ledger.export_rows(db.conn))
    assert [r["event_id"] for r in rows] == [first.event_id, rows[1]["event_id"]]
    assert list(ledger.export_rows(db.conn, since="2999-01-01T00:00:00.000Z")) == []


def test_the_checkpointer_moves_scans_from_the_wal_into_the_database(tmp_path):
    from tests.support.net import wait_until

    path = tmp_path / "l.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    assert lg.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    before = path.stat().st_size
    s = Scanner(lg)
    for i in range(300):
        s.scan(f"8123456789012{i:07d}")
    wait_until(lambda: path.stat().st_size > before + 50_000, timeout=10, what="checkpoint into the database file")
    lg.close()


def test_the_checkpointer_outlives_a_ledger_it_cannot_open_at_first(tmp_path, caplog):
    """A checkpointer that died on its first error would leave the WAL to grow for as long as
    the agent runs; it logs, and tries again on the next write."""
    from tests.support.net import wait_until

    path = tmp_path / "l.db"
    path.write_bytes(b"not a database, yet" * 500)
    checkpointer = checkpoint.Checkpointer(path, interval_s=0.01, idle_s=0.05)
    checkpointer.start()
    wait_until(lambda: "ledger checkpoint failed" in caplog.text, timeout=10, what="the failure logged")
    path.unlink()
    lg = Ledger(ledger.connect(path), device_id="k", site_id="s")
    lg.conn.execute("PRAGMA wal_autocheckpoint=0")
    before = path.stat().st_size
    s = Scanner(lg)
    for i in range(300):
        s.scan(f"8123456789012{i:07d}")
    checkpointer.wrote()
    wait_until(lambda: path.stat().st_size > before + 50_000, timeout=10, what="a checkpoint after the failures")
    checkpointer.stop()
    lg.close()


def test_the_checkpointer_waits_for_a_batch_of_commits(tmp_path):
    """Each checkpoint makes the next commit restart the WAL, which flushes the disk twice:
    announced commits are checkpointed in batches, not every second."""
    from tests.support.net import wait_until

    path = tmp_path / "l.db"
    lg = Ledger(ledger.connect(path), device_id="k", site_id="s")
    lg.conn.execute("PRAGMA wal_autocheckpoint=0")
    checkpointer = checkpoint.Checkpointer(path, interval_s=0.01, idle_s=0.05, batch=20, quiet_s=3600)
    s = Scanner(lg)
    s.scan("81234567890123450000")
    size = path.stat().st_size
    checkpointer.start()  # nothing announced yet: the idle wake checkpoints what is there
    wait_until(lambda: path.stat().st_size > size, timeout=10, what="the first checkpoint")
    size = path.stat().st_size
    for i in range(1, 20):
        s.scan(f"8123456789012{i:07d}")
        checkpointer.wrote()
    time.sleep(0.5)  # ten idle wakes: announced commits, not quiet, not a batch
    assert path.stat().st_size == size
    s.scan("81234567890123459999")
    checkpointer.wrote()  # the 20th
    wait_until(lambda: path.stat().st_size > size, timeout=10, what="the batch checkpointed")
    checkpointer.stop()
    lg.close()


def test_restarting_the_wal_never_holds_the_scan_path_behind_a_reader(tmp_path, monkeypatch):
    """A TRUNCATE checkpoint holds off new writers while it waits for readers: it must give
    up at once while a reader (the uplink draining a backlog) holds the WAL, not wait for it."""
    monkeypatch.setattr(checkpoint, "WAL_RESTART_PAGES", 4)
    path = tmp_path / "l.db"
    lg = Ledger(ledger.connect(path), device_id="k", site_id="s")
    lg.conn.execute("PRAGMA wal_autocheckpoint=0")
    s = Scanner(lg)
    for i in range(10):
        s.scan(f"8123456789012{i:07d}")
    reader = ledger.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM scans").fetchone()  # holds its snapshot of the WAL
    s.scan("81234567890123459999")  # frames the reader's snapshot does not cover
    released = threading.Event()

    def release() -> None:
        released.set()
        reader.execute("COMMIT")

    safety = threading.Timer(20, release)  # a checkpoint that waits for the reader still ends
    safety.start()
    conn = ledger.connect(path)
    try:
        restarted = checkpoint.Checkpointer.checkpoint(conn)
        assert not released.is_set(), "the checkpoint waited for the reader (and held off the scans meanwhile)"
        assert restarted is False
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000  # the connection's own, back
        s.scan("81234567890123459998")  # the scan path writes while the reader still reads
    finally:
        safety.cancel()
        if not released.is_set():
            release()
    assert checkpoint.Checkpointer.checkpoint(conn) is True  # the reader gone: restarted
    assert Path(f"{path}-wal").stat().st_size == 0
    conn.close()
    reader.close()
    lg.close()


def test_the_checkpointer_checkpoints_once_commits_go_quiet(tmp_path):
    from tests.support.net import wait_until

    path = tmp_path / "l.db"
    lg = Ledger(ledger.connect(path), device_id="k", site_id="s")
    lg.conn.execute("PRAGMA wal_autocheckpoint=0")
    checkpointer = checkpoint.Checkpointer(path, interval_s=0.01, idle_s=0.05, batch=1000, quiet_s=0.5)
    s = Scanner(lg)
    for i in range(30):
        s.scan(f"8123456789012{i:07d}")
        checkpointer.wrote()
    size = path.stat().st_size
    checkpointer.start()
    quiet_from = time.monotonic()
    wait_until(lambda: path.stat().st_size > size, timeout=10, what="a checkpoint after the quiet spell")
    assert time.monotonic() - quiet_from >= 0.4
    checkpointer.stop()
    lg.close()


def test_a_wal_past_its_bound_is_restarted_and_truncated(tmp_path, monkeypatch):
    path = tmp_path / "l.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    lg.checkpointer.stop()  # checkpoints by hand here
    s = Scanner(lg)
    for i in range(100):
        s.scan(f"8123456789{i:010d}")
    wal = path.with_name("l.db-wal")
    grown = wal.stat().st_size
    conn = ledger.connect(path)
    ledger.Checkpointer.checkpoint(conn)  # under the bound: passive, the WAL file stays
    assert wal.stat().st_size == grown > 0
    monkeypatch.setattr(checkpoint, "WAL_RESTART_PAGES", 50)
    ledger.Checkpointer.checkpoint(conn)  # past it: restarted and truncated
    assert wal.stat().st_size == 0
    s.scan("81234567890123456789")
    assert verify(conn).ok
    assert conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 101


# Text as scanners, operators and the code check make it: any code point but lone surrogates.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), _TEXT) for k in HASHED}))
def test_the_hashed_bytes_are_the_standard_librarys_canonical_json(row):
    """Back ends recompute hashes with json.dumps: the agent's faster encoding must give its bytes."""
    expected = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical(row) == expected
