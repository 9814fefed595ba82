"""Security: mTLS refusals, a device confined to its own topics, no secret in any output.

Reuses the mTLS + pattern-ACL broker of ``tests/test_uplink_tls.py`` (CN = device id).
"""

from __future__ import annotations

import json
import logging
import ssl

import paho.mqtt.client as mqtt

from agent.config import MqttConfig
from agent.ledger import connect
from agent.sinks.uplink import Uplink
from tests.faults.ledgers import code
from tests.support.agent import run_agent, start_agent
from tests.support.backlog import fill_ledger
from tests.support.mqtt import Subscriber
from tests.support.net import wait_until
from tests.support.pki import TestCA
from tests.test_uplink_tls import tls_broker  # noqa: F401  (the fixture)

PASSWORD = "pw-Zq8!never-print-me"


def uplink_for(path, port, *, ca, cert, key, device_id="kiosk-1", site_id="site-1") -> Uplink:
    config = MqttConfig(
        enabled=True,
        host="127.0.0.1",
        port=port,
        tls=True,
        ca_file=str(ca),
        cert_file=str(cert),
        key_file=str(key),
        backoff_max_s=1.0,
    )
    return Uplink(config, db_path=path, device_id=device_id, site_id=site_id)


def deliveries(path) -> int:
    conn = connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    finally:
        conn.close()


def refused_for(tmp_path, broker, tls_port, caplog, *, ca, cert, key) -> list[str]:
    """Run an uplink with these credentials for a while; it must never connect. Returns its warnings."""
    path = tmp_path / "ledger.db"
    fill_ledger(path, 5, device_id="kiosk-1", site_id="site-1")
    uplink = uplink_for(path, tls_port, ca=ca, cert=cert, key=key)
    caplog.set_level(logging.WARNING, logger="agent.sinks.uplink")
    uplink.start()
    try:
        wait_until(lambda: uplink.connection_errors >= 2, timeout=20, what="two refused attempts, counted")
        assert not uplink.connected
        assert uplink.health()["connection_errors"] >= 2
    finally:
        uplink.stop()
    assert deliveries(path) == 0 and uplink.delivered == 0
    assert "as kiosk-1" not in broker.log.read_text()  # never became an MQTT client
    return [r.getMessage() for r in caplog.records]


def test_expired_certificate_is_refused(tmp_path, tls_broker, caplog, figures):  # noqa: F811
    broker, ca, tls_port = tls_broker
    cert, key = ca.client_cert("kiosk-1", expired=True)
    messages = refused_for(tmp_path, broker, tls_port, caplog, ca=ca.cert_path, cert=cert, key=key)
    assert "certificate verify failed" in broker.log.read_text()
    assert any("MQTT connection" in m and "failed" in m for m in messages), messages  # the agent says so too
    figures.fault, figures.cycles = "mTLS: expired / other-CA certificates refused, both ways", 1


def test_certificate_from_another_ca_is_refused(tmp_path, tls_broker, caplog, figures):  # noqa: F811
    broker, ca, tls_port = tls_broker
    other = TestCA(tmp_path, "Other CA")
    cert, key = other.client_cert("kiosk-1")  # right name, wrong issuer
    refused_for(tmp_path, broker, tls_port, caplog, ca=ca.cert_path, cert=cert, key=key)
    assert "certificate verify failed" in broker.log.read_text() or "unknown ca" in broker.log.read_text()
    figures.fault, figures.cycles = "mTLS: expired / other-CA certificates refused, both ways", 1


def test_agent_refuses_a_broker_from_another_ca(tmp_path, tls_broker, caplog, figures):  # noqa: F811
    broker, ca, tls_port = tls_broker
    other = TestCA(tmp_path, "Other CA")
    cert, key = ca.client_cert("kiosk-1")
    messages = refused_for(tmp_path, broker, tls_port, caplog, ca=other.cert_path, cert=cert, key=key)
    assert any("certificate verify failed" in m for m in messages), messages
    figures.fault, figures.cycles = "mTLS: expired / other-CA certificates refused, both ways", 1


def test_device_confined_to_its_own_topics(tmp_path, tls_broker, caplog, figures):  # noqa: F811
    """A device whose certificate says kiosk-2 but whose config says kiosk-1 may not
    publish as kiosk-1: refused, logged, counted in health, nothing recorded as delivered."""
    broker, ca, tls_port = tls_broker
    path = tmp_path / "ledger.db"
    fill_ledger(path, 10, device_id="kiosk-1", site_id="site-1")
    collector = Subscriber(broker.port, "trace/v1/#").start()
    cert, key = ca.client_cert("kiosk-2")
    caplog.set_level(logging.WARNING, logger="agent.sinks.uplink")
    uplink = uplink_for(path, tls_port, ca=ca.cert_path, cert=cert, key=key)
    uplink.start()
    try:
        wait_until(lambda: uplink.failures + uplink.refused_publishes >= 1, timeout=20, what="a refusal counted")
        health = uplink.health()
    finally:
        uplink.stop()
        collector.stop()
    assert deliveries(path) == 0 and uplink.delivered == 0
    assert health["delivery_failures"] + health["refused_publishes"] >= 1 and health["delivered"] == 0
    assert collector.on("/kiosk-1/events") == []
    messages = [r.getMessage() for r in caplog.records]
    # The broker drops it at its first refused publish (its online status), every time.
    assert any("refused a status/health/reply publish" in m or "NOT delivered" in m for m in messages), messages
    log = broker.log.read_text()
    assert "Denied PUBLISH from kiosk-1" in log and "u'kiosk-2'" in log
    figures.fault, figures.cycles, figures.sent = "ACL: publishing outside own topics", 1, 10
    figures.note = "refused (PUBACK 0x87), logged, delivery_failures counted, 0 recorded delivered"


def test_other_device_cannot_command_this_one(tmp_path, tls_broker):  # noqa: F811
    """kiosk-2 publishing on kiosk-1's command topic is denied by the broker; kiosk-1 never sees it."""
    broker, ca, tls_port = tls_broker
    cert, key = ca.client_cert("kiosk-2")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kiosk-2", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca.cert_path), certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
    acks = []
    client.on_publish = lambda c, u, mid, rc, p: acks.append(rc)
    client.connect("127.0.0.1", tls_port)
    client.loop_start()
    try:
        client.publish("trace/v1/site-1/kiosk-1/cmd/set", json.dumps({"movement": "destroy"}), qos=1)
        wait_until(lambda: acks, timeout=10, what="PUBACK")
    finally:
        client.loop_stop()
    assert acks[0].is_failure and acks[0].value == 0x87
    assert "Denied PUBLISH from kiosk-2" in broker.log.read_text()


def test_no_secret_in_logs_health_or_exports(tmp_path, tls_broker):  # noqa: F811
    broker, ca, tls_port = tls_broker
    cert, key = ca.client_cert("kiosk-1")
    password = tmp_path / "mqtt.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    key_body = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
    db = tmp_path / "ledger.db"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[station]\ndevice_id = "kiosk-1"\nsite_id = "site-1"\n'
        f'[ledger]\npath = "{db}"\n[feedback]\nbackend = "console"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {tls_port}\ntls = true\n'
        f'ca_file = "{ca.cert_path}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
        f'username = "kiosk-1"\npassword_file = "{password}"\nhealth_interval_s = 1\n'
    )
    collector = Subscriber(broker.port, "trace/v1/#").start()
    agent = start_agent("run", "--config", str(cfg), "--json")
    try:
        for i in range(5):
            agent.stdin.write(code(i) + b"\n" + b"not-a-code\n")
        agent.stdin.flush()
        wait_until(lambda: len(collector.on("/health")) >= 2, timeout=20, what="health heartbeats")
        wait_until(lambda: len(collector.on("/events")) >= 10, timeout=20, what="events")
    finally:
        agent.stdin.close()
        agent.wait(30)
        out, err = agent.stdout.read(), agent.stderr.read()
        collector.stop()
    outputs = {
        "agent stdout": out.decode(),
        "agent stderr": err.decode(),
        "health": " ".join(m.payload.decode() for m in collector.on("/health")),
        "status": " ".join(m.payload.decode() for m in collector.on("/status")),
        "export csv": run_agent("ledger", "export", "--db", str(db)).stdout.decode(),
        "export jsonl": run_agent("ledger", "export", "--db", str(db), "--format", "jsonl").stdout.decode(),
        "verify": run_agent("ledger", "verify", "--db", str(db)).stdout.decode(),
        "config error": run_agent("run", "--config", str(key)).stderr.decode(),  # a key given as config
    }
    assert "kiosk-1" in outputs["health"]  # the heartbeat really was read
    assert "not valid TOML" in outputs["config error"]  # the key file was read and refused
    for where, text in outputs.items():
        assert PASSWORD not in text, f"the MQTT password in {where}"
        assert not any(line in text for line in key_body), f"private key material in {where}"
