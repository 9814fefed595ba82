"""The station's verbs on a running pipeline: commands between scans, refusals that record
nothing, the idle close, and the supervisor's acknowledge button (gpiozero MockFactory)."""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config import parse_toml
from agent.ledger import Ledger, verify
from agent.ledger.documents import DocumentError
from agent.pipeline import Pipeline
from agent.read import Read
from agent.station import Station, StationCodes
from agent.wiring import make_ack_button
from tests.support.net import wait_until

AMOX = "8123456"


def code(n: int) -> str:
    return f"{AMOX}{n:013d}"


class Collect:
    def __init__(self):
        self.seen = []

    def decided(self, decision):
        self.seen.append(decision)


@pytest.fixture
def station(tmp_path):
    ledger = Ledger.open(
        tmp_path / "ledger.db", device_id="k", site_id="s", lock_on=("duplicate",), double_read_window_s=0
    )
    sink = Collect()
    pipeline = Pipeline(ledger, sinks=[sink], station_codes=StationCodes({"sale": "^S[0-9]{4}$"}, "CLOSE", "ACK"))
    pipeline.start()
    station = Station(pipeline)
    station.sink = sink
    yield station
    pipeline.stop()
    assert verify(ledger.conn).ok
    ledger.close()


def scan(station: Station, text: str) -> None:
    station.pipeline.submit(Read(text.encode(), "stdin", "stdin"))


def test_commands_take_their_place_between_scans(station):
    scan(station, code(1))
    reply = station.open_document(
        {"id": "S0001", "kind": "sale", "lines": [{"product_id": AMOX, "expected": 2}]}, via="mqtt", source_id="pos-1"
    )
    [opened] = reply["rows"]
    assert opened["verdict"] == "opened" and opened["progress"]["expected"] == 2
    scan(station, code(2))
    reply = station.close_document({"id": "S0001"}, via="mqtt")
    assert reply["rows"][0]["reason"] == "incomplete"
    verdicts = [d.verdict for d in station.sink.seen]
    assert verdicts == ["accepted", "opened", "accepted", "closed"], "the sinks hear commands in order with scans"
    assert station.sink.seen[1].read.source_kind == "mqtt" and station.sink.seen[1].read.source_id == "pos-1"


def test_a_refused_command_records_nothing(station):
    ledger = station.pipeline.ledger
    before = ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    for verb, body, field in (
        (station.open_document, {"id": "S1", "kind": "invoice"}, "kind"),
        (station.close_document, {"id": "S9"}, "id"),
        (station.void, {"event_id": "1", "reason": "x"}, "event_id"),
        (station.acknowledge, {"by": "sup"}, "station"),
        (station.acknowledge, {"who": "sup"}, "who"),
    ):
        with pytest.raises(DocumentError) as problem:
            verb(body)
        assert problem.value.field == field
    assert ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == before
    assert station.sink.seen == []


def test_an_idle_document_closes(station):
    station.pipeline.idle_close_s = 0.2
    scan(station, "S0002")
    wait_until(lambda: [d.verdict for d in station.sink.seen] == ["opened", "closed"], timeout=10, what="idle close")
    assert station.sink.seen[-1].record["closed_by"] == "idle"


def test_the_acknowledge_button_lifts_the_lock(station):
    factory = MockFactory()
    cfg = parse_toml("[documents]\nack_pin = 5\n")
    button = make_ack_button(cfg, station, pin_factory=factory)
    try:
        scan(station, code(3))  # sold loose
        scan(station, "S0003")
        scan(station, code(3))  # sold again inside the sale: a duplicate, the station locks
        wait_until(lambda: len(station.sink.seen) == 3, timeout=10, what="the duplicate")
        assert station.sink.seen[-1].locks and station.pipeline.ledger.lock is not None
        pin = factory.pin(5)
        pin.drive_low()  # pressed (pull-up: active low)
        wait_until(lambda: station.pipeline.ledger.lock is None, timeout=10, what="the lock lifted")
        pin.drive_high()
        ack = station.sink.seen[-1]
        assert ack.verdict == "acknowledged" and ack.record["via"] == "button"
        assert ack.read.source_id == "gpio:5"
        time.sleep(0.1)
        pin.drive_low()  # pressed again while not locked: logged, nothing recorded
        time.sleep(0.3)
        assert [d.verdict for d in station.sink.seen].count("acknowledged") == 1
    finally:
        button.close()


def test_a_command_the_pipeline_never_took_is_refused_and_never_recorded(tmp_path):
    ledger = Ledger.open(tmp_path / "idle.db", device_id="k", site_id="s")
    pipeline = Pipeline(ledger)  # not started yet: as busy as a pipeline gets
    with pytest.raises(DocumentError, match="nothing recorded"):
        Station(pipeline, timeout_s=0.2).open_document({"id": "S1", "kind": "sale"})
    pipeline.start()
    pipeline.stop()
    assert ledger.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 0
    with pytest.raises(DocumentError, match="stopping"):
        Station(pipeline, timeout_s=0.2).open_document({"id": "S2", "kind": "sale"})
    ledger.close()


def test_a_document_opened_after_a_long_quiet_spell_is_not_closed_as_idle(station):
    station.pipeline.idle_close_s = 0.5
    time.sleep(0.7)
    scan(station, "S0004")
    wait_until(lambda: len(station.sink.seen) == 1, timeout=10, what="the opened row")
    time.sleep(0.2)
    assert [d.verdict for d in station.sink.seen] == ["opened"]


def test_the_scanner_reading_a_document_barcode_twice_is_a_quiet_double_read(station):
    station.pipeline.ledger.double_read_window_s = 2.0
    scan(station, "S0005")
    scan(station, "S0005")
    wait_until(lambda: len(station.sink.seen) == 2, timeout=10, what="two decisions")
    assert [d.verdict for d in station.sink.seen] == ["opened", "double_read"]
