"""Events of a document's rows, built from a real ledger: which schema, what they carry, their hashes.

The same events published through a real broker are in ``tests/test_uplink_documents.py``.
"""

import json
from pathlib import Path

import jsonschema
import pytest

from agent import codes
from agent.events import (
    DOCUMENT_SCHEMA,
    SCHEMA,
    event_from_row,
    hashed_row,
    is_document_row,
    record_json,
)
from agent.ledger import Ledger, row_hash
from agent.ledger.documents import ExceptionItem, read_document
from agent.ledger.outbox import Outbox
from agent.read import Read

DOCS = Path(__file__).parents[1] / "docs"
SCHEMAS = {
    SCHEMA: json.loads((DOCS / "event.schema.json").read_text()),
    DOCUMENT_SCHEMA: json.loads((DOCS / "document-event.schema.json").read_text()),
}
AMOXICILLIN, IBUPROFEN, OTHER = "8123456", "8765432", "8999999"


def validate(event: dict) -> None:
    jsonschema.validate(event, SCHEMAS[event["schema"]], format_checker=jsonschema.FormatChecker())


def code(product: str, serial: int) -> bytes:
    return f"{product}{serial:013d}".encode()


class Kiosk:
    """A ledger and a clock of reads, each read 10 s after the last (no double reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1", lock_on=("duplicate",))
        self.t = 0.0

    def read(self, raw: bytes = b"", kind: str = "stdin") -> Read:
        self.t += 10.0
        return Read(raw, kind, "stdin:console" if kind == "stdin" else kind, t_first=self.t, t_last=self.t)

    def scan(self, raw: bytes):
        return self.ledger.decide_and_record(self.read(raw), "dispense", codes.parse(raw))

    def command(self) -> Read:
        return self.read(kind="mqtt")


@pytest.fixture
def kiosk(tmp_path):
    kiosk = Kiosk(tmp_path / "ledger.db")
    yield kiosk
    kiosk.ledger.close()


def a_document_lived_through(kiosk: Kiosk) -> list[dict]:
    """A loose scan, then a prescription: opened, scanned, refused, locked, acknowledged,
    voided, excepted, closed, and a scan of it reversed after. Returns every event."""
    ledger = kiosk.ledger
    kiosk.scan(code(OTHER, 1))  # loose
    body = {
        "id": "RX00000001",
        "kind": "prescription",
        "ref": {"patient": "P-1", "prescriber": "王医生"},
        "lines": [
            {"product_id": AMOXICILLIN, "name": "阿莫西林胶囊 0.25g", "expected": 2},
            {"product_id": IBUPROFEN, "name": "Ibuprofen", "expected": 2, "split_units": 2},
        ],
    }
    ledger.open_document(read_document(body), read=kiosk.command())
    first = kiosk.scan(code(AMOXICILLIN, 1))
    kiosk.scan(code(AMOXICILLIN, 2))
    kiosk.scan(code(OTHER, 2))  # not_on_document
    kiosk.scan(code(AMOXICILLIN, 3))  # line_complete
    kiosk.scan(code(OTHER, 1))  # dispensed as a loose scan: duplicate, which locks
    kiosk.scan(code(IBUPROFEN, 1))  # station_locked
    ledger.acknowledge("supervisor-1", via="mqtt", read=kiosk.command())
    ledger.void(first.event_id, reason="wrong pack", approver="pharmacist-2", read=kiosk.command())
    ledger.add_exception(
        "RX00000001", ExceptionItem(AMOXICILLIN, "damaged", "code torn", "pharmacist-2"), read=kiosk.command()
    )
    ibuprofen = kiosk.scan(code(IBUPROFEN, 1))
    ledger.close_document("RX00000001", closed_by="mqtt", read=kiosk.command())
    ledger.void(ibuprofen.event_id, reason="returned at the counter", read=kiosk.command())  # after close: reversal
    outbox = Outbox.open(kiosk.path)
    try:
        return [event_from_row(row) for row in outbox.pending(0, 1000)]
    finally:
        outbox.close()


def test_every_row_of_a_document_is_one_event_of_the_right_schema_that_checks_against_its_hash(kiosk):
    events = a_document_lived_through(kiosk)
    assert [(e["verdict"], e["reason"]) for e in events] == [
        ("accepted", None),
        ("opened", None),
        ("accepted", None),
        ("accepted", None),
        ("rejected", "not_on_document"),
        ("rejected", "line_complete"),
        ("duplicate", "already_dispensed"),
        ("locked", "already_dispensed"),
        ("rejected", "station_locked"),
        ("acknowledged", None),
        ("void", None),
        ("exception", "damaged"),
        ("accepted", None),
        ("closed", "incomplete"),
        ("reversal", None),
    ]
    assert [e["seq"] for e in events] == list(range(1, 16))  # one seq across both kinds
    for event in events:
        validate(event)
        assert row_hash(hashed_row(event)) == event["hash"], event["verdict"]
    assert [e["schema"] == DOCUMENT_SCHEMA for e in events] == [e["verdict"] in ("opened", "closed") for e in events]
    assert events[0]["document"] is None and events[0]["record"] is None
    for event in events[2:13] + events[14:]:
        assert event["document"] == {"id": "RX00000001", "kind": "prescription"}, event["verdict"]


def test_a_void_names_the_scan_it_voids_and_a_reversal_one_of_a_closed_document(kiosk):
    events = a_document_lived_through(kiosk)
    by_verdict = {e["verdict"]: e for e in events}
    first_scan, ibuprofen = events[2], events[12]
    void = by_verdict["void"]
    assert void["earlier"] == {"ledger_id": first_scan["ledger_id"], "event_id": first_scan["event_id"], "seq": 3}
    assert void["code"] == first_scan["code"] and void["movement"] == "dispense"
    assert void["record"] == {
        "voided": {"event_id": first_scan["event_id"], "seq": 3, "ledger_id": first_scan["ledger_id"]},
        "reason": "wrong pack",
        "approver": "pharmacist-2",
    }
    reversal = by_verdict["reversal"]
    assert reversal["earlier"]["event_id"] == ibuprofen["event_id"] and reversal["record"]["approver"] == ""
    assert by_verdict["exception"]["record"] == {
        "line": AMOXICILLIN,
        "kind": "damaged",
        "reason": "code torn",
        "approver": "pharmacist-2",
        "units": 1,
    }
    locked = by_verdict["locked"]
    assert locked["record"]["cause"]["event_id"] == by_verdict["duplicate"]["event_id"]
    assert by_verdict["acknowledged"]["record"] == {"by": "supervisor-1", "via": "mqtt", "lock": locked["event_id"]}


def test_the_closed_document_event_carries_lines_codes_voids_exceptions_and_scan_hashes(kiosk):
    events = a_document_lived_through(kiosk)
    opened, closed = (e for e in events if e["schema"] == DOCUMENT_SCHEMA)
    assert opened["event"] == "opened" and opened["source"] == {"kind": "mqtt", "id": "mqtt"}
    assert opened["document"]["movement"] == "dispense" and opened["document"]["ref"]["prescriber"] == "王医生"
    assert [line["product_id"] for line in opened["document"]["lines"]] == [AMOXICILLIN, IBUPROFEN]
    doc = closed["document"]
    assert closed["event"] == "closed" and closed["reason"] == doc["status"] == "incomplete"
    second, ibuprofen = events[3], events[12]
    amox, ibu = doc["lines"]
    # The voided first scan is gone; the damaged unit counts without a code.
    assert amox["drugtracinfo"] == [{"drug_trac_codg": second["code"], "trdn_flag": 0}]
    assert (amox["collected"], amox["exceptions"]) == (2, 1)
    assert ibu["drugtracinfo"] == [{"drug_trac_codg": ibuprofen["code"], "trdn_flag": 1}]  # split pack
    assert (ibu["collected"], ibu["expected"]) == (1, 2)
    assert (doc["collected"], doc["expected"], doc["closed_by"]) == (3, 4, "mqtt")
    void = next(e for e in events if e["verdict"] == "void")
    assert [v["event_id"] for v in doc["voids"]] == [void["event_id"]]
    assert [x["event_id"] for x in doc["exceptions"]] == [events[11]["event_id"]]
    assert doc["scans"] == [
        {"event_id": e["event_id"], "seq": e["seq"], "hash": e["hash"]} for e in (second, ibuprofen)
    ]


def test_the_record_an_event_carries_is_reserialised_to_the_very_text_the_ledger_hashed(kiosk):
    a_document_lived_through(kiosk)
    rows = kiosk.ledger.conn.execute("SELECT * FROM scans WHERE record IS NOT NULL ORDER BY id").fetchall()
    assert [r["verdict"] for r in rows] == [
        "opened",
        "locked",
        "acknowledged",
        "void",
        "exception",
        "closed",
        "reversal",
    ]
    for row in rows:
        assert record_json(json.loads(row["record"])) == row["record"]


def test_an_altered_document_or_record_no_longer_matches_its_hash(kiosk):
    events = a_document_lived_through(kiosk)
    closed = next(e for e in events if e.get("event") == "closed")
    closed["document"]["lines"][0]["drugtracinfo"].append({"drug_trac_codg": "81234560000000099999", "trdn_flag": 0})
    assert row_hash(hashed_row(closed)) != closed["hash"]
    void = next(e for e in events if e["verdict"] == "void")
    void["record"]["approver"] = "someone-else"
    assert row_hash(hashed_row(void)) != void["hash"]
    scan = events[3]
    scan["document"]["id"] = "RX00000002"  # moved to another document
    assert row_hash(hashed_row(scan)) != scan["hash"]


def test_an_event_from_before_documents_checks_as_it_always_did(kiosk):
    kiosk.scan(code(OTHER, 1))
    (event,) = a_document_events(kiosk)
    del event["document"], event["record"]  # as a scan-event/1 consumer stored it last year
    assert row_hash(hashed_row(event)) == event["hash"]


def test_only_a_document_opened_or_closed_is_a_document_row(kiosk):
    a_document_lived_through(kiosk)
    rows = kiosk.ledger.conn.execute("SELECT verdict FROM scans ORDER BY id").fetchall()
    assert [r["verdict"] for r in rows if is_document_row(r)] == ["opened", "closed"]


def a_document_events(kiosk: Kiosk) -> list[dict]:
    return [event_from_row(row) for row in kiosk.ledger.conn.execute("SELECT * FROM scans ORDER BY id")]
