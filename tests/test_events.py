"""The published event: built from the ledger row, verifiable against its hash, valid by the schema."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema

from agent import codes
from agent.events import BACKFILL_AFTER_S, encode, event_from_row, hashed_row
from agent.ledger import Ledger, row_hash
from agent.ledger.outbox import Outbox
from agent.read import Read

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "event.schema.json").read_text())


def validate(event: dict) -> None:
    jsonschema.validate(event, SCHEMA, format_checker=jsonschema.FormatChecker())


def record(ledger, raw: bytes, movement: str = "dispense", **kw):
    t = kw.pop("t", 0.0)
    read = Read(raw, "stdin", "stdin:console", t_first=t, t_last=t)
    return ledger.decide_and_record(read, movement, codes.parse(raw, accept_gs1=True), **kw)


def test_every_kind_of_event_matches_its_row_hash_and_the_schema(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    record(ledger, b"81234567890123456789", operator="op-7", bill="B-1", t=0.0)
    record(ledger, b"81234567890123456789", t=10.0)  # duplicate
    record(ledger, b"6901234567892", t=20.0)  # product barcode
    record(ledger, b"]d20109501101530003" + b"21ABC\x1d17270101", t=30.0)  # GS1
    record(ledger, b"\xff\xfe", t=40.0)  # not text
    record(ledger, b"81234567890123456789", movement="return_in", t=50.0)
    record(ledger, b"81234567890123456789", t=50.5)  # double read: no event
    outbox = Outbox.open(path)
    rows = outbox.pending(0, 100)
    assert [r["verdict"] for r in rows] == ["accepted", "duplicate", "rejected", "accepted", "rejected", "accepted"]
    events = [event_from_row(r) for r in rows]
    for event in events:
        validate(event)
        assert row_hash(hashed_row(event)) == event["hash"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0]["operator"] == "op-7" and events[0]["bill"] == "B-1"
    assert events[1]["earlier"] == {"ledger_id": 1, "event_id": events[0]["event_id"], "seq": 1}
    assert events[2]["reason"] == "product_barcode" and events[2]["code"] is None
    assert events[3]["kind"] == "gs1" and events[3]["ais"]["21"] == "ABC"
    assert events[1]["prev_hash"] == events[0]["hash"]


def test_the_wire_form_is_compact_utf8_json_that_decodes_to_the_event(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    record(ledger, b"81234567890123456789", operator="药师-王", bill="单-1", t=0.0)
    record(ledger, b"81234567890123456789", t=10.0)  # duplicate: nested "earlier"
    record(ledger, b"]d20109501101530003" + b"21ABC\x1d17270101", t=30.0)  # GS1: nested "ais"
    record(ledger, b"\xff\xfe", t=40.0)  # escaped raw bytes
    for row in Outbox.open(path).pending(0, 100):
        event = event_from_row(row)
        wire = encode(event)
        # The bytes json.dumps would give: UTF-8 (not \\u escapes), no spaces, keys in order.
        assert wire == json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert json.loads(wire) == event
    assert "药师-王".encode() in encode(event_from_row(Outbox.open(path).pending(0, 1)[0]))


def test_an_altered_event_no_longer_matches_its_hash(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    record(ledger, b"81234567890123456789")
    event = event_from_row(Outbox.open(path).pending()[0])
    event["movement"] = "receive"
    assert row_hash(hashed_row(event)) != event["hash"]


def test_backfilled_is_set_when_sent_long_after_the_scan(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    record(ledger, b"81234567890123456789")
    row = Outbox.open(path).pending()[0]
    recorded = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
    assert event_from_row(row, now=recorded + timedelta(seconds=1))["backfilled"] is False
    late = event_from_row(row, now=recorded + timedelta(seconds=BACKFILL_AFTER_S + 1))
    assert late["backfilled"] is True
    validate(late)


def test_schema_refuses_an_event_without_its_hash(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger.open(path, device_id="k", site_id="s")
    record(Ledger.open(path, device_id="k", site_id="s"), b"81234567890123456789")
    event = event_from_row(Outbox.open(path).pending()[0], now=datetime.now(UTC))
    del event["hash"]
    try:
        validate(event)
    except jsonschema.ValidationError as problem:
        assert "hash" in problem.message
    else:
        raise AssertionError("schema accepted an event without hash")
