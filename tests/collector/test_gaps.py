"""A gap in seq is closed by cmd/resend to the real agent; one it cannot close is reported."""

import json
import subprocess
import sys

from tests.collector.procs import CollectorProc, Kiosk
from tests.support.mqtt import Subscriber
from tests.support.net import wait_until


def through(db, device="kiosk-1") -> int:
    row = db.execute("SELECT stored_through_seq FROM devices WHERE device_id = %s", (device,)).fetchone()
    return row[0] if row else 0


def report(dsn: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "collector", "report", "--dsn", dsn, "--json"], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    return {d["device_id"]: d for d in json.loads(out.stdout)["devices"]}


def test_events_the_broker_acknowledged_to_nobody_are_asked_for_and_stored(tmp_path, broker, pg, db):
    kiosk = Kiosk(tmp_path, broker.port)
    resends = Subscriber(broker.port, "trace/v1/site-1/kiosk-1/cmd/resend").start()
    collector = CollectorProc(tmp_path, broker.port, pg.dsn, "--gap-grace-s", "0.5", "--gap-retry-s", "1")
    try:
        # No collector yet: the broker takes these (PUBACK "no matching subscribers") and drops them.
        kiosk.scan(0, 10)
        wait_until(lambda: kiosk.last_seq() == 10, timeout=20, what="10 scans decided")
        wait_until(lambda: kiosk.delivered() == 10, timeout=20, what="10 delivered (to nobody)")
        collector.start()
        kiosk.scan(10, 10)
        wait_until(lambda: through(db) == 20, timeout=30, what="the gap 1..10 filled by a resend")
        wait_until(
            lambda: db.execute("SELECT closed_at FROM gaps").fetchone() not in (None, (None,)),
            timeout=10,
            what="the gap closed",
        )
    finally:
        kiosk.stop()
        assert collector.stop() == 0, collector.text()
    asked = [json.loads(m.payload) for m in resends.on("/cmd/resend")]
    resends.stop()
    assert asked and asked[0] == {"from_seq": 1, "to_seq": 10}
    gaps = db.execute("SELECT from_seq, to_seq, requests, closed_at IS NOT NULL FROM gaps").fetchall()
    assert gaps == [(1, 10, len(asked), True)]
    assert db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (20, 20)
    device = report(pg.dsn)["kiosk-1"]
    assert (device["last_seq"], device["stored_through_seq"], device["gaps"], device["open_gaps"]) == (20, 20, 0, [])


def test_a_gap_no_device_answers_is_retried_with_backoff_and_reported_unclosed(tmp_path, broker, pg, db):
    """Events 1..3 and 6 of a device that is not there to resend 4..5."""
    from agent.events import encode
    from tests.collector.events import ledger_events
    from tests.collector.test_bad_input import publisher

    events = ledger_events(tmp_path / "g.db", 6, device_id="kiosk-g")
    resends = Subscriber(broker.port, "trace/v1/site-1/kiosk-g/cmd/resend").start()
    collector = CollectorProc(
        tmp_path, broker.port, pg.dsn, "--gap-grace-s", "0.2", "--gap-retry-s", "0.5", "--gap-retry-max-s", "1"
    ).start()
    pub = publisher(broker.port)
    try:
        for event in events[:3] + events[5:]:
            pub.publish("trace/v1/site-1/kiosk-g/events", encode(event), qos=1).wait_for_publish(5)
        wait_until(lambda: len(resends.on("/cmd/resend")) >= 6, timeout=30, what="six requests")
        wait_until(lambda: report(pg.dsn)["kiosk-g"]["unclosed_gaps"] == 1, timeout=10, what="flagged unclosed")
        device = report(pg.dsn)["kiosk-g"]
        assert device["open_gaps"] == [{"from_seq": 4, "to_seq": 5, "unclosed": True}]
        assert (device["stored_through_seq"], device["last_seq"], device["missing"]) == (3, 6, 2)
        # The device comes back and answers: the gap closes, the flag goes with it.
        for event in events[3:5]:
            pub.publish("trace/v1/site-1/kiosk-g/events", encode(event), qos=1).wait_for_publish(5)
        wait_until(lambda: through(db, "kiosk-g") == 6, timeout=10, what="stored through 6")
        wait_until(lambda: report(pg.dsn)["kiosk-g"]["gaps"] == 0, timeout=10, what="the gap closed")
    finally:
        pub.loop_stop()
        assert collector.stop() == 0, collector.text()
    assert all(json.loads(m.payload) == {"from_seq": 4, "to_seq": 5} for m in resends.on("/cmd/resend"))
    resends.stop()
