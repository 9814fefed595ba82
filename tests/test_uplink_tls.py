"""Mutual TLS and a pattern ACL on a real mosquitto, with a CA and certificates made in the test.

The broker takes the device's identity from its certificate (CN = device id,
``use_identity_as_username``) and lets it write only under its own device level.
"""

import ssl
import threading

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttConfig
from agent.ledger import connect
from agent.sinks.uplink import Uplink
from tests.support.backlog import fill_ledger
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Subscriber
from tests.support.net import free_port, wait_until
from tests.support.pki import TestCA


@pytest.fixture
def tls_broker(tmp_path):
    """A broker with a plain listener (for the test's collector, read-only) and an mTLS one."""
    ca = TestCA(tmp_path)
    server_cert, server_key = ca.server_cert()
    acl = tmp_path / "acl"
    acl.write_text(
        "# anonymous clients (the test's collector on the plain listener) may read everything\n"
        "topic read trace/v1/#\n"
        "# a device (username = its certificate's CN) writes only under its own device level,\n"
        "# and its events only for its own site\n"
        "pattern write trace/v1/+/%u/status\n"
        "pattern write trace/v1/+/%u/health\n"
        "pattern write trace/v1/+/%u/reply\n"
        "pattern write trace/v1/site-1/%u/events\n"
        "pattern read trace/v1/+/%u/cmd/#\n"
    )
    tls_port = free_port()
    broker = Mosquitto(
        tmp_path,
        extra_conf=(
            f"acl_file {acl}\n"
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {ca.cert_path}\n"
            f"certfile {server_cert}\n"
            f"keyfile {server_key}\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
        ),
    )
    broker.start()
    broker.start_tls_port = tls_port
    yield broker, ca, tls_port
    broker.stop()


def tls_uplink(path, ca, port, cert_for, site_id="site-1", protocol="5") -> Uplink:
    cert, key = ca.client_cert(cert_for)
    config = MqttConfig(
        enabled=True,
        host="127.0.0.1",
        port=port,
        protocol=protocol,
        tls=True,
        ca_file=str(ca.cert_path),
        cert_file=str(cert),
        key_file=str(key),
    )
    return Uplink(config, db_path=path, device_id="kiosk-1", site_id=site_id)


def deliveries(path) -> int:
    conn = connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    finally:
        conn.close()


def test_device_with_its_certificate_publishes_its_own_topics(tmp_path, tls_broker):
    broker, ca, tls_port = tls_broker
    path = tmp_path / "ledger.db"
    fill_ledger(path, 20, device_id="kiosk-1", site_id="site-1")
    collector = Subscriber(broker.port, "trace/v1/#").start()
    uplink = tls_uplink(path, ca, tls_port, cert_for="kiosk-1")
    uplink.start()
    wait_until(lambda: deliveries(path) == 20, timeout=20, what="20 delivered over mTLS")
    uplink.stop()
    # The broker acknowledges before it has passed everything on to subscribers.
    wait_until(lambda: len(collector.on("/kiosk-1/events")) == 20, what="20 at the collector")
    assert [m.payload for m in collector.on("/kiosk-1/status")][:1] == [b"online"]
    assert uplink.failures == 0
    collector.stop()


def test_publish_outside_the_acl_is_not_counted_delivered(tmp_path, tls_broker):
    """mosquitto 2.0 answers an ACL-denied QoS 1 publish from a v5 client with PUBACK
    0x87 "Not authorized" (and then drops the connection)."""
    broker, ca, tls_port = tls_broker
    path = tmp_path / "ledger.db"
    fill_ledger(path, 20, device_id="kiosk-1", site_id="site-9")  # events for a site it may not write
    collector = Subscriber(broker.port, "trace/v1/#").start()
    uplink = tls_uplink(path, ca, tls_port, cert_for="kiosk-1", site_id="site-9")
    uplink.start()
    wait_until(lambda: uplink.failures >= 1, timeout=20, what="a refusal counted")
    denied = "Denied PUBLISH from kiosk-1 (d1"  # a resend after the broker dropped the connection
    wait_until(lambda: denied in broker.log.read_text(), timeout=20, what="the events tried again")
    uplink.stop()
    collector.stop()
    assert deliveries(path) == 0 and uplink.delivered == 0
    assert collector.on("/events") == []
    assert [m.payload for m in collector.on("/site-9/kiosk-1/status")][:1] == [b"online"]  # its own status: fine
    log = broker.log.read_text()
    assert "Denied PUBLISH from kiosk-1" in log and "rc135" in log


def test_mqtt_311_cannot_tell_a_denied_publish_from_a_delivered_one(tmp_path, tls_broker):
    """The limit of MQTT 3.1.1, pinned: its PUBACK has no reason code, so mosquitto
    acknowledges a denied publish like any other. Keep ``protocol = "5"`` where ACLs matter."""
    broker, ca, tls_port = tls_broker
    path = tmp_path / "ledger.db"
    fill_ledger(path, 1, device_id="kiosk-1", site_id="site-9")
    uplink = tls_uplink(path, ca, tls_port, cert_for="kiosk-1", site_id="site-9", protocol="3.1.1")
    uplink.start()
    wait_until(lambda: "Denied PUBLISH from kiosk-1" in broker.log.read_text(), timeout=20, what="denial")
    wait_until(lambda: deliveries(path) == 1, timeout=10, what="counted as delivered")
    uplink.stop()
    assert uplink.failures == 0


def test_a_client_without_a_certificate_is_refused(tls_broker):
    broker, ca, tls_port = tls_broker
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca.cert_path), cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = lambda c, u, f, rc, p: rc.is_failure or connected.set()
    refused = False
    try:
        client.connect("127.0.0.1", tls_port)
        for _ in range(40):  # TLS 1.3: the refusal arrives after the handshake, on the first read
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                refused = True
                break
    except (ssl.SSLError, OSError):
        refused = True
    assert refused and not connected.is_set()
    assert "as intruder" not in broker.log.read_text()  # never became an MQTT client
