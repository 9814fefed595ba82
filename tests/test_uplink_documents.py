"""Documents by MQTT command, on a real ``scan-agent run`` and a real mosquitto started by the test.

A prescription is opened, scanned on the agent's stdin, excepted, voided and closed by
commands; what the agent publishes on ``{p}/events`` and ``{p}/documents`` is captured
by a subscriber, checked against both JSON Schemas and against each row's hash. Bad
commands get an error reply naming the field and leave the ledger as it was.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema
import pytest

from agent.events import DOCUMENT_SCHEMA, SCHEMA, hashed_row
from agent.ledger import connect, row_hash
from agent.sinks.uplink.commands import MAX_DOCUMENT_BYTES
from tests.support.agent import start_agent
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until

BASE = "trace/v1/site-1/kiosk-1"
DOCS = Path(__file__).parents[1] / "docs"
SCHEMAS = {
    SCHEMA: json.loads((DOCS / "event.schema.json").read_text()),
    DOCUMENT_SCHEMA: json.loads((DOCS / "document-event.schema.json").read_text()),
}
AMOXICILLIN, IBUPROFEN, OTHER = "8123456", "8765432", "8999999"
PRESCRIPTION = {
    "id": "RX00000001",
    "kind": "prescription",
    "ref": {"patient": "P-1", "visit": "V-77"},
    "lines": [
        {"product_id": AMOXICILLIN, "name": "阿莫西林胶囊 0.25g", "expected": 2},
        {"product_id": IBUPROFEN, "name": "布洛芬缓释胶囊", "expected": 2, "split_units": 2},
    ],
}


def code(product: str, serial: int) -> str:
    return f"{product}{serial:013d}"


class Kiosk:
    """``scan-agent run`` on its stdin scanner, and a subscriber and a commander on the broker."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.ledger = tmp_path / "ledger.db"
        self.config = tmp_path / "agent.toml"
        self.config.write_text(
            f"""
[station]
device_id = "kiosk-1"
site_id = "site-1"
movement = "dispense"

[ledger]
path = "{self.ledger}"

[feedback]
backend = "none"

[documents]
lock_on = ["duplicate"]
idle_close_s = 0

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
backoff_max_s = 2
"""
        )
        self.sub = Subscriber(port, f"{BASE}/events", f"{BASE}/documents", f"{BASE}/status").start()
        self.commander = Commander(port, BASE).start()
        self.agent = start_agent("run", "--config", str(self.config))
        wait_until(lambda: b"online" in [m.payload for m in self.sub.on("/status")], timeout=20, what="agent online")
        self.conn = connect(self.ledger)

    def stop(self) -> int:
        try:
            self.agent.stdin.close()  # EOF on stdin: the agent stops cleanly
            return self.agent.wait(20)
        finally:
            self.agent.kill()
            self.commander.stop()
            self.sub.stop()
            self.conn.close()

    def send(self, name: str, body: dict | bytes) -> dict:
        return self.commander.send(name, body)

    def scan(self, text: str) -> sqlite3.Row:
        """Type ``text`` on the scanner; returns the row the agent recorded for it (the
        first: a scan that locks the station is followed by the ``locked`` row)."""
        last = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM scans").fetchone()[0]
        self.agent.stdin.write(text.encode() + b"\n")
        self.agent.stdin.flush()
        return wait_until(
            lambda: self.conn.execute("SELECT * FROM scans WHERE id > ? ORDER BY id LIMIT 1", (last,)).fetchone(),
            what=f"scan {text} recorded",
        )

    def rows(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]

    def seqs(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM scans WHERE seq IS NOT NULL").fetchone()[0]

    def published(self) -> dict[str, tuple[str, dict]]:
        """Every event received so far by event id (a resent copy counted once): (topic, event)."""
        return {
            event["event_id"]: (m.topic.rsplit("/", 1)[1], event)
            for m in self.sub.on("/events") + self.sub.on("/documents")
            for event in (json.loads(m.payload),)
        }

    def all_published(self) -> dict[str, tuple[str, dict]]:
        """Once every row with a seq has been published and its delivery recorded."""
        wait_until(lambda: len(self.published()) == self.seqs() and self.undelivered() == 0, what="all delivered")
        return self.published()

    def undelivered(self) -> int:
        return self.conn.execute("SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM deliveries)").fetchone()[
            0
        ]


@pytest.fixture
def kiosk(tmp_path, broker):
    kiosk = Kiosk(tmp_path, broker.port)
    yield kiosk
    assert kiosk.stop() == 0


def check(topic: str, event: dict) -> None:
    """An event is on the right topic, valid by its schema, and checks against its hash."""
    assert topic == ("documents" if event["schema"] == DOCUMENT_SCHEMA else "events"), event["verdict"]
    jsonschema.validate(event, SCHEMAS[event["schema"]], format_checker=jsonschema.FormatChecker())
    assert row_hash(hashed_row(event)) == event["hash"], event["verdict"]


def test_a_prescription_opened_scanned_excepted_and_closed_by_command(kiosk):
    loose = kiosk.scan(code(OTHER, 1))  # before the document: a loose scan
    opened = kiosk.send("open_document", PRESCRIPTION)
    assert opened["ok"] is True, opened
    (row,) = opened["result"]["rows"]
    assert (row["verdict"], row["document"]) == ("opened", {"id": "RX00000001", "kind": "prescription"})
    assert row["progress"]["expected"] == 4 and row["progress"]["collected"] == 0

    amox1, amox2 = kiosk.scan(code(AMOXICILLIN, 1)), kiosk.scan(code(AMOXICILLIN, 2))
    wrong = kiosk.scan(code(OTHER, 2))
    ibu = kiosk.scan(code(IBUPROFEN, 1))
    assert [r["verdict"] for r in (amox1, amox2, wrong, ibu)] == ["accepted", "accepted", "rejected", "accepted"]
    assert wrong["reason"] == "not_on_document"

    excepted = kiosk.send(
        "exception",
        {"document": "RX00000001", "line": IBUPROFEN, "kind": "uncoded", "reason": "no code on the box",
         "approver": "pharmacist-2"},
    )  # fmt: skip
    assert excepted["ok"] is True and excepted["result"]["rows"][0]["verdict"] == "exception", excepted
    closed = kiosk.send("close_document", {"id": "RX00000001"})
    assert closed["ok"] is True, closed
    assert (closed["result"]["rows"][0]["verdict"], closed["result"]["rows"][0]["reason"]) == (
        "closed",
        "complete_with_exceptions",
    )

    published = kiosk.all_published()
    for topic, event in published.values():
        check(topic, event)
    # The two topics together carry the device's whole seq, each row once.
    assert sorted(e["seq"] for _, e in published.values()) == list(range(1, kiosk.seqs() + 1))
    documents = sorted((e for t, e in published.values() if t == "documents"), key=lambda e: e["seq"])
    assert [e["event"] for e in documents] == ["opened", "closed"]
    assert documents[0]["document"] == {
        "id": "RX00000001",
        "kind": "prescription",
        "movement": "dispense",
        "ref": {"patient": "P-1", "visit": "V-77"},
        "lines": [
            {"product_id": AMOXICILLIN, "name": "阿莫西林胶囊 0.25g", "expected": 2, "split_units": 1},
            {"product_id": IBUPROFEN, "name": "布洛芬缓释胶囊", "expected": 2, "split_units": 2},
        ],
    }
    assert documents[0]["source"] == {"kind": "mqtt", "id": "mqtt"}

    doc = documents[1]["document"]
    assert (documents[1]["reason"], doc["status"], doc["closed_by"]) == (
        "complete_with_exceptions",
        "complete_with_exceptions",
        "mqtt",
    )
    amox_line, ibu_line = doc["lines"]
    assert amox_line["drugtracinfo"] == [
        {"drug_trac_codg": amox1["code"], "trdn_flag": 0},
        {"drug_trac_codg": amox2["code"], "trdn_flag": 0},
    ]
    assert ibu_line["drugtracinfo"] == [{"drug_trac_codg": ibu["code"], "trdn_flag": 1}]  # split pack (拆零)
    assert (ibu_line["collected"], ibu_line["exceptions"]) == (2, 1)
    exception_row = kiosk.conn.execute("SELECT * FROM scans WHERE verdict = 'exception'").fetchone()
    assert doc["exceptions"] == [
        {"line": IBUPROFEN, "kind": "uncoded", "reason": "no code on the box", "approver": "pharmacist-2",
         "units": 1, "event_id": exception_row["event_id"], "ts": exception_row["ts"]},
    ]  # fmt: skip
    assert doc["voids"] == []
    # Each included scan by event, seq and hash: the same as its own scan event's.
    scans = {r["event_id"]: r for r in (amox1, amox2, ibu)}
    assert doc["scans"] == [{"event_id": e, "seq": r["seq"], "hash": r["hash"]} for e, r in scans.items()]
    for event_id, row in scans.items():
        topic, event = published[event_id]
        assert (topic, event["hash"], event["document"]) == (
            "events",
            row["hash"],
            {"id": "RX00000001", "kind": "prescription"},
        )
    assert published[wrong["event_id"]][1]["reason"] == "not_on_document"
    assert published[loose["event_id"]][1]["document"] is None


def test_a_scan_voided_by_command_is_a_void_event_naming_the_scan_and_leaves_the_closed_document(kiosk):
    assert kiosk.send("open_document", {"id": "SALE-1", "kind": "sale"})["ok"] is True
    kept, voided = kiosk.scan(code(AMOXICILLIN, 1)), kiosk.scan(code(AMOXICILLIN, 2))
    reply = kiosk.send("void", {"event_id": voided["event_id"], "reason": "wrong pack", "approver": "pharmacist-2"})
    assert reply["ok"] is True, reply
    assert kiosk.send("close_document", {"id": "SALE-1"})["ok"] is True

    published = kiosk.all_published()
    for topic, event in published.values():
        check(topic, event)
    (void,) = [e for _, e in published.values() if e["verdict"] == "void"]
    assert void["earlier"] == {"ledger_id": voided["id"], "event_id": voided["event_id"], "seq": voided["seq"]}
    assert void["record"]["voided"]["event_id"] == voided["event_id"] and void["record"]["reason"] == "wrong pack"
    (closed,) = [e for _, e in published.values() if e.get("event") == "closed"]
    assert closed["document"]["drugtracinfo"] == [{"drug_trac_codg": kept["code"], "trdn_flag": 0}]
    assert [v["event_id"] for v in closed["document"]["voids"]] == [void["event_id"]]
    # The voided code is back in stock: it can be sold again (after another scan, so
    # that the same code twice within 2 s is not taken for a double read).
    assert kiosk.scan(code(OTHER, 9))["verdict"] == "accepted"
    assert kiosk.scan(code(AMOXICILLIN, 2))["verdict"] == "accepted"


def test_a_duplicate_in_a_document_locks_the_station_until_acknowledged_by_command(kiosk):
    kiosk.scan(code(AMOXICILLIN, 1))
    assert kiosk.send("open_document", {"id": "SALE-2", "kind": "sale"})["ok"] is True
    kiosk.scan(code(AMOXICILLIN, 2))
    duplicate = kiosk.scan(code(AMOXICILLIN, 1))  # sold before the document: locks
    assert duplicate["verdict"] == "duplicate"
    assert kiosk.scan(code(AMOXICILLIN, 3))["reason"] == "station_locked"
    reply = kiosk.send("acknowledge", {"by": "supervisor-1"})
    assert reply["ok"] is True and reply["result"]["rows"][0]["verdict"] == "acknowledged", reply
    assert kiosk.scan(code(AMOXICILLIN, 4))["verdict"] == "accepted"

    published = kiosk.all_published()
    for topic, event in published.values():
        check(topic, event)
    by_verdict = {e["verdict"]: e for _, e in published.values()}
    assert by_verdict["locked"]["record"]["cause"]["event_id"] == duplicate["event_id"]
    assert by_verdict["acknowledged"]["record"] == {
        "by": "supervisor-1",
        "via": "mqtt",
        "lock": by_verdict["locked"]["event_id"],
    }
    assert by_verdict["acknowledged"]["source"] == {"kind": "mqtt", "id": "mqtt"}


def test_a_document_of_3500_lines_opens_by_command_and_its_events_resend_by_seq(kiosk):
    lines = [{"product_id": f"{8000000 + n}", "name": f"药品 {n} 片剂 10mg×24", "expected": 1} for n in range(3500)]
    body = {"id": "DN-3500", "kind": "delivery", "ref": {"supplier": "S-1"}, "lines": lines}
    assert len(json.dumps(body)) > 50 * 4096  # far past the other commands' limit
    reply = kiosk.send("open_document", body)
    assert reply["ok"] is True, reply.get("error")
    assert reply["result"]["rows"][0]["progress"]["expected"] == 3500
    received = kiosk.scan(f"{8000007}{1:013d}")
    assert received["verdict"] == "accepted" and received["movement"] == "receive"
    assert kiosk.send("close_document", {"id": "DN-3500"})["ok"] is True

    published = kiosk.all_published()
    for topic, event in published.values():
        check(topic, event)
    opened, closed = sorted((e for t, e in published.values() if t == "documents"), key=lambda e: e["seq"])
    assert len(opened["document"]["lines"]) == 3500 and closed["reason"] == "incomplete"
    assert closed["document"]["lines"][7]["drugtracinfo"] == [{"drug_trac_codg": received["code"], "trdn_flag": 0}]

    # resend by seq covers both topics: each row again, on the topic it went out on.
    before = len(kiosk.sub.on("/documents")), len(kiosk.sub.on("/events"))
    again = kiosk.send("resend", {"from_seq": 1, "to_seq": 3})
    assert again["ok"] is True and again["result"]["found"] == 3
    wait_until(
        lambda: (len(kiosk.sub.on("/documents")), len(kiosk.sub.on("/events"))) == (before[0] + 2, before[1] + 1),
        what="resent copies",
    )
    copies = [json.loads(m.payload) for m in kiosk.sub.on("/documents")[before[0] :]]
    assert [c["event_id"] for c in copies] == [opened["event_id"], closed["event_id"]]
    assert [c["hash"] for c in copies] == [opened["hash"], closed["hash"]]


def oversized_document() -> bytes:
    lines = [{"product_id": "8123456", "name": "x" * 200, "expected": 1}] * 6000
    return json.dumps({"id": "RX-BIG", "kind": "sale", "lines": lines}).encode()


BAD = [
    ("open_document", {"id": "RX00000002", "kind": "invoice"}, "kind", "'invoice' is not allowed"),
    ("open_document", {"id": "RX00000002", "kind": "sale", "lines": "8123456 x2"}, "lines", "must be a list"),
    ("open_document", {"id": "RX00000002", "kind": "sale", "lines": [["8123456", 2]]}, "lines[0]", "must be an object"),
    (
        "open_document",
        {"id": "RX00000002", "kind": "sale", "lines": [{"product_id": 8123456, "expected": 1}]},
        "lines[0].product_id",
        "7-digit product id",
    ),
    (
        "open_document",
        {"id": "RX00000002", "kind": "sale", "lines": [{"product_id": AMOXICILLIN, "expected": 0}]},
        "lines[0].expected",
        "from 1 to 3500",
    ),
    (
        "open_document",
        {"id": "RX00000002", "kind": "sale", "lines": [{"product_id": AMOXICILLIN, "name": "a", "expected": -2}]},
        "lines[0].expected",
        "from 1 to 3500",
    ),
    ("open_document", {"id": "RX00000001", "kind": "sale"}, "id", "used by a document already closed"),
    ("open_document", {"kind": "sale"}, "id", "must be printable text"),
    ("close_document", {"id": "RX00000009"}, "id", "is not open"),
    (
        "exception",
        {"document": "RX00000009", "line": AMOXICILLIN, "kind": "lost", "reason": "r", "approver": "a"},
        "kind",
        "'lost' is not allowed",
    ),
    ("void", {"event_id": "01a20201-b659-7083-a16f-962d91e3b1bb", "reason": "r"}, "event_id", ""),
    ("acknowledge", {"by": "supervisor-1"}, "station", "not locked"),
    ("acknowledge", {"by": "supervisor-1", "when": "now"}, "when", "unknown field"),
]


def test_bad_document_commands_name_the_field_change_nothing_and_the_agent_goes_on(kiosk):
    # A document closed already, so that its id cannot be used again.
    assert kiosk.send("open_document", PRESCRIPTION)["ok"] is True
    assert kiosk.send("close_document", {"id": "RX00000001"})["ok"] is True
    for name, body, field, error in BAD:
        rows = kiosk.rows()
        reply = kiosk.send(name, body)
        assert reply["ok"] is False and reply["command"] == name, (name, body, reply)
        assert reply["field"] == field and error in reply["error"], (name, body, reply)
        assert kiosk.rows() == rows, (name, body)

    rows = kiosk.rows()
    payload = oversized_document()
    assert len(payload) > MAX_DOCUMENT_BYTES
    reply = kiosk.send("open_document", payload)
    assert reply["ok"] is False and f"command is {len(payload)} bytes; at most {MAX_DOCUMENT_BYTES}" in reply["error"]
    assert "field" not in reply  # the whole command, unread
    reply = kiosk.send("open_document", b'{"id": "RX00000003", "kind": "sale", "lines": [')
    assert reply["ok"] is False and "payload is not JSON" in reply["error"]
    assert kiosk.rows() == rows

    assert kiosk.scan(code(AMOXICILLIN, 5))["verdict"] == "accepted"  # still scanning
    assert kiosk.send("open_document", {"id": "RX00000003", "kind": "sale"})["ok"] is True  # and taking commands
