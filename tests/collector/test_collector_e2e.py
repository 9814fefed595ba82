"""Real agents → mosquitto → ``scan-collector run`` → PostgreSQL, with receipts back."""

import json

from tests.collector.procs import CollectorProc, Kiosk
from tests.support.mqtt import Subscriber
from tests.support.net import wait_until


def stored(db, device: str) -> tuple[int, int, int]:
    """(rows, distinct event ids, stored_through_seq) of a device."""
    rows, distinct = db.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM events WHERE device_id = %s", (device,)
    ).fetchone()
    through = db.execute("SELECT stored_through_seq FROM devices WHERE device_id = %s", (device,)).fetchone()
    return rows, distinct, through[0] if through else 0


def test_every_scan_is_stored_once_and_receipts_move_forward(tmp_path, broker, pg, db):
    receipts = Subscriber(broker.port, "trace/v1/+/+/receipt").start()
    collector = CollectorProc(tmp_path, broker.port, pg.dsn).start()
    kiosk = Kiosk(tmp_path, broker.port)
    try:
        kiosk.scan(0, 150)
        kiosk.scan(0)  # a duplicate: an event too
        kiosk.proc.stdin.write(b"6901234567892\n")  # a rejected read: an event too
        kiosk.proc.stdin.flush()
        wait_until(lambda: kiosk.last_seq() == 152, timeout=30, what="152 scans decided")
        wait_until(lambda: stored(db, "kiosk-1")[2] == 152, timeout=30, what="all stored")
        wait_until(
            lambda: [json.loads(m.payload) for m in receipts.on("/receipt")][-1:] == [{"stored_through_seq": 152}],
            timeout=10,
            what="the receipt for 152",
        )
    finally:
        kiosk.stop()
        assert collector.stop() == 0, collector.text()
    rows, distinct, through = stored(db, "kiosk-1")
    assert rows == distinct == through == 152
    assert {str(r[0]) for r in db.execute("SELECT event_id FROM events")} == kiosk.event_ids()
    ns = [json.loads(m.payload)["stored_through_seq"] for m in receipts.on("/receipt")]
    assert ns == sorted(ns) and len(set(ns)) == len(ns), f"receipts went back or repeated: {ns}"
    assert all(m.topic == "trace/v1/site-1/kiosk-1/receipt" for m in receipts.on("/receipt"))
    # Retained: a newcomer (an agent reconnecting) gets the latest at once.
    late = Subscriber(broker.port, "trace/v1/site-1/kiosk-1/receipt", persistent=False).start()
    message = wait_until(lambda: late.on("/receipt"), timeout=5, what="retained receipt")[0]
    assert message.retain and json.loads(message.payload) == {"stored_through_seq": 152}
    late.stop()
    receipts.stop()
    assert db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0] == 0
    assert db.execute("SELECT status FROM devices").fetchone()[0] in ("online", "offline")
    # mosquitto with MQTT 5 has shared subscriptions: the collector chose them, and said so.
    assert "subscribing shared, in group 'collectors'" in collector.text()
