"""Site-wide duplicates in the ledger: peer rows, the decision that consults them, conflicts, verify."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from agent import codes
from agent.ledger import SCHEMA_VERSION, Ledger, peers, verify
from agent.read import Read

A = "81234567890123456789"
B = "81234567890123456790"
TS = "2026-11-30T08:00:00.000Z"


class Scanner:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.t = 1000.0

    def scan(self, text: str, movement: str = "dispense"):
        self.t += 10
        read = Read(text.encode(), "serial", "usb:1", t_first=self.t, t_last=self.t)
        return self.ledger.decide_and_record(read, movement, codes.parse(read.raw))


def peer(code: str, movement: str = "dispense", *, n: int = 1, verdict: str = "accepted", device: str = "kiosk-2"):
    return {
        "event_id": f"{device}-{n:04d}",
        "device_id": device,
        "site_id": "site-3",
        "seq": n,
        "ts": f"2026-11-30T07:00:{n % 60:02d}.000Z",
        "movement": movement,
        "verdict": verdict,
        "code": code,
        "product_id": code[:7],
        "hash": "ab" * 32,
    }


def store(ledger: Ledger, *rows: dict):
    return peers.store(ledger.conn, rows, device_id=ledger.device_id, received_ts=TS)


@pytest.fixture
def db(tmp_path):
    lg = Ledger.open(tmp_path / "ledger.db", device_id="kiosk-1", site_id="site-3", lifecycle="off")
    yield lg
    lg.close()


@pytest.fixture
def scanner(db):
    return Scanner(db)


def test_a_code_another_station_dispensed_is_a_duplicate_naming_that_station(db, scanner):
    store(db, peer(A, n=7))
    d = scanner.scan(A)
    assert (d.verdict, d.reason) == ("duplicate", "already_dispensed")
    assert (d.earlier.device_id, d.earlier.event_id, d.earlier.ts, d.earlier.seq) == (
        "kiosk-2",
        "kiosk-2-0007",
        "2026-11-30T07:00:07.000Z",
        7,
    )
    assert "kiosk-2" in d.detail and "kiosk-2-0007" in d.detail
    # The chained row names no local scan (the peer's is in the detail); the chain verifies.
    assert db.conn.execute("SELECT earlier_id FROM scans WHERE id = ?", (d.scan_id,)).fetchone()[0] is None
    assert scanner.scan(B).verdict == "accepted"
    assert verify(db.conn).ok


def test_returned_at_another_station_it_is_dispensable_again_and_the_count_holds(db, scanner):
    store(db, peer(A, n=1), peer(A, "return_in", n=2))
    assert scanner.scan(A).verdict == "accepted"
    assert scanner.scan(A).verdict == "duplicate"  # sold here now
    # A customer return here of a code a peer sold: then dispensable here and there.
    store(db, peer(B, n=3))
    assert scanner.scan(B, "return_in").verdict == "accepted"
    assert scanner.scan(B).verdict == "accepted"


def test_a_peers_void_gives_the_code_back(db, scanner):
    store(db, peer(A, n=1), peer(A, verdict="void", n=2))
    assert scanner.scan(A).verdict == "accepted"


def test_receive_and_the_lifecycle_checks_count_the_peers(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="kiosk-1", site_id="site-3", lifecycle="strict")
    scanner = Scanner(lg)
    try:
        assert scanner.scan(A).reason == "never_received"
        store(lg, peer(A, "receive", n=1))
        assert scanner.scan(A).verdict == "accepted"  # received at the dock, sold at the counter
        d = scanner.scan(B, "receive")
        assert d.verdict == "accepted"
        store(lg, peer(B, "receive", n=2))  # a second receive elsewhere: its arrival is a conflict
        store(lg, peer("81234567890123456791", "receive", n=3))
        d = scanner.scan("81234567890123456791", "receive")
        assert (d.verdict, d.reason, d.earlier.device_id) == ("duplicate", "already_received", "kiosk-2")
        store(lg, peer("81234567890123456792", "dispense", n=4))
        d = scanner.scan("81234567890123456792", "receive")
        assert (d.reason, d.earlier.event_id) == ("dispensed_before", "kiosk-2-0004")
    finally:
        lg.close()


def test_peer_rows_are_stored_once_by_event_id(db):
    assert store(db, peer(A, n=1), peer(A, n=1))[0] == 1
    assert store(db, peer(A, n=1))[0] == 0
    assert db.conn.execute("SELECT COUNT(*) FROM peer_events").fetchone()[0] == 1


def test_a_peer_dispense_of_a_code_accepted_here_raises_one_conflict_naming_both(db, scanner):
    mine = scanner.scan(A)
    assert mine.verdict == "accepted"
    new, conflicts = store(db, peer(A, n=5))
    assert new == 1 and len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict.local["event_id"] == mine.event_id and conflict.peer["event_id"] == "kiosk-2-0005"
    alarm = db.conn.execute("SELECT kind, detail, record FROM alarms").fetchone()
    assert alarm["kind"] == "conflict" and mine.event_id in alarm["detail"] and "kiosk-2-0005" in alarm["record"]
    assert store(db, peer(A, n=5)) == (0, [])  # redelivered: no second alarm
    assert db.conn.execute("SELECT COUNT(*) FROM alarms").fetchone()[0] == 1


def test_no_conflict_when_the_code_was_returned_between(db, scanner):
    assert scanner.scan(A).verdict == "accepted"
    assert scanner.scan(A, "return_in").verdict == "accepted"
    assert store(db, peer(A, n=1))[1] == []
    assert store(db, peer(B, n=2))[1] == []  # never moved here


def test_verify_finds_a_peer_row_altered_or_deleted(db, scanner):
    scanner.scan(A)
    store(db, peer(B, n=1), peer(B, "return_in", n=2), peer(B, n=3))
    assert verify(db.conn).ok
    db.conn.execute("DROP TRIGGER peer_events_no_update")
    db.conn.execute("UPDATE peer_events SET movement = 'receive' WHERE id = 2")
    result = verify(db.conn)
    assert not result.ok
    assert any("no-update trigger" in p for p in result.problems)
    assert any("row 2" in p for p in result.problems)


def test_peer_rows_cannot_be_updated_or_deleted(db):
    store(db, peer(A))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute("DELETE FROM peer_events")


def test_a_ledger_of_the_previous_release_goes_on_with_peers(tmp_path):
    path = tmp_path / "ledger.db"
    shutil.copy(Path(__file__).parent / "data" / "ledger-v3.db", path)
    lg = Ledger.open(path, device_id="kiosk-0001", site_id="site-01")
    try:
        assert lg.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
        assert peers.floors(lg.conn) == {}  # a schema-3 ledger heard no peers
        scanner = Scanner(lg)
        # 81234567890123456790 was received here and never sold; another station sells it.
        row = peer(B, n=1) | {"site_id": "site-01"}
        assert peers.store(lg.conn, [row], device_id="kiosk-0001", received_ts=TS)[1] == []
        d = scanner.scan(B)
        assert (d.verdict, d.earlier.device_id) == ("duplicate", "kiosk-2")
        # 81234567890123456789 was sold here (scan 7): another station's sale of it conflicts.
        conflicts = peers.store(lg.conn, [peer(A, n=2)], device_id="kiosk-0001", received_ts=TS)[1]
        assert [c.local["seq"] for c in conflicts] == [7]
        assert verify(lg.conn).ok
    finally:
        lg.close()


def test_a_schema_7_ledger_moves_to_8_with_each_peers_floor_at_its_highest_stored_seq(tmp_path):
    """tests/data/ledger-v7.db was written by scan-agent at f19fd0d (schema 7): three scans here,
    peer rows kiosk-0002 seqs 3 and 9, kiosk-0003 seq 4."""
    path = tmp_path / "ledger.db"
    shutil.copy(Path(__file__).parent / "data" / "ledger-v7.db", path)
    before = sqlite3.connect(path)
    scans_before = before.execute("SELECT * FROM scans ORDER BY id").fetchall()
    peer_rows_before = before.execute("SELECT * FROM peer_events ORDER BY id").fetchall()
    assert before.execute("PRAGMA user_version").fetchone()[0] == 7
    before.close()
    lg = Ledger.open(path, device_id="kiosk-0001", site_id="site-01", lifecycle="off")
    try:
        assert lg.conn.execute("PRAGMA user_version").fetchone()[0] == 8
        assert peers.floors(lg.conn) == {"kiosk-0002": 9, "kiosk-0003": 4}
        assert [tuple(r) for r in lg.conn.execute("SELECT * FROM scans ORDER BY id")] == scans_before
        assert [tuple(r) for r in lg.conn.execute("SELECT * FROM peer_events ORDER BY id")] == peer_rows_before
        # It goes on: a new peer row and a floor in one transaction, the duplicate rule, verify.
        row = peer("81234567890123456804", n=10, device="kiosk-0002") | {"site_id": "site-01"}
        peers.store(lg.conn, [row], device_id="kiosk-0001", received_ts=TS, floors={"kiosk-0002": 10})
        assert peers.floors(lg.conn)["kiosk-0002"] == 10
        assert Scanner(lg).scan("81234567890123456804").reason == "already_dispensed"
        assert verify(lg.conn).ok
    finally:
        lg.close()
    # Opened again: nothing moves twice.
    lg = Ledger.open(path, device_id="kiosk-0001", site_id="site-01", lifecycle="off")
    try:
        assert peers.floors(lg.conn) == {"kiosk-0002": 10, "kiosk-0003": 4}
    finally:
        lg.close()


def test_a_floor_is_stored_with_the_rows_and_only_rises(db):
    store_floors = peers.store(db.conn, [peer(A, n=3)], device_id="kiosk-1", received_ts=TS, floors={"kiosk-2": 3})
    assert store_floors[0] == 1 and peers.floors(db.conn) == {"kiosk-2": 3}
    peers.store(db.conn, [], device_id="kiosk-1", received_ts=TS, floors={"kiosk-2": 2, "kiosk-3": 8})
    assert peers.floors(db.conn) == {"kiosk-2": 3, "kiosk-3": 8}
    # A batch that fails half-way stores neither its rows nor its floors.
    bad = peer(B, n=5) | {"seq": object()}
    with pytest.raises(TypeError):
        peers.store(db.conn, [peer(B, n=4), bad], device_id="kiosk-1", received_ts=TS, floors={"kiosk-2": 5})
    assert peers.floors(db.conn)["kiosk-2"] == 3
    assert db.conn.execute("SELECT COUNT(*) FROM peer_events").fetchone()[0] == 1


def test_the_codes_inside_a_case_a_peer_received_count_here_and_its_void_gives_them_back(tmp_path):
    """The dock (kiosk-2) receives a case against its manifest; its real event, checked as the
    intake checks it, tells the counter (kiosk-1, which has no manifest) every unit inside."""
    from agent.events import encode, event_from_row
    from agent.ledger.manifests import read_manifest
    from agent.sinks.uplink.peers import check_event, peer_row
    from tests.support.manifests import make_manifest

    manifest = make_manifest("DN-P1", cases=1, units_per_case=6, middle_per_case=2)
    case = next(c["code"] for c in manifest["codes"] if c["level"] == "case")
    middles = sorted(c["code"] for c in manifest["codes"] if c["level"] == "middle")
    units = sorted(c["code"] for c in manifest["codes"] if c["level"] == "unit")
    dock = Ledger.open(tmp_path / "dock.db", device_id="kiosk-2", site_id="site-3", lifecycle="strict")
    counter = Ledger.open(tmp_path / "counter.db", device_id="kiosk-1", site_id="site-3", lifecycle="strict")
    try:
        dock.import_manifest(read_manifest(manifest), read=Read(b"", "cli", "cli"))
        received = Scanner(dock).scan(case, "receive")
        assert received.verdict == "accepted"
        event = event_from_row(dock.conn.execute("SELECT * FROM scans WHERE id = ?", (received.scan_id,)).fetchone())
        checked, why = check_event(encode(event), device="kiosk-2", site_id="site-3")
        assert why == "" and checked is not None
        row = peer_row(checked)
        assert sorted(row["pack_codes"]) == sorted([*middles, *units])

        scanner = Scanner(counter)
        assert scanner.scan(units[0]).reason == "never_received"  # before the dock's event arrives
        assert scanner.scan(units[5], "receive").verdict == "accepted"  # received here on its own
        new, conflicts = peers.store(counter.conn, [row], device_id="kiosk-1", received_ts=TS)
        assert new == 1
        # The unit received twice (here alone, at the dock in the case) is a conflict naming it.
        assert [c.code for c in conflicts] == [units[5]]
        assert conflicts[0].peer["event_id"] == received.event_id

        sold = scanner.scan(units[0])
        assert sold.verdict == "accepted"  # received at the dock inside the case: sellable here
        again = scanner.scan(units[1], "receive")
        assert (again.verdict, again.reason) == ("duplicate", "already_received")
        assert (again.earlier.device_id, again.earlier.event_id) == ("kiosk-2", received.event_id)
        assert scanner.scan(middles[1], "receive").reason == "already_received"

        # The dock voids the case's receive: its units are no longer held at the site.
        void = peer(case, "receive", n=received.seq + 1, verdict="void") | {"product_id": event["product_id"]}
        peers.store(counter.conn, [void], device_id="kiosk-1", received_ts=TS)
        assert scanner.scan(units[2], "receive").verdict == "accepted"
        assert peers.tally(counter.conn, units[3]).held == 0 and peers.tally(counter.conn, units[0]).out == 0
        assert verify(counter.conn).ok
    finally:
        dock.close()
        counter.close()
