"""Bad input is quarantined with its reason, counted, and holds up nobody else's events."""

import json
import uuid

import paho.mqtt.client as mqtt

from agent.events import encode
from tests.collector.events import ledger_events
from tests.collector.procs import CollectorProc, Kiosk
from tests.support.net import wait_until

X = "trace/v1/site-1/kiosk-x"


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_each_kind_of_bad_input_is_quarantined_while_other_devices_flow(tmp_path, broker, pg, db):
    good = ledger_events(tmp_path / "x.db", 4, device_id="kiosk-x")
    altered = dict(good[1], code="8" + "9" * 19)  # the hash no longer matches
    oversized = b'{"pad": "' + b"x" * 200_000 + b'"}'
    collector = CollectorProc(tmp_path, broker.port, pg.dsn, "--max-payload-bytes", "100000").start()
    kiosk = Kiosk(tmp_path, broker.port)
    pub = publisher(broker.port)
    try:
        kiosk.scan(0, 40)
        for topic, body in (
            (f"{X}/events", encode(good[0])),
            (f"{X}/events", b'{"schema": "scan-event/1", "seq": '),  # cut short
            (f"{X}/events", encode(altered)),
            ("trace/v1/site-1/kiosk-y/events", encode(good[1])),  # kiosk-x's event on kiosk-y's topic
            (f"{X}/events", oversized),
            (f"{X}/documents", encode(good[1])),  # a scan event on the documents topic
        ):
            pub.publish(topic, body, qos=1).wait_for_publish(5)
        kiosk.scan(40, 40)
        for event in good[1:]:
            pub.publish(f"{X}/events", encode(event), qos=1).wait_for_publish(5)
        wait_until(lambda: kiosk.last_seq() == 80, timeout=30, what="80 scans decided")
        wait_until(
            lambda: (
                db.execute("SELECT stored_through_seq FROM devices WHERE device_id = 'kiosk-1'").fetchone() == (80,)
            ),
            timeout=30,
            what="kiosk-1 stored through 80",
        )
        wait_until(
            lambda: db.execute("SELECT stored_through_seq FROM devices WHERE device_id = 'kiosk-x'").fetchone() == (4,),
            timeout=10,
            what="kiosk-x's good events stored",
        )
        assert collector.proc.poll() is None, "the collector is still running"
        quarantined = dict(db.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall())
        assert quarantined == {
            "malformed_json": 1,
            "hash_mismatch": 1,
            "topic_mismatch": 1,
            "oversized": 1,
            "invalid_event": 1,
        }
        # Nothing is dropped: the payload is kept whole, with where it came and why.
        size, payload, detail = db.execute(
            "SELECT size, payload, detail FROM quarantine WHERE reason = 'oversized'"
        ).fetchone()
        assert size == len(oversized) and bytes(payload) == oversized and "100000" in detail
        topic, detail = db.execute("SELECT topic, detail FROM quarantine WHERE reason = 'topic_mismatch'").fetchone()
        assert topic == "trace/v1/site-1/kiosk-y/events" and "kiosk-x" in detail
        hashed = db.execute("SELECT payload FROM quarantine WHERE reason = 'hash_mismatch'").fetchone()[0]
        assert json.loads(bytes(hashed))["code"] == "8" + "9" * 19
    finally:
        pub.loop_stop()
        kiosk.stop()
        assert collector.stop() == 0, collector.text()
    # The counts are in the collector's own log too.
    stopped = json.loads(collector.text().rsplit("stopped: ", 1)[1].splitlines()[0])
    assert stopped["hash_mismatch"] == 1 and stopped["oversized"] == 1
    assert db.execute("SELECT count(*) FROM events WHERE device_id = 'kiosk-y'").fetchone()[0] == 0
    report = json.loads(
        __import__("subprocess")
        .run(
            [__import__("sys").executable, "-m", "collector", "report", "--dsn", pg.dsn, "--json"],
            capture_output=True,
            check=True,
        )
        .stdout
    )
    by_device = {d["device_id"]: d for d in report["devices"]}
    assert by_device["kiosk-1"]["stored"] == 80 and by_device["kiosk-1"]["gaps"] == 0
    assert report["quarantine"]["oversized"] == 1
