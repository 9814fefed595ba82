"""Documents in the ledger: lines checked at each scan, progress, status at close, voids,
exceptions, the station lock, lifecycle rules, and everything in the one verified chain."""

import json
import sqlite3

import pytest

from agent import codes
from agent.ledger import Ledger, LedgerError, verify
from agent.ledger.documents import DocumentError, ExceptionItem, read_document, read_exception, read_void
from agent.ledger.rules import State, judge
from agent.read import Read

AMOX = "8123456"  # product ids of three drugs
IBU = "8234567"
PARA = "8345678"
COMMAND = Read(b"", "command", "test")


def code(product: str, n: int) -> str:
    return f"{product}{n:013d}"


PRESCRIPTION = {
    "id": "RX00000001",
    "kind": "prescription",
    "ref": {"patient": "P-17", "visit": "V-2026-11-30-3"},
    "lines": [
        {"product_id": AMOX, "name": "Amoxicillin 500 mg", "expected": 2},
        {"product_id": IBU, "name": "Ibuprofen 200 mg", "expected": 1},
        {"product_id": PARA, "name": "Paracetamol 500 mg", "expected": 1},
    ],
}


class Counter:
    """Scans with controlled monotonic times, far apart (no double reads)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.t = 1000.0

    def scan(self, text: str, movement: str = "dispense"):
        self.t += 10
        read = Read(text.encode(), "serial", "usb:1", t_first=self.t, t_last=self.t)
        return self.ledger.decide_and_record(read, movement, codes.parse(read.raw))

    def open(self, body=PRESCRIPTION, **kwargs):
        return self.ledger.open_document(read_document(body), read=COMMAND, **kwargs)

    def receive(self, *texts):
        for text in texts:
            assert self.scan(text, "receive").verdict == "accepted"


def open_ledger(path, **kwargs) -> Ledger:
    kwargs.setdefault("lock_on", ("dispensed_before", "duplicate"))
    kwargs.setdefault("lifecycle", "warn")
    return Ledger.open(path, device_id="kiosk-1", site_id="site-1", **kwargs)


@pytest.fixture
def db(tmp_path):
    ledger = open_ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


@pytest.fixture
def counter(db):
    return Counter(db)


def rows(ledger: Ledger) -> int:
    return ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]


def test_a_three_line_prescription_is_collected_and_closes_complete(db, counter):
    [opened] = counter.open()
    assert opened.verdict == "opened" and opened.movement == "dispense"
    assert opened.record["ref"] == {"patient": "P-17", "visit": "V-2026-11-30-3"}
    progress = [counter.scan(c).progress["collected"] for c in (code(AMOX, 1), code(AMOX, 2), code(IBU, 1))]
    assert progress == [1, 2, 3]
    last = counter.scan(code(PARA, 1))
    assert last.document == {"id": "RX00000001", "kind": "prescription"}
    assert last.progress["complete"] and last.progress["expected"] == 4
    [closed] = db.close_document("RX00000001", closed_by="command", read=COMMAND)
    assert (closed.verdict, closed.reason) == ("closed", "complete")
    lines = {line["product_id"]: line for line in closed.record["lines"]}
    assert lines[AMOX]["drugtracinfo"] == [
        {"drug_trac_codg": code(AMOX, 1), "trdn_flag": 0},
        {"drug_trac_codg": code(AMOX, 2), "trdn_flag": 0},
    ]
    assert len(closed.record["scans"]) == 4 and db.document is None
    assert verify(db.conn).ok


def test_the_movement_comes_from_the_kind(db, counter):
    counter.open({"id": "DN00000001", "kind": "delivery"})
    decision = counter.scan(code(AMOX, 1), movement="dispense")
    assert (decision.verdict, decision.movement) == ("accepted", "receive")


def test_wrong_drug_over_count_and_twice_in_a_document_are_caught(db, counter):
    counter.receive(code(AMOX, 1), code(AMOX, 2), code(AMOX, 3), "89999990000000000001")
    counter.open()
    wrong = counter.scan("89999990000000000001")
    assert (wrong.verdict, wrong.reason) == ("rejected", "not_on_document")
    counter.scan(code(AMOX, 1))
    counter.scan(code(AMOX, 2))
    over = counter.scan(code(AMOX, 3))
    assert (over.verdict, over.reason) == ("rejected", "line_complete")
    assert over.progress["lines"][0]["collected"] == 2
    # The wrong drug and the over-count did not change the codes' state: both still dispensable.
    assert db._state(code(AMOX, 3)).out_count == 0


def test_a_stock_check_counts_each_box_once(db, counter):
    counter.open({"id": "SC1", "kind": "stock_check"})
    assert counter.scan(code(AMOX, 1)).verdict == "accepted"
    again = counter.scan(code(AMOX, 1))
    assert (again.verdict, again.reason) == ("rejected", "in_document")


def test_split_units_let_one_code_cover_several_units(db, counter):
    counter.open({"id": "S1", "kind": "sale", "lines": [{"product_id": AMOX, "expected": 3, "split_units": 10}]})
    results = [counter.scan(code(AMOX, 1)).verdict for _ in range(3)]
    assert results == ["accepted"] * 3
    [closed] = db.close_document("S1", closed_by="command", read=COMMAND)
    assert closed.reason == "complete"
    assert closed.record["lines"][0]["drugtracinfo"] == [{"drug_trac_codg": code(AMOX, 1), "trdn_flag": 1}] * 3


def test_a_document_is_full_at_3500_codes(db, counter, monkeypatch):
    from agent.ledger import documents

    monkeypatch.setattr(documents, "DOCUMENT_LIMIT", 2)
    counter.open({"id": "S2", "kind": "sale"})
    assert [counter.scan(code(AMOX, n)).reason for n in range(3)] == [
        "never_received",
        "never_received",
        "document_full",
    ]


def test_a_void_reverts_the_code_and_the_rescan_is_accepted(db, counter):
    counter.receive(code(AMOX, 1))
    counter.open()
    first = counter.scan(code(AMOX, 1))
    [void] = db.void(first.event_id, reason="scanned for the wrong patient", approver="pharmacist-2", read=COMMAND)
    assert void.verdict == "void" and void.earlier.event_id == first.event_id
    assert void.record["approver"] == "pharmacist-2" and void.progress["collected"] == 0
    rescan = counter.scan(code(AMOX, 1))
    assert (rescan.verdict, rescan.reason) == ("accepted", None)
    with pytest.raises(DocumentError, match="voided already") as twice:
        db.void(first.event_id, reason="again", read=COMMAND)
    assert twice.value.field == "event_id"


def test_a_void_after_close_is_a_reversal(db, counter):
    counter.open({"id": "S3", "kind": "sale"})
    sold = counter.scan(code(AMOX, 1))
    db.close_document("S3", closed_by="command", read=COMMAND)
    [reversal] = db.void(sold.event_id, reason="refund at the counter", read=COMMAND)
    assert reversal.verdict == "reversal" and reversal.document == {"id": "S3", "kind": "sale"}
    assert counter.scan(code(AMOX, 1)).verdict == "accepted", "the code is dispensable again"


def test_refused_voids_change_nothing(db, counter):
    counter.open({"id": "S4", "kind": "sale"})
    loose_ledger_row = counter.scan("6901234567892")  # rejected: a product barcode
    before = rows(db)
    for event_id, match in (
        ("01a00000-0000-7000-8000-000000000000", "no scan"),
        (loose_ledger_row.event_id, "only an accepted scan"),
    ):
        with pytest.raises(DocumentError, match=match):
            db.void(event_id, reason="x", read=COMMAND)
    assert rows(db) == before


def test_an_exception_counts_toward_completion(db, counter):
    counter.open()
    for c in (code(AMOX, 1), code(AMOX, 2), code(IBU, 1)):
        counter.scan(c)
    doc_id, item = read_exception(
        {"document": "RX00000001", "line": PARA, "kind": "damaged", "reason": "code torn", "approver": "chief-1"}
    )
    [exception] = db.add_exception(doc_id, item, read=COMMAND)
    assert exception.verdict == "exception" and exception.progress["complete"]
    [closed] = db.close_document("RX00000001", closed_by="command", read=COMMAND)
    assert closed.reason == "complete_with_exceptions"
    assert closed.record["exceptions"][0]["approver"] == "chief-1"


def test_an_incomplete_document(db, counter):
    counter.open()
    counter.scan(code(AMOX, 1))
    [closed] = db.close_document("RX00000001", closed_by="idle", read=COMMAND)
    assert (closed.reason, closed.record["closed_by"]) == ("incomplete", "idle")


def test_a_new_document_closes_the_open_one_or_is_refused(db, counter):
    counter.open()
    closed, opened = counter.open({"id": "RX00000002", "kind": "prescription"})
    assert (closed.verdict, closed.reason, closed.record["closed_by"]) == ("closed", "incomplete", "new_document")
    assert opened.verdict == "opened" and db.document.id == "RX00000002"
    before = rows(db)
    with pytest.raises(DocumentError, match="close it first"):
        counter.open({"id": "RX00000003", "kind": "sale"}, on_new="refuse")
    assert rows(db) == before and db.document.id == "RX00000002"


def test_an_id_is_never_reused(db, counter):
    counter.open()
    db.close_document("RX00000001", closed_by="command", read=COMMAND)
    before = rows(db)
    with pytest.raises(DocumentError) as reused:
        counter.open()
    assert reused.value.field == "id" and rows(db) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "X1", "kind": "invoice"}, "kind"),
        ({"id": "X1", "kind": "sale", "lines": "[{"}, "lines"),
        ({"id": "X1", "kind": "sale", "lines": [{"product_id": AMOX, "expected": 0}]}, "lines[0].expected"),
        ({"id": "X1", "kind": "sale", "lines": [{"product_id": AMOX, "expected": -2}]}, "lines[0].expected"),
        ({"id": "X1", "kind": "sale", "lines": [{"product_id": "12", "expected": 1}]}, "lines[0].product_id"),
        ({"id": "X1", "kind": "sale", "lines": [{"product_id": AMOX}, {"product_id": AMOX}]}, "lines[0].expected"),
        ({"id": "", "kind": "sale"}, "id"),
        ({"id": "X1", "kind": "sale", "ref": {"colour": "red"}}, "ref.colour"),
        ({"id": "X1", "kind": "sale", "extra": 1}, "extra"),
    ],
)
def test_bad_documents_name_the_field(body, field):
    with pytest.raises(DocumentError) as problem:
        read_document(body)
    assert problem.value.field == field


def test_bad_voids_and_exceptions_name_the_field():
    for bad in ("abc", "999", 7, None):
        with pytest.raises(DocumentError) as problem:
            read_void({"event_id": bad, "reason": "x"})
        assert problem.value.field == "event_id"
    assert read_void({"event_id": "01a22ac1-87db-7054-af92-b3da00ee4411", "reason": "r"})[1] == "r"
    with pytest.raises(DocumentError) as problem:
        read_exception({"document": "D", "line": AMOX, "kind": "lost", "reason": "x", "approver": "a"})
    assert problem.value.field == "kind"
    with pytest.raises(DocumentError) as problem:
        read_exception({"document": "D", "line": AMOX, "kind": "damaged", "reason": "x", "approver": "a", "units": 0})
    assert problem.value.field == "units"


def test_a_duplicate_in_a_document_locks_the_station_until_acknowledged(db, counter):
    counter.open({"id": "S5", "kind": "sale"})
    counter.scan(code(AMOX, 1))
    db.close_document("S5", closed_by="command", read=COMMAND)
    counter.open({"id": "S6", "kind": "sale"})
    again = counter.scan(code(AMOX, 1))
    assert (again.verdict, again.reason, again.locks) == ("duplicate", "already_dispensed", True)
    refused = counter.scan(code(IBU, 1))
    assert (refused.verdict, refused.reason) == ("rejected", "station_locked")
    [ack] = db.acknowledge("supervisor-3", via="command", read=COMMAND)
    assert ack.verdict == "acknowledged" and ack.record["by"] == "supervisor-3"
    assert counter.scan(code(IBU, 1)).verdict == "accepted"
    with pytest.raises(DocumentError, match="not locked"):
        db.acknowledge("supervisor-3", via="command", read=COMMAND)


def test_the_same_box_twice_in_a_document_is_a_counting_slip_not_a_lock(db, counter):
    counter.open({"id": "S7", "kind": "sale"})
    counter.scan(code(AMOX, 1))
    again = counter.scan(code(AMOX, 1))
    assert (again.verdict, again.reason, again.locks) == ("rejected", "in_document", False)
    assert db.lock is None and counter.scan(code(IBU, 1)).verdict == "accepted"


def test_split_packs_apply_in_a_document_without_lines(tmp_path):
    ledger = open_ledger(tmp_path / "split.db", split_packs={AMOX: 2}, lifecycle="off")
    counter = Counter(ledger)
    counter.open({"id": "S8", "kind": "sale"})
    assert [counter.scan(code(AMOX, 1)).reason for _ in range(3)] == [None, None, "in_document"]
    [closed] = ledger.close_document("S8", closed_by="command", read=COMMAND)
    assert {c["trdn_flag"] for c in closed.record["drugtracinfo"]} == {1}
    ledger.close()


def test_empty_and_idle_documents_without_lines_close_incomplete(db, counter):
    counter.open({"id": "S9", "kind": "sale"})
    assert db.close_document("S9", closed_by="command", read=COMMAND)[0].reason == "incomplete"
    counter.open({"id": "S10", "kind": "sale"})
    counter.scan(code(AMOX, 1))
    assert db.close_document("S10", closed_by="idle", read=COMMAND)[0].reason == "incomplete"


def test_a_void_is_refused_once_the_code_moved_on(db, counter):
    received = counter.scan(code(AMOX, 1), "receive")
    counter.open({"id": "DN1", "kind": "delivery"})
    in_doc = counter.scan(code(AMOX, 2))
    db.close_document("DN1", closed_by="command", read=COMMAND)
    counter.scan(code(AMOX, 2))  # sold after it was received
    with pytest.raises(DocumentError, match="moved after"):
        db.void(in_doc.event_id, reason="not ours", read=COMMAND)
    assert received.verdict == "accepted"
    counter.open({"id": "CR1", "kind": "customer_return"})
    returned = counter.scan(code(AMOX, 2))
    db.close_document("CR1", closed_by="command", read=COMMAND)
    counter.scan(code(AMOX, 2))  # sold again after the return
    with pytest.raises(DocumentError, match="moved after"):
        db.void(returned.event_id, reason="x", read=COMMAND)


def test_a_stale_open_document_is_read_back_before_the_next_decision(db, counter, monkeypatch):
    from agent.ledger import store

    counter.open()
    counter.scan(code(AMOX, 1))
    before = db.document.progress()
    db.conn.execute("CREATE TRIGGER no_more BEFORE INSERT ON scans BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    monkeypatch.setattr(store, "load_open_document", lambda *a: (_ for _ in ()).throw(sqlite3.OperationalError("io")))
    with pytest.raises(LedgerError):
        counter.scan(code(AMOX, 2))
    with pytest.raises(LedgerError, match="read the open document back"):
        counter.scan(code(AMOX, 2))
    monkeypatch.undo()
    db.conn.execute("DROP TRIGGER no_more")
    assert counter.scan(code(AMOX, 2)).progress["collected"] == before["collected"] + 1
    assert verify(db.conn).ok


def test_loose_scans_do_not_lock(db, counter):
    counter.scan(code(AMOX, 1))
    assert counter.scan(code(AMOX, 1)).locks is False
    assert counter.scan(code(IBU, 1)).verdict == "accepted"


def test_lifecycle_warn_flags_and_strict_rejects(tmp_path):
    for lifecycle, verdict in (("warn", "accepted"), ("strict", "rejected")):
        ledger = open_ledger(tmp_path / f"{lifecycle}.db", lifecycle=lifecycle)
        counter = Counter(ledger)
        never = counter.scan(code(AMOX, 1))
        assert (never.verdict, never.reason) == (verdict, "never_received")
        ret = counter.scan(code(IBU, 1), "return_in")
        assert (ret.verdict, ret.reason) == (verdict, "never_dispensed")
        counter.receive(code(PARA, 1))
        assert counter.scan(code(PARA, 1)).reason is None
        back = counter.scan(code(PARA, 1), "receive")
        assert (back.verdict, back.reason) == ("duplicate", "dispensed_before")
        ledger.close()


def test_lifecycle_off_keeps_the_old_rules():
    assert judge("dispense", State(), allowed=1, lifecycle="off").reason is None
    sold = State(out_count=1, out_id=4)
    assert judge("receive", sold, allowed=1, lifecycle="off").verdict == "accepted"


def test_the_open_document_and_the_lock_survive_a_restart(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    counter = Counter(ledger)
    counter.receive(code(AMOX, 1), code(AMOX, 2), code(IBU, 1), code(IBU, 2))
    counter.scan(code(IBU, 2))  # sold loose, before the prescription
    counter.open()
    first = counter.scan(code(AMOX, 1))
    counter.scan(code(AMOX, 2))
    ledger.void(first.event_id, reason="wrong box", read=COMMAND)
    doc_id, item = read_exception(
        {"document": "RX00000001", "line": PARA, "kind": "uncoded", "reason": "no code", "approver": "a"}
    )
    ledger.add_exception(doc_id, item, read=COMMAND)
    counter.scan(code(IBU, 1))
    assert counter.scan(code(IBU, 2)).locks  # sold before: a duplicate in the document locks
    expected = ledger.document.progress()
    ledger.close()

    again = open_ledger(path)
    assert again.document is not None and again.document.progress() == expected
    assert again.lock is not None
    counter = Counter(again)
    assert counter.scan(code(AMOX, 1)).reason == "station_locked"
    again.acknowledge("sup", via="command", read=COMMAND)
    assert counter.scan(code(AMOX, 1)).progress["complete"]
    [closed] = again.close_document("RX00000001", closed_by="close_code", read=COMMAND)
    assert closed.reason == "complete_with_exceptions"
    assert verify(again.conn).ok
    again.close()


def test_entries_are_in_the_chain_and_verify_sees_them_altered(db, counter):
    counter.open()
    counter.scan(code(AMOX, 1))
    db.close_document("RX00000001", closed_by="command", read=COMMAND)
    assert verify(db.conn).ok
    db.conn.execute("DROP TRIGGER scans_no_update")
    opened_id = db.conn.execute("SELECT id FROM scans WHERE verdict = 'opened'").fetchone()[0]
    record = json.loads(db.conn.execute("SELECT record FROM scans WHERE id = ?", (opened_id,)).fetchone()[0])
    record["lines"][0]["expected"] = 1
    db.conn.execute("UPDATE scans SET record = ? WHERE id = ?", (json.dumps(record), opened_id))
    result = verify(db.conn)
    assert not result.ok and result.bad_id == opened_id


def test_entry_rows_cannot_be_updated_or_deleted(db, counter):
    counter.open()
    with pytest.raises(Exception, match="append-only"):
        db.conn.execute("UPDATE scans SET record = '{}' WHERE verdict = 'opened'")


def test_a_failed_write_leaves_the_open_document_as_it_was(db, counter):
    counter.open()
    counter.scan(code(AMOX, 1))
    before = db.document.progress()
    db.conn.execute("CREATE TRIGGER no_more BEFORE INSERT ON scans BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(LedgerError):
        counter.scan(code(AMOX, 2))
    with pytest.raises(LedgerError):
        db.close_document("RX00000001", closed_by="command", read=COMMAND)
    assert db.document is not None and db.document.progress() == before
    db.conn.execute("DROP TRIGGER no_more")
    assert counter.scan(code(AMOX, 2)).progress["collected"] == 2
    assert verify(db.conn).ok


def test_an_exception_needs_a_line_of_the_open_document(db, counter):
    counter.open()
    before = rows(db)
    with pytest.raises(DocumentError) as problem:
        db.add_exception("RX00000001", ExceptionItem("8999999", "uncoded", "x", "a"), read=COMMAND)
    assert problem.value.field == "line"
    with pytest.raises(DocumentError) as problem:
        db.add_exception("RX00000009", ExceptionItem(AMOX, "uncoded", "x", "a"), read=COMMAND)
    assert problem.value.field == "id" and rows(db) == before


def test_a_report_counts_exceptions_as_the_ledger_does(db, counter):
    from agent.ledger.reports import show_document

    counter.open()
    for c in (code(AMOX, 1), code(AMOX, 2), code(IBU, 1)):
        counter.scan(c)
    doc_id, item = read_exception(
        {"document": "RX00000001", "line": PARA, "kind": "uncoded", "reason": "no code", "approver": "a"}
    )
    db.add_exception(doc_id, item, read=COMMAND)
    db.close_document("RX00000001", closed_by="command", read=COMMAND)
    shown = show_document(db.conn, "RX00000001")
    assert shown["status"] == "complete_with_exceptions"
    assert shown["progress"] == {"collected": 4, "expected": 4, "complete": True}
    assert [line["exceptions"] for line in shown["lines"]] == [0, 0, 1]
