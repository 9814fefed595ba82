"""The uplink against a real mosquitto started by the test: delivery, broker crash, commands, health."""

import json
import sqlite3
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from agent import codes
from agent.config import MqttConfig
from agent.ledger import Ledger, connect
from agent.pipeline import Pipeline
from agent.read import Read
from agent.sinks.uplink import Uplink
from agent.sinks.uplink.commands import MAX_COMMAND_BYTES
from tests.support.backlog import code, fill_ledger
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Commander, Subscriber
from tests.support.net import wait_until

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "event.schema.json").read_text())
BASE = "trace/v1/site-1/kiosk-1"


def make_uplink(path, port, pipeline=None, **settings) -> Uplink:
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, **settings)
    uplink = Uplink(
        config,
        db_path=path,
        device_id="kiosk-1",
        site_id="site-1",
        set_context=None if pipeline is None else pipeline.set_context,
        scanners=lambda: {"console": True, "dock": False},
    )
    if pipeline is not None:
        pipeline.sinks.append(uplink)
    return uplink


def ledger_events(path) -> dict[str, sqlite3.Row]:
    conn = connect(path)
    return {r["event_id"]: r for r in conn.execute("SELECT * FROM scans WHERE seq IS NOT NULL")}


def depth(path) -> int:
    conn = connect(path)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM outbox) - (SELECT COUNT(*) FROM deliveries)").fetchone()[0]
    finally:
        conn.close()


def test_a_thousand_live_scans_arrive_exactly_as_recorded(tmp_path, broker):
    path = tmp_path / "ledger.db"
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    pipeline = Pipeline(Ledger.open(path, device_id="kiosk-1", site_id="site-1"))
    uplink = make_uplink(path, broker.port, pipeline)
    pipeline.start()
    uplink.start()
    for n in range(990):
        pipeline.submit(Read(code(n), "stdin", "stdin:console"))
    for n in range(10):  # and ten duplicates, which are events too
        pipeline.submit(Read(code(n), "stdin", "stdin:other"))
    wait_until(lambda: len(sub.events()) >= 1000 and depth(path) == 0, timeout=45, what="1000 events delivered")
    uplink.stop()
    pipeline.stop()
    sub.stop()

    recorded = ledger_events(path)
    events = sub.events()
    assert len(recorded) == 1000
    assert sorted(e["event_id"] for e in events) == sorted(recorded)
    assert sorted(e["seq"] for e in events) == list(range(1, 1001))
    for event in events:
        jsonschema.validate(event, SCHEMA)
        row = recorded[event["event_id"]]
        assert (event["seq"], event["hash"], event["prev_hash"], event["verdict"], event["code"]) == (
            row["seq"],
            row["hash"],
            row["prev_hash"],
            row["verdict"],
            row["code"],
        )
        assert event["backfilled"] is False
    assert sum(e["verdict"] == "duplicate" for e in events) == 10
    assert uplink.delivered == 1000 and uplink.failures == 0


def delivered_ids(path) -> set[str]:
    conn = connect(path)
    try:
        return {
            r[0] for r in conn.execute("SELECT event_id FROM scans JOIN deliveries ON deliveries.scan_id = scans.id")
        }
    finally:
        conn.close()


def test_broker_killed_while_5000_events_drain_loses_none(tmp_path):
    """Every event arrives, except what the killed broker itself had acknowledged and lost.

    mosquitto answers PUBACK before it has forwarded or saved a message (its
    persistence is a periodic snapshot), so SIGKILL can lose events it already
    acknowledged; no publisher can see that. The test checks that any event
    missing at the subscriber is one the dead broker acknowledged, and that
    everything else arrives. (No forwarding window to subscribers, to keep that
    broker-side loss small.)
    """
    broker = Mosquitto(tmp_path, extra_conf="max_inflight_messages 0\n")
    broker.start()
    path = tmp_path / "ledger.db"
    fill_ledger(path, 5000)
    sub = Subscriber(broker.port, f"{BASE}/events", client_id="collector").start()
    time.sleep(1.5)  # let the broker autosave the collector's session, so it survives the crash
    uplink = make_uplink(path, broker.port, max_inflight=20, backoff_max_s=2)
    uplink.start()
    try:
        wait_until(lambda: depth(path) <= 4000, timeout=30, what="a fifth drained")
        broker.kill()
        time.sleep(0.5)  # no PUBACK can come now; let the acknowledged ones be recorded
        acked_by_dead_broker = delivered_ids(path)
        assert len(acked_by_dead_broker) < 5000, "drained before the kill; the test proves nothing"
        broker.start()
        wait_until(lambda: depth(path) == 0, timeout=45, what="outbox drained after restart")
        recorded = set(ledger_events(path))
        must_arrive = recorded - acked_by_dead_broker
        wait_until(lambda: sub.event_ids() >= must_arrive, timeout=15, what="every event not lost by the broker")
        time.sleep(1)  # stragglers
        lost_by_broker = recorded - sub.event_ids()
        assert lost_by_broker <= acked_by_dead_broker
        assert len(recorded) == 5000 and uplink.failures == 0
    finally:
        uplink.stop()
        sub.stop()
        broker.stop()


def test_live_events_are_not_starved_by_a_backlog(tmp_path, broker):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 3000)
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    pipeline = Pipeline(Ledger.open(path, device_id="kiosk-1", site_id="site-1"))
    uplink = make_uplink(path, broker.port, pipeline, max_inflight=2)
    pipeline.start()
    uplink.start()
    wait_until(lambda: sub.events(), timeout=10, what="backlog draining")
    pipeline.submit(Read(code(99_999), "stdin", "stdin:console"))
    live = wait_until(
        lambda: [e for e in sub.events() if e["code"] == code(99_999).decode()], timeout=20, what="live event"
    )
    backlog_before_live = sub.events().index(live[0])
    assert depth(path) > 0, "backlog drained before the live event went out; the test proves nothing"
    wait_until(lambda: depth(path) == 0, timeout=45, what="backlog drained")
    uplink.stop()
    pipeline.stop()
    sub.stop()
    assert backlog_before_live < 3000  # it jumped the queue
    assert live[0]["seq"] == 3001


@pytest.fixture
def station(tmp_path, broker):
    """A pipeline and a v5 uplink on the test broker, and a commander."""
    path = tmp_path / "ledger.db"
    pipeline = Pipeline(Ledger.open(path, device_id="kiosk-1", site_id="site-1"))
    uplink = make_uplink(path, broker.port, pipeline, health_interval_s=1)
    pipeline.start()
    uplink.start()
    wait_until(lambda: uplink.connected, what="uplink connected")
    commander = Commander(broker.port, BASE).start()
    yield pipeline, uplink, commander, path
    commander.stop()
    uplink.stop()
    pipeline.stop()


def scan_and_wait(pipeline, path, n):
    pipeline.submit(Read(code(n), "stdin", "stdin:console"))
    conn = connect(path)
    return wait_until(lambda: conn.execute("SELECT * FROM scans WHERE code = ?", (code(n).decode(),)).fetchone())


def test_set_command_changes_movement_operator_bill_for_later_scans(station):
    pipeline, _uplink, commander, path = station
    reply = commander.send("set", {"movement": "receive", "operator": "op-9", "bill": "PO-42"})
    assert reply["ok"] is True and reply["command"] == "set"
    row = scan_and_wait(pipeline, path, 1)
    assert (row["movement"], row["operator"], row["bill"]) == ("receive", "op-9", "PO-42")


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("set", {"movement": "sell"}, "movement 'sell' is not allowed"),
        ("set", {"movement": "receive", "colour": "red"}, "set takes one or more of movement, operator, bill"),
        ("set", {"operator": 7}, "operator must be a string"),
        ("set", {"bill": "x" * 65}, "at most 64 characters"),
        ("launch", {}, "unknown command 'launch'"),
        ("set", b"{not json", "payload is not JSON"),
        ("set", b"[1, 2]", "payload must be a JSON object"),
        ("set", b" " * (MAX_COMMAND_BYTES + 1), f"at most {MAX_COMMAND_BYTES} allowed"),
        ("health", {"verbose": True}, "health takes no arguments"),
    ],
)
def test_bad_commands_get_an_error_reply_and_change_nothing(station, name, payload, error):
    pipeline, _uplink, commander, path = station
    reply = commander.send(name, payload)
    assert reply["ok"] is False and error in reply["error"]
    row = scan_and_wait(pipeline, path, 2)
    assert (row["movement"], row["operator"], row["bill"]) == ("dispense", "", "")


def test_a_retained_command_is_refused(station):
    _pipeline, uplink, commander, _path = station
    reply = commander.send("set", {"movement": "destroy"}, retain=True)
    assert reply["ok"] is True  # live delivery of a retained publish arrives without the retain flag
    # A retained command must not replay on every reconnect: a new session sees it retained.
    uplink.client.disconnect()  # the network thread reconnects with backoff
    wait_until(lambda: not uplink.connected, what="dropped")
    wait_until(lambda: uplink.connected, timeout=10, what="reconnected")
    refused = wait_until(
        lambda: [json.loads(m.payload) for m in commander.replies.on("/reply") if b"retained" in m.payload],
        what="retained refusal",
    )
    assert refused[0]["ok"] is False
    commander.client.publish(f"{BASE}/cmd/set", b"", qos=1, retain=True).wait_for_publish(5)  # clear it


def test_health_on_request_and_as_heartbeat(station, broker):
    pipeline, uplink, commander, path = station
    heartbeat = Subscriber(broker.port, f"{BASE}/health").start()
    scan_and_wait(pipeline, path, 3)
    pipeline.submit(Read(b"6901234567892", "stdin", "stdin:console"))
    wait_until(lambda: uplink.verdicts["rejected"] == 1, what="rejected counted")
    reply = commander.send("health", {})
    health = reply["result"]
    assert health["verdicts"]["accepted"] == 1 and health["verdicts"]["rejected"] == 1
    assert health["scanners"] == {"console": True, "dock": False} and health["scanners_connected"] == 1
    assert health["db_bytes"] > 0 and health["uptime_s"] > 0
    assert set(health) >= {"outbox_depth", "oldest_undelivered_age_s", "last_puback"}
    assert health["alarms"] == []
    # An alarm in the ledger (as the runner records a damaged ledger moved aside) is reported.
    alarm_id = pipeline.ledger.record_alarm("ledger_damaged", "ledger.db moved to ledger.db.damaged-1")
    alarms = commander.send("health", {})["result"]["alarms"]
    assert [(a["id"], a["kind"], a["detail"]) for a in alarms] == [
        (alarm_id, "ledger_damaged", "ledger.db moved to ledger.db.damaged-1")
    ]
    beats = wait_until(lambda: heartbeat.on("/health"), timeout=5, what="heartbeat")
    beat = json.loads(beats[-1].payload)
    wait_until(lambda: uplink.delivered >= 2, what="both delivered")
    assert beat["device_id"] == "kiosk-1" and "outbox_depth" in beat
    heartbeat.stop()


def test_resend_command_sends_delivered_events_again(station, broker):
    pipeline, _uplink, commander, path = station
    events = Subscriber(broker.port, f"{BASE}/events").start()
    for n in range(5):
        scan_and_wait(pipeline, path, 10 + n)
    wait_until(lambda: depth(path) == 0 and len(events.events()) == 5, what="delivered once")
    reply = commander.send("resend", {"from_seq": 2, "to_seq": 3})
    assert reply["ok"] is True and reply["result"]["found"] == 2
    wait_until(lambda: len(events.events()) == 7, what="two sent again")
    assert sorted(e["seq"] for e in events.events()) == [1, 2, 2, 3, 3, 4, 5]
    bad = commander.send("resend", {"from_seq": 3, "to_seq": 1})
    assert bad["ok"] is False and "to_seq" in bad["error"]
    events.stop()


def test_mqtt_311_delivers_and_answers_with_correlation_field(tmp_path, broker):
    path = tmp_path / "ledger.db"
    sub = Subscriber(broker.port, f"{BASE}/events").start()
    pipeline = Pipeline(Ledger.open(path, device_id="kiosk-1", site_id="site-1"))
    uplink = make_uplink(path, broker.port, pipeline, protocol="3.1.1")
    pipeline.start()
    uplink.start()
    # connected means subscribed: a command sent before that would find no subscriber.
    wait_until(lambda: uplink.connected, what="uplink connected")
    commander = Commander(broker.port, BASE, v5=False).start()
    reply = commander.send("set", {"movement": "check"})
    assert reply["ok"] is True and reply["correlation"]
    pipeline.submit(Read(code(5), "stdin", "stdin:console"))
    wait_until(lambda: sub.events() and depth(path) == 0, what="delivered over 3.1.1")
    assert sub.events()[0]["movement"] == "check"
    commander.stop()
    uplink.stop()
    pipeline.stop()
    sub.stop()


def thread_wakeups(names: tuple[str, ...]) -> dict[str, int]:
    """How often each of these threads of this process has gone to sleep so far (Linux)."""
    ids = {t.name: t.native_id for t in threading.enumerate() if t.name in names}
    counts = {}
    for name, tid in ids.items():
        status = Path(f"/proc/self/task/{tid}/status").read_text()
        counts[name] = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return counts


def test_an_idle_uplink_sleeps_and_still_sends_a_new_event_at_once(tmp_path, broker):
    """Connected, nothing to send: its threads sleep rather than poll (they woke about
    20 times a second each before), yet an event decided then goes out within milliseconds."""
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path, device_id="kiosk-1", site_id="site-1")
    uplink = make_uplink(path, broker.port)
    uplink.start()
    try:
        wait_until(lambda: uplink.connected, what="uplink connected")
        time.sleep(0.5)  # its first walk of the (empty) outbox
        names = ("uplink-net", "uplink", "uplink-record")
        before = thread_wakeups(names)
        time.sleep(3)
        woke = {name: n - before[name] for name, n in thread_wakeups(names).items()}
        assert set(woke) == set(names)
        assert woke["uplink-net"] <= 8, woke  # about once a second, for paho's keepalive
        assert woke["uplink"] <= 3 and woke["uplink-record"] <= 3, woke
        latencies = []
        for n in range(5):
            time.sleep(0.3)
            decision = ledger.decide_and_record(
                Read(code(n), "stdin", "stdin:console"), "dispense", codes.parse(code(n))
            )
            published, start = uplink.published, time.monotonic()
            uplink.decided(decision)
            wait_until(lambda published=published: uplink.published > published, interval=0.001, what="published")
            latencies.append(time.monotonic() - start)
        assert max(latencies) < 0.2, latencies  # not waiting for the keepalive tick
        wait_until(lambda: uplink.delivered == 5, what="delivered")
    finally:
        uplink.stop()
        ledger.close()
