"""A ledger made by the previous release (schema 2, tests/data/ledger-v2.db) opens, moves
forward to the current schema, keeps every scan and delivery, and goes on.

The fixture was written by scan-agent at commit d3383c6 (schema 2): 17 scans of every
verdict and several movements, 5 events delivered, one alarm.
"""

import shutil
import sqlite3
from pathlib import Path

import pytest

from agent import codes
from agent.ledger import SCHEMA_VERSION, Ledger, connect, verify
from agent.ledger.outbox import Outbox
from agent.read import Read

V2 = Path(__file__).parent / "data" / "ledger-v2.db"
A = "81234567890123456789"  # received, dispensed, returned, dispensed again in the fixture
C = "81234567890123456791"  # destroyed in the fixture


@pytest.fixture
def old(tmp_path) -> Path:
    path = tmp_path / "ledger.db"
    shutil.copy(V2, path)
    return path


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def scan(ledger: Ledger, text: str, movement: str = "dispense", t: float = 1e6):
    read = Read(text.encode(), "serial", "usb:1", t_first=t, t_last=t)
    return ledger.decide_and_record(read, movement, codes.parse(read.raw))


def test_the_fixture_is_a_schema_2_ledger():
    assert rows(V2, "PRAGMA user_version") == [(2,)]
    assert ("outbox", "table") in rows(V2, "SELECT name, type FROM sqlite_master")


def test_an_old_ledger_moves_forward_with_every_scan_and_delivery(old):
    scans_before = rows(old, "SELECT * FROM scans ORDER BY id")
    delivered_before = rows(old, "SELECT scan_id, ts, reason_code FROM deliveries ORDER BY scan_id")
    state_before = rows(old, "SELECT * FROM code_state ORDER BY code")
    alarms_before = rows(old, "SELECT * FROM alarms")

    ledger = Ledger.open(old, device_id="kiosk-0001", site_id="site-01", split_packs={"8765432": 2})
    ledger.close()

    assert rows(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [row[: len(scans_before[0])] for row in rows(old, "SELECT * FROM scans ORDER BY id")] == scans_before
    assert rows(old, "SELECT COUNT(*) FROM scans WHERE document IS NOT NULL OR record IS NOT NULL") == [(0,)]
    assert rows(old, "SELECT scan_id, ts, reason_code FROM deliveries ORDER BY scan_id") == delivered_before
    assert rows(old, "SELECT * FROM code_state ORDER BY code") == state_before
    # Schema 7 adds alarms.record: NULL in every alarm raised before.
    assert [row[: len(alarms_before[0])] for row in rows(old, "SELECT * FROM alarms")] == alarms_before
    assert rows(old, "SELECT COUNT(*) FROM alarms WHERE record IS NOT NULL") == [(0,)]
    kinds = dict(rows(old, "SELECT name, type FROM sqlite_master"))
    assert kinds["outbox"] == "view"
    assert "WITHOUT ROWID" in rows(old, "SELECT sql FROM sqlite_master WHERE name = 'code_state'")[0][0]
    assert "idx_scans_device_id_seq" not in kinds and "idx_scans_ts" not in kinds
    assert verify(connect(old)).ok
    assert rows(old, "PRAGMA integrity_check") == [("ok",)]


def test_an_old_ledger_goes_on_deciding_as_before(old):
    ledger = Ledger.open(old, device_id="kiosk-0001", site_id="site-01", split_packs={"8765432": 2})
    last_seq = rows(old, "SELECT MAX(seq) FROM scans")[0][0]
    again = scan(ledger, A)
    assert (again.verdict, again.reason) == ("duplicate", "already_dispensed")
    assert again.earlier is not None and again.earlier.seq is not None
    assert scan(ledger, C).reason == "destroyed"
    fresh = scan(ledger, "81234567890123450000")
    assert fresh.verdict == "accepted" and fresh.seq == last_seq + 3
    ledger.close()
    conn = connect(old)
    assert verify(conn).ok, "the chain goes on from the old rows"
    outbox = Outbox(conn)
    pending = [row["seq"] for row in outbox.pending(0, 100)]
    assert pending == [seq for (seq,) in rows(old, "SELECT seq FROM scans WHERE seq > 5 ORDER BY id")]
    assert outbox.depth() == len(pending)
    assert [row["seq"] for row in outbox.by_seq("kiosk-0001", 2, 4)] == [2, 3, 4]


def test_a_migration_that_fails_leaves_the_old_ledger_as_it_was(old):
    conn = sqlite3.connect(old)
    # A ledger whose code_state lacks a column the copy needs: the migration must roll back whole.
    conn.execute("ALTER TABLE code_state RENAME COLUMN destroyed_id TO gone_id")
    conn.commit()
    conn.close()
    before = rows(old, "SELECT name, type FROM sqlite_master ORDER BY name")
    with pytest.raises(sqlite3.OperationalError):
        Ledger.open(old, device_id="kiosk-0001", site_id="site-01")
    assert rows(old, "SELECT name, type FROM sqlite_master ORDER BY name") == before
    assert rows(old, "PRAGMA user_version") == [(2,)]


V3 = Path(__file__).parent / "data" / "ledger-v3.db"


def test_a_schema_3_ledger_gains_documents_and_goes_on(tmp_path):
    """tests/data/ledger-v3.db was written by scan-agent at commit 6e764f6 (schema 3, the
    release before documents): 17 rows of every verdict, 6 events delivered, one alarm."""
    from agent.ledger.documents import read_document

    path = tmp_path / "ledger.db"
    shutil.copy(V3, path)
    assert rows(path, "PRAGMA user_version") == [(3,)]
    scans_before = rows(path, "SELECT * FROM scans ORDER BY id")
    delivered_before = rows(path, "SELECT * FROM deliveries ORDER BY scan_id")

    ledger = Ledger.open(path, device_id="kiosk-0001", site_id="site-01", split_packs={"8765432": 2})
    assert [row[: len(scans_before[0])] for row in rows(path, "SELECT * FROM scans ORDER BY id")] == scans_before
    assert rows(path, "SELECT * FROM deliveries ORDER BY scan_id") == delivered_before
    assert scan(ledger, A).reason == "already_dispensed", "the code state came along"
    command = Read(b"", "command", "test")
    doc = read_document(
        {"id": "RX00000001", "kind": "prescription", "lines": [{"product_id": "8123456", "expected": 1}]}
    )
    ledger.open_document(doc, read=command)
    inside = scan(ledger, "81234567890123450001")
    assert inside.verdict == "accepted" and inside.document == {"id": "RX00000001", "kind": "prescription"}
    [closed] = ledger.close_document("RX00000001", closed_by="command", read=command)
    assert closed.reason == "complete"
    ledger.close()

    conn = connect(path)
    result = verify(conn)
    assert result.ok and result.rows == len(scans_before) + 4
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert Outbox(conn).depth() == rows(path, "SELECT COUNT(*) FROM scans WHERE seq IS NOT NULL")[0][0] - 6
