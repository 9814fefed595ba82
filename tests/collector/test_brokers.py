"""The collector on brokers without shared subscriptions: NATS 2.9 speaks MQTT 3.1.1 only, and
grants a ``$share`` subscription and then delivers nothing on it (docs/brokers.md)."""

import json

from tests.collector.procs import CollectorProc, Kiosk
from tests.support.nats import NatsCluster
from tests.support.net import wait_until


def through(db, device: str = "kiosk-1") -> int:
    row = db.execute("SELECT stored_through_seq FROM devices WHERE device_id = %s", (device,)).fetchone()
    return row[0] if row else 0


def test_on_nats_the_collector_subscribes_plainly_and_stores_a_kiosks_events(tmp_path, pg, db):
    nats = NatsCluster(tmp_path, size=1)
    nats.start()
    port = nats.mqtt_ports[0]
    collector = kiosk = None
    try:
        collector = CollectorProc(tmp_path, port, pg.dsn, "--mqtt311").start()
        kiosk = Kiosk(tmp_path, port, mqtt='protocol = "3.1.1"\nreceipts = true')
        kiosk.scan(0, 60)
        wait_until(lambda: kiosk.last_seq() == 60, timeout=30, what="60 scans decided")
        wait_until(lambda: through(db) == 60, timeout=30, what="stored through 60")
        # The receipt goes back through NATS too: the agent records it.
        wait_until(lambda: kiosk.confirmed() == 60, timeout=30, what="the receipt for 60 recorded by the agent")
    finally:
        if kiosk is not None:
            kiosk.stop()
        if collector is not None:
            assert collector.stop() == 0, collector.text()
        nats.stop()
    log = collector.text()
    assert "subscribing plainly, alone: MQTT 3.1.1" in log and "subscribing shared" not in log, log
    assert db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (60, 60)
    assert {str(r[0]) for r in db.execute("SELECT event_id FROM events")} == kiosk.event_ids()
    stopped = json.loads(log.rsplit("stopped: ", 1)[1].splitlines()[0])
    assert stopped["stored"] == 60


def test_mqtt5_to_nats_is_refused_with_a_hint(tmp_path, pg):
    """NATS answers an MQTT 5 CONNECT with "unsupported protocol version": the log says what to do."""
    nats = NatsCluster(tmp_path, size=1)
    nats.start()
    collector = CollectorProc(tmp_path, nats.mqtt_ports[0], pg.dsn)
    try:
        collector.start(wait=False)
        wait_until(lambda: "refused the connection" in collector.text(), timeout=30, what="the refusal logged")
        assert collector.proc.poll() is None, "the collector keeps trying, it does not crash"
    finally:
        collector.stop()
        nats.stop()
    assert "run with --mqtt311" in collector.text(), collector.text()
